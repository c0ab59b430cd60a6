/**
 * The far end of a tunnel: accepts ImmortalConns and dials the target for each.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import {
  type ImmortalConn,
  type ImmortalListener,
  listen,
  type ListenTlsOptions,
  type SessionOptions,
} from "../conn/mod.ts";
import { type Acceptor, formatAddr } from "../link/mod.ts";
import { errorMessage } from "../_util.ts";
import { splice, TUNNEL_PREAMBLE } from "./_splice.ts";

const log = getLogger(["immortal", "tunnel"]);

/**
 * Settings of a {@linkcode TunnelServer}; `A` is the address type of a custom
 * `acceptor` (`Deno.NetAddr` over TCP and TLS).
 */
export interface TunnelServerOptions<A extends Deno.Addr = Deno.NetAddr> extends SessionOptions {
  /** Address to listen on for tunnel clients. Default `0.0.0.0`. */
  hostname?: string;
  /** Port to listen on for tunnel clients; `0` picks one. */
  port: number;
  /** Where each tunneled connection is forwarded. */
  target: { hostname: string; port: number };
  /** Serve TLS with this certificate and key (PEM) instead of plain TCP. */
  tls?: ListenTlsOptions;
  /** Accept links another way than plain TCP or TLS. */
  acceptor?: Acceptor<A>;
}

/** Accepts tunnel sessions and forwards each to the target over TCP. */
export class TunnelServer<A extends Deno.Addr = Deno.NetAddr> implements AsyncDisposable {
  #listener: ImmortalListener<Deno.Addr>;
  #target: { hostname: string; port: number };
  #active = new Set<ImmortalConn>();
  #serving: Promise<void>;

  /** Starts listening at once; see {@linkcode TunnelServerOptions}. */
  constructor(options: TunnelServerOptions<A>) {
    this.#target = options.target;
    this.#listener = listen(options);
    this.#serving = this.#serve();
  }

  /** The address tunnel clients dial. */
  get addr(): A {
    // The listener's address is the acceptor's: `A` by construction.
    return this.#listener.addr as A;
  }

  /** Tunneled connections currently open. */
  get connections(): number {
    return this.#active.size;
  }

  async #serve(): Promise<void> {
    for await (const conn of this.#listener) this.#forward(conn);
  }

  async #forward(conn: ImmortalConn): Promise<void> {
    this.#active.add(conn);
    const id = conn.sessionId.slice(0, 8);
    const target = `${this.#target.hostname}:${this.#target.port}`;
    try {
      const preamble = new Uint8Array(1);
      if ((await conn.read(preamble)) !== 1 || preamble[0] !== TUNNEL_PREAMBLE) {
        log.warn("Tunnel {id}: not a tunnel client, closing", { id });
        conn.close();
        return;
      }
      let tcp: Deno.TcpConn;
      try {
        tcp = await Deno.connect(this.#target);
      } catch (error) {
        log.error("Tunnel {id}: cannot reach the target {target}: {reason}", {
          id,
          target,
          reason: errorMessage(error),
        });
        conn.close();
        return;
      }
      log.info("Tunnel {id} from {remote} forwarded to {target}", {
        id,
        remote: formatAddr(conn.remoteAddr),
        target,
      });
      const { up, down } = await splice(tcp, conn);
      await conn.closed;
      log.info("Tunnel {id} done: {up} bytes in, {down} bytes out", { id, up, down });
    } catch (error) {
      log.warn("Tunnel {id} ended: {reason}", { id, reason: errorMessage(error) });
    } finally {
      this.#active.delete(conn);
    }
  }

  /** Stops accepting and closes every tunneled connection. */
  async close(): Promise<void> {
    this.#listener.close();
    for (const conn of this.#active) conn.close();
    await this.#serving;
    await Promise.allSettled([...this.#active].map((c) => c.closed));
  }

  /** Same as {@linkcode TunnelServer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
