/**
 * Links over plain TCP, on `Deno.connect` and `Deno.listen`.
 *
 * @module
 */

import type { Acceptor, Dialer, Link } from "./link.ts";
import { tuneTcp } from "./_tune_tcp.ts";
import { listenTcp } from "../_util.ts";

/** A {@linkcode Link} over one `Deno.TcpConn`, or a `Deno.TlsConn` on top of one. */
export class TcpLink implements Link {
  #conn: Deno.TcpConn | Deno.TlsConn;
  #closed = false;

  /**
   * Wraps an open connection. On a plain TCP connection Nagle is turned off
   * (frames are batched above, so small writes are deliberate).
   */
  constructor(conn: Deno.TcpConn | Deno.TlsConn) {
    this.#conn = conn;
    if ("setNoDelay" in conn) tuneTcp(conn);
  }

  /** Local address of the socket. */
  get localAddr(): Deno.Addr {
    return this.#conn.localAddr;
  }

  /** Remote address of the socket. */
  get remoteAddr(): Deno.Addr {
    return this.#conn.remoteAddr;
  }

  /** Reads into `buffer`; `null` at end of stream. */
  read(buffer: Uint8Array): Promise<number | null> {
    return this.#conn.read(buffer);
  }

  /** Writes all of `data`. */
  async write(data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) off += await this.#conn.write(data.subarray(off));
  }

  /** Ends this side's sending (FIN; for TLS, close_notify first); reads go on. */
  async closeWrite(): Promise<void> {
    await this.#conn.closeWrite();
  }

  /** Closes the socket; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed by the runtime after an error: nothing left to release.
    }
  }
}

/** Where a TCP dialer connects. */
export interface TcpDialerOptions {
  /** Host name or IP address of the server. Default `127.0.0.1`. */
  hostname?: string;
  /** TCP port of the server. */
  port: number;
}

/** Returns a {@linkcode Dialer} that opens TCP links with `Deno.connect`. */
export function tcpDialer(options: TcpDialerOptions): Dialer {
  const { hostname = "127.0.0.1", port } = options;
  return async (signal) => {
    const conn = await Deno.connect({ hostname, port, signal });
    return new TcpLink(conn);
  };
}

/** Where a TCP acceptor listens. */
export interface TcpAcceptorOptions {
  /** Address to listen on. Default `0.0.0.0`. */
  hostname?: string;
  /** Port to listen on; `0` picks a free one. */
  port: number;
}

/** An {@linkcode Acceptor} over any Deno listener of TCP or TLS connections. */
export class ListenerAcceptor implements Acceptor<Deno.NetAddr> {
  #listener: Deno.Listener<Deno.TcpConn | Deno.TlsConn, Deno.NetAddr>;

  /** Takes over `listener` (closing the acceptor closes it). */
  constructor(listener: Deno.Listener<Deno.TcpConn | Deno.TlsConn, Deno.NetAddr>) {
    this.#listener = listener;
  }

  /** The bound address. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /**
   * Next accepted link. A TLS handshake runs on first read, inside the
   * session handshake and under its deadline, so a stalled peer cannot hold
   * up the accept loop.
   */
  async accept(): Promise<Link> {
    return new TcpLink(await this.#listener.accept());
  }

  /** Stops listening; idempotent. */
  close(): void {
    try {
      this.#listener.close();
    } catch {
      // Closing twice is not an error for us.
    }
  }
}

/** An {@linkcode Acceptor} over `Deno.listen`. */
export class TcpAcceptor extends ListenerAcceptor {
  /** Starts listening at once (synchronously, like `Deno.listen`). */
  constructor(options: TcpAcceptorOptions) {
    super(listenTcp({ hostname: options.hostname ?? "0.0.0.0", port: options.port }));
  }
}
