/**
 * Client entry point: {@linkcode connect}.
 *
 * @module
 */

import { type Dialer, LinkRefused, tcpDialer, tlsDialer, TlsHandshakeError } from "../link/mod.ts";
import { FrameError } from "../frame/frame_error.ts";
import {
  CA_AS_SERVER_ADVICE,
  checkPort,
  describeValue,
  errorMessage,
  hostPort,
  isNotCapable,
  tlsFailureKind,
} from "../_util.ts";
import { ClientSession } from "./_client_session.ts";
import { ImmortalError } from "./errors.ts";
import { HandshakeCut, hmacKey } from "./_handshake.ts";
import type { ImmortalConn } from "./immortal_conn.ts";
import { resolveOptions } from "./_options.ts";
import { dialsThroughRelay } from "../link/_through_relay.ts";
import type { BackoffOptions, SessionOptions } from "./options.ts";

/** Where and how {@linkcode connect} opens a session. */
export interface ConnectOptions extends SessionOptions {
  /** Server host name or address. Default `127.0.0.1`. */
  hostname?: string;
  /** Server port (required unless `dialer` is given). */
  port?: number;
  /**
   * Use TLS: `true` trusts Deno's root store (Mozilla's roots, or the
   * system's with `DENO_TLS_CA_STORE=system`); an object adds trusted CA
   * certificates (PEM) or names the certificate's expected server name.
   */
  tls?: true | ConnectTlsOptions;
  /** Makes links another way than plain TCP or TLS (WebSocket, a relay pipe, ...). */
  dialer?: Dialer;
  /** Reconnect backoff. */
  backoff?: BackoffOptions;
  /**
   * Abandons the first connection (its dial and handshake): `connect` then
   * rejects with an {@linkcode ImmortalError} of code `aborted`. It has no
   * effect once the session is open (close the session for that).
   */
  signal?: AbortSignal;
}

/** TLS settings of a client; see {@linkcode ConnectOptions.tls}. */
export interface ConnectTlsOptions {
  /** Extra trusted CA certificates in PEM format. */
  caCerts?: string[];
  /** Name the server's certificate must carry. Default: the host name dialed. */
  serverName?: string;
}

/** The dialer that `options` describe: theirs, TLS or plain TCP. */
function dialerFor(options: ConnectOptions): Dialer {
  if (options.dialer) return options.dialer;
  const hostname = options.hostname ?? "127.0.0.1";
  const port = checkPort("port", options.port);
  if (!options.tls) return tcpDialer({ hostname, port });
  return tlsDialer({ hostname, port, ...(options.tls === true ? {} : options.tls) });
}

/**
 * Opens an immortal session to a server started with {@linkcode listen}.
 *
 * The first link must succeed (it rejects with an {@linkcode ImmortalError} of
 * code `unreachable`, `auth` or `rejected` otherwise); after that, links that
 * fail are replaced transparently until `resumeTimeout`.
 *
 * @example Send a line and read the answer
 * ```ts
 * import { connect, listen } from "@immortal/sockets";
 *
 * using listener = listen({ hostname: "127.0.0.1", port: 0 });
 * await using conn = await connect({ hostname: "127.0.0.1", port: listener.addr.port });
 * const server = await listener.accept();
 * await conn.write(new TextEncoder().encode("hello\n"));
 * const buffer = new Uint8Array(64);
 * const n = await server.read(buffer); // 6 bytes: "hello\n"
 * server.close();
 * ```
 */
export async function connect(options: ConnectOptions): Promise<ImmortalConn> {
  const resolved = resolveOptions(options, { throughRelay: dialsThroughRelay(options.dialer) });
  // Said as what they are, not as an unreachable server once they are used.
  const { hostname, signal } = options;
  if (hostname !== undefined && typeof hostname !== "string") {
    throw new TypeError(`hostname must be a string, got ${describeValue(hostname)}`);
  }
  if (options.dialer !== undefined && typeof options.dialer !== "function") {
    throw new TypeError(`dialer must be a function, got ${describeValue(options.dialer)}`);
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError(`signal must be an AbortSignal, got ${describeValue(signal)}`);
  }
  const dialer = dialerFor(options);
  const psk = resolved.key ? await hmacKey(resolved.key) : null;
  try {
    return await new ClientSession(dialer, resolved).open(psk, options.signal);
  } catch (error) {
    if (error instanceof ImmortalError) throw error;
    const where = options.dialer
      ? "the server"
      : hostPort(options.hostname ?? "127.0.0.1", options.port ?? 0);
    throw firstConnectError(where, error);
  }
}

