/**
 * The far end of a tunnel: accepts immortal sessions and dials the target for
 * each stream they carry.
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
import { ImmortalError, shuttingDown } from "../conn/errors.ts";
import { closeRefusedAcceptor } from "../conn/listener.ts";
import type { Acceptor } from "../link/mod.ts";
import { MuxSession, type MuxStream } from "../mux/mod.ts";
import { checkPort, errorMessage, hostPort } from "../_util.ts";
import { describeValue } from "../_util.ts";
import { LogLimiter } from "../_log_limiter.ts";
import { sourceOf } from "../link/_source.ts";
import { type ForwardedBytes, splice, TunnelClosing } from "./_splice.ts";
import { coreOf } from "../mux/mux_stream.ts";

const log = getLogger(["immortal", "tunnel"]);

/**
 * Checks a port setting: a `TypeError` for what is not a number (`"22"`
 * would otherwise be shown as the number it looks like), a `RangeError`
 * for a number that is no port.
 */
export function portOption(name: string, port: unknown, allowZero = false): number {
  if (typeof port !== "number") {
    throw new TypeError(
      `${name} must be an integer in ${allowZero ? 0 : 1}..65535, got ${describeValue(port)}`,
    );
  }
  return checkPort(name, port, allowZero);
}

/**
 * Checks where a tunnel sends (`target`) or goes (`server`), as
 * `{ hostname, port }`; returns a copy, so that a caller changing its object
 * later does not move the tunnel.
 */
export function hostAndPort(name: string, value: unknown): { hostname: string; port: number } {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError(
      `${name} must be an object { hostname, port }, got ${describeValue(value)}`,
    );
  }
  const { hostname, port } = value as { hostname?: unknown; port?: unknown };
  if (typeof hostname !== "string" || hostname === "") {
    throw new TypeError(
      `${name}.hostname must be a non-empty string, got ${describeValue(hostname)}`,
    );
  }
  return { hostname, port: portOption(`${name}.port`, port) };
}

/** The target of every stream: required, as nothing else says where streams go. */
function checkTarget(target: unknown): { hostname: string; port: number } {
  if (target === undefined) {
    throw new TypeError("target is required: { hostname, port } of where each stream is forwarded");
  }
  return hostAndPort("target", target);
}

/**
 * Settings of a {@linkcode TunnelServer}; `A` is the address type of a custom
 * `acceptor` (`Deno.NetAddr` over TCP and TLS).
 */
export interface TunnelServerOptions<A extends Deno.Addr = Deno.NetAddr> extends SessionOptions {
  /** Address to listen on for tunnel clients. Default `0.0.0.0`. */
  hostname?: string;
  /** Port to listen on for tunnel clients; `0` (the default) picks one. Unused with an `acceptor`. */
  port?: number;
  /** Where each tunneled connection is forwarded. */
  target: { hostname: string; port: number };
  /** Serve TLS with this certificate and key (PEM) instead of plain TCP. */
  tls?: ListenTlsOptions;
  /**
   * Accept links another way than plain TCP or TLS. The server owns it from
   * the call on: closed with the server, or at once when the options are
   * refused.
   */
  acceptor?: Acceptor<A>;
  /**
   * Connections to the target open at once, over all sessions; a stream
   * beyond is refused with the reason. Each holds a socket and buffers, so
   * without a `key` (anyone may open streams) this bounds what strangers
   * cost. Default: unlimited with a `key`, 128 without one. Without a `key`,
   * one source (an address, an IPv6 /64) may hold half of them.
   */
  maxConnections?: number;
}

/**
 * Accepts tunnel sessions and forwards each stream of them to the target over
 * TCP. A stream whose target cannot be reached is refused with the reason;
 * the session and its other streams go on.
 */
