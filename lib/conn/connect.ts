/**
 * Client entry point: {@linkcode connect}.
 *
 * @module
 */

import { type Dialer, tcpDialer, tlsDialer } from "../link/mod.ts";
import { _dialAndHandshake } from "./dial.ts";
import { ImmortalError } from "./errors.ts";
import { _clientOpen, _hmacKey } from "./handshake.ts";
import type { ImmortalConn } from "./immortal_conn.ts";
import { _resolveOptions, type BackoffOptions, type SessionOptions } from "./options.ts";
import { _Session } from "./session.ts";

/** Where and how {@linkcode connect} opens a session. */
export interface ConnectOptions extends SessionOptions {
  /** Server host name or address. Default `127.0.0.1`. */
  hostname?: string;
  /** Server port (required unless `dialer` is given). */
  port?: number;
  /**
   * Use TLS: `true` trusts the system's roots; an object adds trusted CA
   * certificates (PEM) or names the certificate's expected server name.
   */
  tls?: true | ConnectTlsOptions;
  /** Makes links another way than plain TCP or TLS (WebSocket, a relay pipe, ...). */
  dialer?: Dialer;
  /** Reconnect backoff. */
  backoff?: BackoffOptions;
}

/** TLS settings of a client; see {@linkcode ConnectOptions.tls}. */
export interface ConnectTlsOptions {
  /** Extra trusted CA certificates in PEM format. */
  caCerts?: string[];
  /** Name the server's certificate must carry. Default: the host name dialed. */
  serverName?: string;
}

/** @internal The dialer that `options` describe: theirs, TLS or plain TCP. */
export function _dialerFor(options: ConnectOptions): Dialer {
  if (options.dialer) return options.dialer;
  const hostname = options.hostname ?? "127.0.0.1";
  const port = _checkPort("port", options.port);
  if (!options.tls) return tcpDialer({ hostname, port });
  return tlsDialer({ hostname, port, ...(options.tls === true ? {} : options.tls) });
}

/** @internal Validates a TCP port number, naming the setting in the error. */
export function _checkPort(name: string, port: unknown, allowZero = false): number {
  if (
    typeof port !== "number" || !Number.isInteger(port) || port < (allowZero ? 0 : 1) ||
    port > 65535
  ) {
    throw new RangeError(`${name} must be an integer in ${allowZero ? 0 : 1}..65535, got ${port}`);
  }
  return port;
}

/**
 * Opens an immortal session to a server started with {@linkcode listen}.
 *
 * The first link must succeed (it rejects with an {@linkcode ImmortalError} of
 * code `unreachable`, `auth` or `rejected` otherwise); after that, links that
 * fail are replaced transparently until `resumeTimeout`.
 *
 * @example
 * ```ts ignore
 * import { connect } from "@immortal/sockets";
 * const conn = await connect({ hostname: "example.com", port: 4000, key: "secret" });
 * await conn.write(new TextEncoder().encode("hello"));
 * ```
 */
export async function connect(options: ConnectOptions): Promise<ImmortalConn> {
  const resolved = _resolveOptions(options);
  const dialer = _dialerFor(options);
  const where = options.dialer
    ? "the server"
    : `${options.hostname ?? "127.0.0.1"}:${options.port}`;
  const psk = resolved.key ? await _hmacKey(resolved.key) : null;
  let opened;
  try {
    opened = await _dialAndHandshake(
      dialer,
      resolved.handshakeTimeout,
      undefined,
      (reader) => _clientOpen(reader, psk),
    );
  } catch (error) {
    if (error instanceof ImmortalError) throw error;
    throw new ImmortalError(
      "unreachable",
      `cannot connect to ${where}: ${error instanceof Error ? error.message : error}`,
      { cause: error },
    );
  }
  return new _Session({
    role: "client",
    options: resolved,
    secrets: opened.value,
    reader: opened.reader,
    dialer,
  });
}