/**
 * Why the first connection failed, in words that say what to change: a
 * server that is not there may come (`unreachable`, worth retrying); one
 * that speaks another protocol, or TLS where we do not (or the reverse),
 * will not (`protocol`, `tls`), nor will a permission Deno did not grant
 * (`permission`).
 */
function firstConnectError(where: string, error: unknown): ImmortalError {
  const options = { cause: error };
  if (isNotCapable(error)) {
    return new ImmortalError(
      "permission",
      `no permission to connect to ${where}: ${errorMessage(error)}`,
      options,
    );
  }
  // Over TLS links, a TlsHandshakeError; over HTTP links (https:, wss:), the
  // certificate's fault is in the words of the error the dial failed with.
  const tlsSaid = error instanceof TlsHandshakeError
    ? errorMessage(error.cause)
    : /certificate|NotValidForName|CaUsedAsEndEntity/i.test(errorMessage(error))
    ? errorMessage(error)
    : null;
  if (tlsSaid !== null) {
    const said = tlsSaid;
    // Only what cannot be a passing fault: an end of file or a reset in the
    // handshake may be a server shedding load, and is retried as unreachable.
    const kind = tlsFailureKind(said);
    if (kind === "wrong-name") {
      return new ImmortalError(
        "tls",
        `TLS with ${where} failed (${said}): its certificate is for another name ` +
          "(give the name it carries: tls.serverName, --tls-name on the command line)",
        options,
      );
    }
    if (kind === "ca-as-server") {
      return new ImmortalError(
        "tls",
        `TLS with ${where} failed (${said}): ${CA_AS_SERVER_ADVICE}`,
        options,
      );
    }
    if (kind === "untrusted") {
      return new ImmortalError(
        "tls",
        `TLS with ${where} failed (${said}): its certificate is not trusted ` +
          "(give the CA that signed it: tls.caCerts, --tls-ca on the command line)",
        options,
      );
    }
    if (kind === "refused") {
      return new ImmortalError(
        "tls",
        `TLS with ${where} failed (${said}): the server refused the handshake`,
        options,
      );
    }
    if (kind === "not-tls") {
      return new ImmortalError(
        "tls",
        `TLS with ${where} failed (${said}): is it a plain (non-TLS) server?`,
        options,
      );
    }
  }
  // An HTTP link's endpoint that is not one: a page (200), nothing at that
  // path (404, 410), or one that takes no POST (405). The URL may be wrong;
  // or a proxy, a router between deployments, a Wi-Fi login page answered:
  // those pass, so it is retried like any server not there, and says why.
  // HTTP streaming refuses with a LinkRefused; a WebSocket handshake's reset carries the status.
  const status = error instanceof LinkRefused || error instanceof Deno.errors.ConnectionReset
    ? (error as { status?: unknown }).status
    : undefined;
  if (typeof status === "number" && [200, 404, 405, 410].includes(status)) {
    return new ImmortalError(
      "unreachable",
      `${errorMessage(error)}: no immortal link endpoint there (is the URL's path right? a proxy ` +
        "or a Wi-Fi login page may answer so too)",
      options,
    );
  }
  if (error instanceof FrameError) {
    if (/frame type 0x48\b/.test(error.message)) {
      // "H", of "HTTP/1.1 400": a web server, or a relay (whose tunnels are by name).
      return new ImmortalError(
        "protocol",
        `${where} answers in HTTP, not the immortal protocol: is it a web server, or a relay? ` +
          "(a tunnel server on a relay is reached by name: --relay on the command line)",
        options,
      );
    }
    // A TLS record (alert 0x15, handshake 0x16) where a frame should be.
    const tls = /frame type 0x1[56]\b/.test(error.message);
    return new ImmortalError(
      tls ? "tls" : "protocol",
      tls
        ? `${where} answers in TLS: connect with TLS`
        : `${where} does not speak the immortal protocol (${error.message}): ` +
          "is it an immortal server?",
      options,
    );
  }
  if (error instanceof HandshakeCut && error.expected === "challenge") {
    // Not one byte back: another kind of server that hung up on our hello (a
    // database, say), or ours shedding load (which may pass: still retried).
    return new ImmortalError(
      "unreachable",
      `${where} accepted the connection and closed it without answering: is it an immortal ` +
        "server? (one shedding load does that too)",
      options,
    );
  }
  return new ImmortalError(
    "unreachable",
    `cannot connect to ${where}: ${errorMessage(error)}`,
    options,
  );
}
