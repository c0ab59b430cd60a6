/**
 * Links over TLS: `Deno.startTls` on the client; on the server `Deno.listen`
 * with a `node:tls` layer on top, for want of a Deno server-side TLS API that
 * can turn Nagle off (see {@linkcode TlsAcceptor}).
 *
 * @module
 */

import { createSecureContext, type SecureContext } from "node:tls";
import type { Acceptor, Dialer, Link } from "./link.ts";
import { checkTlsPair, errorMessage, listenTcp } from "../_util.ts";
import { TcpLink } from "./tcp.ts";
import { tuneTcp } from "./_tune_tcp.ts";
import { NodeTlsServerLink } from "./_node_tls.ts";

/** Where and how a TLS dialer connects. */
export interface TlsDialerOptions {
  /** Host name or IP address of the server. Default `127.0.0.1`. */
  hostname?: string;
  /** TCP port of the server. */
  port: number;
  /**
   * Name the server's certificate must carry. Default: `hostname`. Set it when
   * dialing an address the certificate does not name.
   */
  serverName?: string;
  /**
   * Extra trusted CA certificates in PEM format (a self-signed server, or a
   * private CA). Without them, Deno's root store is used (Mozilla's roots
   * unless `DENO_TLS_CA_STORE` says otherwise).
   */
  caCerts?: string[];
}

/**
 * A TLS dial reached the server but the handshake failed: the server does
 * not speak TLS, its certificate is not trusted, or it broke off. `cause` is
 * the platform's error.
 *
 * @example
 * ```ts
 * import { TlsHandshakeError, tlsDialer } from "@immortal/sockets/link";
 *
 * // A plain (non-TLS) server: the handshake fails, and says so.
 * using plain = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const accepting = plain.accept().then((conn) => conn.close());
 * const dial = tlsDialer({ hostname: "127.0.0.1", port: plain.addr.port });
 * try {
 *   (await dial(AbortSignal.timeout(5000))).close();
 * } catch (error) {
 *   console.log(error instanceof TlsHandshakeError);
 * }
 * await accepting;
 * ```
 */
export class TlsHandshakeError extends Error {
  /** Creates the error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TlsHandshakeError";
  }
}

/**
 * Returns a {@linkcode Dialer} that opens TLS links.
 *
 * The TCP socket is opened first so that Nagle can be turned off before the
 * TLS layer goes on top; the TLS handshake completes inside the dial, so a
 * certificate problem surfaces as the dial's error rather than on first use.
 */
export function tlsDialer(options: TlsDialerOptions): Dialer {
  const { hostname = "127.0.0.1", port, caCerts } = options;
  const serverName = options.serverName ?? hostname;
  return async (signal) => {
    const tcp = await Deno.connect({ hostname, port, signal });
    tuneTcp(tcp);
    let tls: Deno.TlsConn | undefined;
    const onAbort = () => {
      try {
        (tls ?? tcp).close();
      } catch {
        // startTls took the TCP resource and the TLS one is not ours yet: it fails below.
      }
    };
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      tls = await Deno.startTls(tcp, { hostname: serverName, caCerts });
      await tls.handshake();
      return new TcpLink(tls);
    } catch (error) {
      try {
        (tls ?? tcp).close();
      } catch {
        // Closed by the abort already.
      }
      throw new TlsHandshakeError(
        `TLS handshake with ${serverName} failed: ${errorMessage(error)}`,
        { cause: error },
      );
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  };
}

/** Where a TLS acceptor listens, and the identity it presents. */
export interface TlsAcceptorOptions {
  /** Address to listen on. Default `0.0.0.0`. */
  hostname?: string;
  /** Port to listen on; `0` picks a free one. */
  port: number;
  /** Certificate chain in PEM format. */
  cert: string;
  /** Private key of the certificate in PEM format. */
  key: string;
  /**
   * Written in the clear to a client whose first bytes are not TLS (it does
   * not speak TLS) before its connection is closed: the protocol's own way
   * to say "connect with TLS". Default: nothing (the connection is closed).
   */
  plainReply?: Uint8Array;
}

/**
 * An {@linkcode Acceptor} of TLS links with Nagle off on both sides.
 *
 * Not `Deno.listenTls`: its connections cannot turn Nagle off (Deno 2.9 has
 * no `setNoDelay` on `Deno.TlsConn`), and with Nagle on, a reply that leaves in
 * two small writes waits ~40 ms for the client's delayed ACK — request/response
 * traffic ran ~8x slower than over plain TCP. So TCP comes from `Deno.listen`
 * (bound synchronously, `setNoDelay` on each connection) and TLS from
 * `node:tls` on top (see `_node_tls.ts`).
 *
 * `accept()` returns as soon as the TCP connection is in; the TLS handshake
 * runs on first read, inside the session handshake and under its deadline, so
 * a stalled peer cannot hold up the accept loop.
 */
export class TlsAcceptor implements Acceptor<Deno.NetAddr> {
  #listener: Deno.TcpListener;
  #context: SecureContext;
  #plainReply: Uint8Array | undefined;

  /**
   * Starts listening at once (synchronously, like `Deno.listenTls`). Throws
   * if the certificate or key is unusable, or they do not match, before
   * binding anything.
   */
  constructor(options: TlsAcceptorOptions) {
    const { cert, key } = options;
    // `createSecureContext` takes anything and fails every handshake later;
    // a Deno HTTP client parses a certificate and key with the same checks
    // (and messages) as `Deno.listenTls`, synchronously and without any
    // permission, so a bad pair still fails here, at startup.
    checkTlsPair(cert, key);
    this.#context = createSecureContext({ cert, key });
    this.#plainReply = options.plainReply;
    this.#listener = listenTcp({ hostname: options.hostname ?? "0.0.0.0", port: options.port });
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /** Next accepted link; its TLS handshake has not run yet (see above). */
  async accept(): Promise<Link> {
    const conn = await this.#listener.accept();
    tuneTcp(conn);
    return new NodeTlsServerLink(conn, this.#context, this.#plainReply);
  }

  /** Stops listening; idempotent. Links already accepted go on. */
  close(): void {
    try {
      this.#listener.close();
    } catch {
      // Closing twice is not an error for us.
    }
  }
}