export class TunnelServer<A extends Deno.Addr = Deno.NetAddr> implements AsyncDisposable {
  #listener: ImmortalListener<Deno.Addr>;
  #target: { hostname: string; port: number };
  /** Each live session's multiplexer, and the immortal session under it. */
  #sessions = new Map<MuxSession, ImmortalConn>();
  #streams = 0;
  #forwarded: ForwardedBytes = { sent: 0, received: 0 };
  /** Closed by close(): every connection to the target ends. */
  #connectionsClosing = new TunnelClosing();
  #refusals = new LogLimiter((template, properties) => log.warn(template, properties));
  #serving: Promise<void>;
  /** Every session's serving, so close() can wait for all of them. */
  #carrying = new Set<Promise<void>>();
  #maxConnections: number;
  /**
   * A key-less server's connections one source (an address, an IPv6 /64)
   * may hold: half of them. Strangers may use it, and one of them held all
   * 128 with one session, for as long as its heartbeats went (everyone
   * else's streams refused). Null with a key: its holders are trusted.
   */
  #sourceShare: number | null;
  /** Connections to the target by source (counted from their dial). */
  #bySource = new Map<string, number>();

  /**
   * Starts listening at once; see {@linkcode TunnelServerOptions}. Throws a
   * `TypeError` or `RangeError` naming a setting that is missing or wrong
   * (the target, the session settings), so that it is not found only when
   * each stream is refused.
   */
  constructor(options: TunnelServerOptions<A>) {
    let max: number;
    try {
      max = options.maxConnections ?? (options.key === undefined ? 128 : Infinity);
      if (typeof max !== "number") {
        throw new TypeError(`maxConnections must be an integer >= 1, got ${describeValue(max)}`);
      }
      if (!(max >= 1) || (!Number.isInteger(max) && max !== Infinity)) {
        throw new RangeError(`maxConnections must be an integer >= 1, got ${max}`);
      }
      this.#target = checkTarget(options.target);
      if (options.port !== undefined) portOption("port", options.port, true);
    } catch (error) {
      closeRefusedAcceptor(options.acceptor);
      throw error;
    }
    this.#maxConnections = max;
    this.#sourceShare = options.key === undefined && max !== Infinity
      ? Math.max(1, Math.floor(max / 2))
      : null;
    // All checked before listening: a listener opened and then refused would be left open.
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
    return this.#streams;
  }

