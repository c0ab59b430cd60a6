/**
 * Links over TLS, on `Deno.startTls` (client) and `Deno.listenTls` (server).
 *
 * @module
 */

import type { Dialer } from "./link.ts";
import { errorMessage } from "../_util.ts";
import { ListenerAcceptor, TcpLink } from "./tcp.ts";
import { tuneTcp } from "./_tune_tcp.ts";

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
   * private CA). Without them, the system's roots are used.
   */
  caCerts?: string[];
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
    const onAbort = () => (tls ?? tcp).close();
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
      throw new Error(`TLS handshake with ${serverName} failed: ${errorMessage(error)}`, {
        cause: error,
      });
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
}

/** An {@linkcode Acceptor} over `Deno.listenTls`. */
export class TlsAcceptor extends ListenerAcceptor {
  /** Starts listening at once (synchronously, like `Deno.listenTls`). */
  constructor(options: TlsAcceptorOptions) {
    super(Deno.listenTls({
      hostname: options.hostname ?? "0.0.0.0",
      port: options.port,
      cert: options.cert,
      key: options.key,
    }));
  }
}