  /**
   * Bytes this tunnel's connections carried since it started, counted as they
   * go: `sent` is what local connections wrote into the tunnel, `received` what
   * came out of it to them. At a server, its local connections are those to
   * the target. Only the connections' own bytes: not the session's framing,
   * and a byte replayed after a reconnect counts once.
   */
  get forwarded(): Readonly<ForwardedBytes> {
    return { ...this.#forwarded };
  }

  /** The sessions of the tunnel clients connected now, for statistics. */
  get sessions(): ImmortalConn[] {
    return [...this.#sessions.values()];
  }

  async #serve(): Promise<void> {
    for await (const conn of this.#listener) {
      const carrying = this.#carrySession(conn);
      this.#carrying.add(carrying);
      carrying.finally(() => this.#carrying.delete(carrying));
    }
  }

  async #carrySession(conn: ImmortalConn): Promise<void> {
    const session = new MuxSession(conn, { role: "server" });
    this.#sessions.set(session, conn);
    const id = conn.sessionId.slice(0, 8);
    // The session said itself at info ("Session … opened as server with …").
    log.debug("Tunnel session {id} from {remote}", { id, remote: conn.peer });
    const streams = new Set<Promise<void>>();
    const source = sourceOf(conn.remoteAddr) ?? "";
    try {
      for await (const stream of session) {
        const forwarding = this.#forward(id, stream, source);
        streams.add(forwarding);
        forwarding.finally(() => streams.delete(forwarding));
      }
    } catch (error) {
      // The session said its own end as it came (a warning, or news at info):
      // said again here, a resume timeout was two lines.
      const said = error instanceof ImmortalError;
      log[said ? "debug" : "info"]("Tunnel session {id} ended: {reason}", {
        id,
        reason: errorMessage(error),
      });
    } finally {
      this.#sessions.delete(session);
      await Promise.allSettled([...streams]);
    }
  }

  async #forward(session: string, stream: MuxStream, source: string): Promise<void> {
    const target = hostPort(this.#target.hostname, this.#target.port);
    if (this.#streams >= this.#maxConnections) {
      const reason = `too many connections (${this.#maxConnections}) to ${target} open`;
      this.#refusals.event("max-connections", "Tunnel session {session}: {reason}", {
        session,
        reason,
      });
      stream.refuse(reason);
      return;
    }
    const held = this.#bySource.get(source) ?? 0;
    if (this.#sourceShare !== null && held >= this.#sourceShare) {
      const reason = `this address holds ${held} connections to ${target}, its share of the ` +
        `${this.#maxConnections} a key-less server opens`;
      this.#refusals.event(`share ${source}`, "Tunnel session {session}: {reason}", {
        session,
        reason,
      });
      stream.refuse(reason);
      return;
    }
    // A stream the peer reset, or whose session ended, before or while its
    // target is dialed needs no connection: the target (an sshd, a
    // database) would log a client that came and went without a word.
    const core = coreOf(stream);
    if (core.ended) return;
    const dial = new AbortController();
    let dialing = true;
    const stop = () => dialing && dial.abort();
    stream.closed.then(stop, stop);
    // Counted from the dial on: dials under way hold sockets too.
    this.#streams++;
    this.#bySource.set(source, (this.#bySource.get(source) ?? 0) + 1);
    let tcp: Deno.TcpConn | undefined;
    try {
      tcp = await Deno.connect({ ...this.#target, signal: dial.signal });
    } catch (error) {
      if (!core.ended) {
        const reason = `cannot reach ${target}: ${errorMessage(error)}`;
        // A target that is down refuses every connection: one line per reason per interval.
        this.#refusals.event(reason, "Tunnel session {session}, stream {stream}: {reason}", {
          session,
          stream: stream.id,
          reason,
        });
        stream.refuse(reason);
        this.#release(source);
        return;
      }
    } finally {
      dialing = false; // the signal is the dial's only, never the connection's
    }
    if (tcp === undefined || core.ended) {
      tcp?.close();
      this.#release(source);
      log.debug("Stream {stream} of session {session} ended before {target} answered", {
        session,
        stream: stream.id,
        target,
      });
      return;
    }
    try {
      stream.accept();
      log.debug("Stream {stream} of session {session} forwarded to {target}", {
        session,
        stream: stream.id,
        target,
      });
      const { up, down } = await splice(tcp, stream, {
        totals: this.#forwarded,
        closing: this.#connectionsClosing,
      });
      log.debug("Stream {stream} done: {up} bytes in, {down} bytes out", {
        stream: stream.id,
        up,
        down,
      });
    } catch (error) {
      log.debug("Stream {stream} of session {session} ended: {reason}", {
        session,
        stream: stream.id,
        reason: errorMessage(error),
      });
    } finally {
      this.#release(source);
    }
  }

  /** A connection to the target (or its dial) is over. */
  #release(source: string): void {
    this.#streams--;
    const left = (this.#bySource.get(source) ?? 1) - 1;
    if (left > 0) this.#bySource.set(source, left);
    else this.#bySource.delete(source);
  }

  /** Stops accepting and closes every tunneled connection. */
  async close(): Promise<void> {
    this.#listener.close();
    // Said to each client: its connections end for this, not for a fault.
    for (const session of this.#sessions.keys()) session.close(shuttingDown("tunnel server"));
    // Connections end now, also one still writing what its client sent
    // whole (its session lost): its target may never read it.
    this.#connectionsClosing.close();
    await this.#serving;
    await Promise.allSettled([...this.#carrying]);
    this.#refusals.flush();
  }

  /** Same as {@linkcode TunnelServer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
