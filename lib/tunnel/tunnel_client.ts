/**
 * The near end of a tunnel: listens locally and carries every accepted TCP
 * connection as a stream of one immortal session to a {@linkcode TunnelServer}.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import {
  type BackoffOptions,
  connect,
  type ConnectTlsOptions,
  type ImmortalConn,
  ImmortalError,
  type SessionOptions,
} from "../conn/mod.ts";
import { closedByPeer, shuttingDown } from "../conn/errors.ts";
import { type Dialer, formatAddr } from "../link/mod.ts";
import { MuxSession } from "../mux/mod.ts";
import {
  acceptBackoff,
  backoffDelay,
  delay,
  describeValue,
  errorMessage,
  hostPort,
  listenTcp,
} from "../_util.ts";
import { positive, resolveOptions } from "../conn/_options.ts";
import { dialsThroughRelay } from "../link/_through_relay.ts";
import { hostAndPort, portOption } from "./tunnel_server.ts";
import { LogLimiter } from "../_log_limiter.ts";
import { type ForwardedBytes, splice, TunnelClosing } from "./_splice.ts";

const log = getLogger(["immortal", "tunnel"]);

/** Why a first connection failed that waiting may fix: nothing answered, or the server was busy. */
/** How long a connection waits for the server by default (`connectWait`); the CLI waits as long. */
export const CONNECT_WAIT_MS = 30_000;

const RETRIED = new Set(["unreachable", "rejected"]);
/** Sessions a new stream waits for, one after another, before it takes what it has. */
const MAX_SESSION_ROUNDS = 16;

/**
 * `options` checked, all at once: the client's own settings, where the
 * server is, and what `connect` would refuse (the session settings, `tls`)
 * only when a local connection came. Returns them with the server checked.
 */
function checkOptions(options: TunnelClientOptions): TunnelClientOptions {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`the options must be an object, got ${describeValue(options)}`);
  }
  const { dialer, hostname, tls } = options;
  if (dialer !== undefined && typeof dialer !== "function") {
    throw new TypeError(`dialer must be a function, got ${describeValue(dialer)}`);
  }
  // With a dialer the server is only a name for the logs: its port may be a placeholder.
  const server = dialer === undefined
    ? hostAndPort("server", options.server ?? missing("server"))
    : options.server;
  if (hostname !== undefined && (typeof hostname !== "string" || hostname === "")) {
    throw new TypeError(`hostname must be a non-empty string, got ${describeValue(hostname)}`);
  }
  // Left out, Deno picks a free port, as for 0.
  if (options.port !== undefined) portOption("port", options.port, true);
  // A deadline, not a timer's delay (each wait is the backoff, at most): any length.
  positive("connectWait", options.connectWait, CONNECT_WAIT_MS, 0);
  if (
    options.backoff !== undefined &&
    (typeof options.backoff !== "object" || options.backoff === null)
  ) {
    throw new TypeError(`backoff must be an object, got ${describeValue(options.backoff)}`);
  }
  resolveOptions(options, { throughRelay: dialsThroughRelay(dialer) });
  if (typeof tls === "object") {
    const { caCerts, serverName } = tls;
    if (
      caCerts !== undefined &&
      (!Array.isArray(caCerts) || caCerts.some((c) => typeof c !== "string"))
    ) {
      throw new TypeError(
        `tls.caCerts must be an array of PEM strings, got ${describeValue(caCerts)}`,
      );
    }
    if (serverName !== undefined && (typeof serverName !== "string" || serverName === "")) {
      throw new TypeError(
        `tls.serverName must be a non-empty string, got ${describeValue(serverName)}`,
      );
    }
  }
  return { ...options, server };
}

/** A required setting that was left out. */
function missing(name: string): never {
  throw new TypeError(`${name} is required (unless a dialer is given): { hostname, port }`);
}

/** Settings of a {@linkcode TunnelClient}. */
export interface TunnelClientOptions extends SessionOptions {
  /** Local address to listen on. Default `127.0.0.1` (not the whole network). */
  hostname?: string;
  /** Local port to listen on; `0` (the default) picks one. */
  port?: number;
  /**
   * The tunnel server (required unless `dialer` is given; with one, it only
   * names the server in logs: port 0 for a name alone, a relay node's, say).
   */
  server?: { hostname: string; port: number };
  /** Reach the server over TLS; see {@linkcode ConnectTlsOptions}. */
  tls?: true | ConnectTlsOptions;
  /** Reach the server another way than plain TCP or TLS. */
  dialer?: Dialer;
  /** Reconnect backoff of the session. */
  backoff?: BackoffOptions;
  /**
   * While the server is unreachable, a new local connection waits this long
   * (ms) for it before it is closed, counted from when it came (not from
   * the opening already under way). While the session resumes, a new
   * connection waits for it, and goes on the next session if it ends.
   * Default 30000.
   */
  connectWait?: number;
}

/** What an opening or a connection that close() ended is told. */
function tunnelClosing(cause?: unknown): ImmortalError {
  return new ImmortalError("closed", "the tunnel is closing", { cause });
}

/**
 * Forwards local TCP connections through one immortal session: each
 * connection is a stream of it, so a link break costs one reconnect and one
 * resume, whatever the number of connections. A session that is lost for
 * good (the server restarted, say) is replaced for the next connection.
 */
export class TunnelClient implements AsyncDisposable {
  #listener: Deno.TcpListener;
  #options: TunnelClientOptions;
  #active = new Set<Deno.TcpConn>();
  #forwarded: ForwardedBytes = { sent: 0, received: 0 };
  /** The session, or its opening; null when there is none. */
  #session: Promise<MuxSession> | null = null;
  #current: MuxSession | null = null;
  #failures = new LogLimiter((template, properties) => log.error(template, properties));
  /** The server ended the session on purpose (it shut down, say): news to heed, no fault of ours. */
  #peerEnds = new LogLimiter((template, properties) => log.warn(template, properties));
  /** A local application's own resets (`socat -u`, a killed client): news, not errors of ours. */
  #localEnds = new LogLimiter((template, properties) => log.info(template, properties));
  #closing = new AbortController();
  /** Closed by close(): every local connection ends. */
  #connectionsClosing = new TunnelClosing();
  /** Since when openings fail to reach the server (said once, not per opening); null while it answers. */
  #unreachableSince: number | null = null;
  /** A session was opened once: the server being reached after that is "again". */
  #reachedOnce = false;
  #serving: Promise<void>;
  /** Every local connection's forwarding, so close() can wait for all of them, opening ones included. */
  #carrying = new Set<Promise<void>>();

  /**
   * Starts listening at once; see {@linkcode TunnelClientOptions}. Throws a
   * `TypeError` or `RangeError` naming a setting that is missing or wrong:
   * the session is opened only for the first local connection (or by
   * {@linkcode TunnelClient.open}), and a bad setting found then would only
   * close that connection.
   */
  constructor(options: TunnelClientOptions) {
    this.#options = checkOptions(options);
    this.#listener = listenTcp({ hostname: options.hostname ?? "127.0.0.1", port: options.port });
    this.#serving = this.#serve();
  }

  /** The local address applications connect to. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /** Tunneled connections currently open. */
  get connections(): number {
    return this.#active.size;
  }

  /**
   * Bytes this tunnel's connections carried since it started, counted as they
   * go: `sent` is what local connections wrote into the tunnel, `received` what
   * came out of it to them. Only the connections' own bytes: not the session's framing,
   * and a byte replayed after a reconnect counts once.
   */
  get forwarded(): Readonly<ForwardedBytes> {
    return { ...this.#forwarded };
  }

  /** The live session (none before the first connection), for statistics. */
  get sessions(): ImmortalConn[] {
    return this.#current ? [this.#current.conn] : [];
  }

  async #serve(): Promise<void> {
    let failures = 0;
    for (;;) {
      let tcp: Deno.TcpConn;
      try {
        tcp = await this.#listener.accept();
        failures = 0;
      } catch (error) {
        if (this.#closing.signal.aborted || error instanceof Deno.errors.BadResource) return;
        // Out of descriptors (EMFILE), say: ending here left the port bound
        // and nothing accepting on it, for good. Say so once per interval,
        // pause (see acceptBackoff), and serve again once descriptors free up.
        this.#failures.event("accept", "Accepting a local connection failed: {reason}", {
          reason: errorMessage(error),
        });
        if (!(await delay(acceptBackoff(++failures), this.#closing.signal))) return;
        continue;
      }
      const carrying = this.#carry(tcp);
      this.#carrying.add(carrying);
      carrying.finally(() => this.#carrying.delete(carrying));
    }
  }

  /** Opens a session, trying an unreachable server for `connectWait` ms. */
  async #open(connectWait = this.#options.connectWait ?? CONNECT_WAIT_MS): Promise<ImmortalConn> {
    const { server, backoff = {} } = this.#options;
    const deadline = performance.now() + connectWait;
    for (let attempt = 1;; attempt++) {
      try {
        // close() abandons it: a server that holds the handshake holds no one.
        const conn = await connect({
          ...this.#options,
          ...server,
          dialer: this.#options.dialer,
          signal: this.#closing.signal,
        });
        if (this.#unreachableSince !== null) {
          log.info("Tunnel server {reached} after {seconds} s", {
            reached: this.#reachedOnce ? "reachable again" : "reached",
            seconds: ((performance.now() - this.#unreachableSince) / 1000).toFixed(1),
          });
          this.#unreachableSince = null;
        }
        this.#reachedOnce = true;
        return conn;
      } catch (error) {
        // close() ended the opening: that is the news, not the last dial's failure.
        if (this.#closing.signal.aborted) throw tunnelClosing(error);
        // A refused key, another kind of server, TLS on one side only: waiting will not
        // help. Nothing answering, or a busy server, may change.
        if (!(error instanceof ImmortalError) || !RETRIED.has(error.code)) throw error;
        // The backoff the caller set for its sessions, if any (2 s cap by default: a
        // local connection is waiting), but not past the deadline: one last try there.
        const remaining = deadline - performance.now();
        if (remaining <= 0) throw error;
        const wait = Math.min(
          remaining,
          backoffDelay(attempt, backoff.initial ?? 100, backoff.max ?? 2000),
        );
        // Once per outage: the retries after it, and the openings after this
        // one gave up (the next local connection, a caller's loop), are no news.
        if (attempt === 1 && this.#unreachableSince === null) {
          this.#unreachableSince = performance.now();
          log.warn(
            "Tunnel server not reached ({reason}); a connection waits up to {seconds} s for it",
            {
              reason: error.message,
              // Each connection's own wait (this opening's may be what is left of one).
              seconds: Math.round((this.#options.connectWait ?? CONNECT_WAIT_MS) / 1000),
            },
          );
        } else if (attempt === 1) {
          log.debug("Tunnel server still not reached ({reason})", { reason: error.message });
        }
        if (!(await delay(wait, this.#closing.signal))) throw tunnelClosing(error);
      }
    }
  }

  /**
   * Opens the session now rather than at the first local connection: a
   * start-up check that the server is there and is an immortal tunnel
   * server. Resolves once the server has greeted as one (its first bytes in
   * the session). Retries an unreachable server for `connectWait`, then
   * rejects with an {@linkcode ImmortalError}: `unreachable` (it may come
   * later), or `protocol` (another kind of server, immortal or not), `tls`,
   * `auth` (it will not, as it is). A session the server ends before it
   * greets rejects with how it ended (`closed`, `aborted`): a server that
   * was stopping, which another try may find up again.
   *
   * An immortal server that accepts the session and never writes keeps this
   * waiting: nothing tells it from a tunnel server on a slow path. The
   * command line says so after a while (and keeps waiting).
   *
   * @example
   * ```ts
   * import { TunnelClient, TunnelServer } from "@immortal/sockets/tunnel";
   *
   * await using server = new TunnelServer({
   *   hostname: "127.0.0.1",
   *   port: 0,
   *   target: { hostname: "127.0.0.1", port: 9 },
   * });
   * await using client = new TunnelClient({
   *   port: 0,
   *   server: { hostname: "127.0.0.1", port: server.addr.port },
   * });
   * await client.open(); // the server answered before any application connects
   * ```
   */
  async open(): Promise<void> {
    // Up is when the server has answered as a tunnel server: an immortal
    // server of another kind accepts the session just the same, and "the
    // tunnel is up" was said of one that could never carry a connection.
    await (await this.#sessionForStream()).greeted;
  }

  /** The session streams go over: the live one, or a new one (tried for `wait` ms, if given). */
  #sessionForStream(wait?: number): Promise<MuxSession> {
    if (this.#session === null) {
      const opening: Promise<MuxSession> = this.#open(wait).then((conn) => {
        if (this.#closing.signal.aborted) {
          // close() ran while this session was being opened: it did not see it.
          conn.close();
          throw tunnelClosing();
        }
        // A tunnel server never opens streams (PROTOCOL.md 3.11): one that
        // does is refused at once, nothing kept of it.
        const session = new MuxSession(conn, {
          role: "client",
          refuseStreams: "a tunnel client takes no streams",
        });
        this.#current = session;
        const server = this.#options.server;
        // The session said itself at info ("Session … opened as client with …").
        log.debug("Tunnel session {id} open to {server}", {
          id: conn.sessionId.slice(0, 8),
          server: server === undefined
            ? "the server (through its dialer)"
            : server.port === 0
            ? server.hostname
            : hostPort(server.hostname, server.port),
        });
        session.closed.catch(() => {}).finally(() => {
          if (this.#session === opening) this.#session = null;
          if (this.#current === session) this.#current = null;
        });
        return session;
      });
      opening.catch(() => {
        if (this.#session === opening) this.#session = null;
      });
      this.#session = opening;
    }
    return this.#session;
  }

  /**
   * The session a new local connection's stream goes on, for as long as the
   * connection's own wait (`connectWait`) lasts. An opening already under
   * way when the connection came (started by an earlier one) may give up
   * before that: another is tried. A session that is resuming is waited
   * for, and replaced if it ends: a stream opened on it went down with it
   * when a restarted server said it no longer knew the session (new
   * connections in the seconds after a server restart were closed unserved).
   */
  async #sessionForNewStream(): Promise<MuxSession> {
    const { connectWait = CONNECT_WAIT_MS } = this.#options;
    const deadline = performance.now() + connectWait;
    // Bounded: each round is an opening that failed or a session that ended.
    for (let rounds = 1;; rounds++) {
      let session: MuxSession;
      try {
        // An opening this connection starts tries for what is left of its
        // own wait; one under way already ends sooner (it started earlier).
        session = await this.#sessionForStream(Math.max(0, deadline - performance.now()));
      } catch (error) {
        if (
          error instanceof ImmortalError && RETRIED.has(error.code) &&
          performance.now() < deadline && !this.#closing.signal.aborted
        ) continue;
        throw error;
      }
      const state = session.conn.state;
      if (state === "connected" || rounds >= MAX_SESSION_ROUNDS) return session;
      if (state === "reconnecting" && (await resumedOrEnded(session))) return session;
      if (this.#closing.signal.aborted) throw tunnelClosing();
      // Ended: let go of it now (its own end does, a few turns later), so
      // that the next round opens another.
      if (this.#current === session) {
        this.#current = null;
        this.#session = null;
      }
    }
  }

  async #carry(tcp: Deno.TcpConn): Promise<void> {
    this.#active.add(tcp);
    const local = formatAddr(tcp.remoteAddr);
    try {
      const session = await this.#sessionForNewStream();
      const stream = session.open();
      // Per connection only at debug level: a burst of a thousand is no news.
      log.debug("Stream {stream} carries local client {local}", { stream: stream.id, local });
      const { up, down } = await splice(tcp, stream, {
        totals: this.#forwarded,
        closing: this.#connectionsClosing,
      });
      log.debug("Stream {stream} done: {up} bytes sent, {down} bytes received", {
        stream: stream.id,
        up,
        down,
      });
    } catch (error) {
      // A lost session fails all its connections at once: one line per
      // reason per interval, with a count, not ten thousand.
      const reason = errorMessage(error);
      // Our own close says it once, for all of them (close()).
      if (!this.#closing.signal.aborted) {
        // The session's failures are ours, or the server's choice; anything
        // else came from the local socket.
        const limiter = !(error instanceof ImmortalError)
          ? this.#localEnds
          : closedByPeer(error)
          ? this.#peerEnds
          : this.#failures;
        const verb = limiter === this.#peerEnds ? "ended" : "failed";
        limiter.event(reason, `Tunneled connection from {local} ${verb}: {reason}`, {
          local,
          reason,
        });
      }
      try {
        tcp.close();
      } catch {
        // Closed by the splice already.
      }
    } finally {
      this.#active.delete(tcp);
    }
  }

  /** Stops listening and closes every tunneled connection. */
  async close(): Promise<void> {
    this.#closing.abort();
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    const why = shuttingDown("tunnel client");
    if (this.#active.size > 0) {
      log.info("Closing {count} tunneled connection{s}: {why}", {
        count: this.#active.size,
        s: this.#active.size === 1 ? "" : "s",
        why,
      });
    }
    this.#current?.close(why);
    this.#connectionsClosing.close();
    for (const tcp of this.#active) {
      try {
        tcp.close();
      } catch {
        // Already closed.
      }
    }
    await this.#serving;
    // A connection still opening its session ends as soon as it has one.
    await Promise.allSettled([...this.#carrying]);
    this.#failures.flush();
    this.#peerEnds.flush();
    this.#localEnds.flush();
  }

  /** Same as {@linkcode TunnelClient.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Whether `session`, resuming, is back (true) or ended first (false). */
async function resumedOrEnded(session: MuxSession): Promise<boolean> {
  // Events, with their listeners removed after: a promise's callbacks would
  // pile up on a long-lived session, one per connection made while it resumed.
  const done = new AbortController();
  try {
    return await new Promise<boolean>((resolve) => {
      const options = { once: true, signal: done.signal };
      session.conn.addEventListener("resumed", () => resolve(true), options);
      session.conn.addEventListener("closed", () => resolve(false), options);
      // Ended already (between the look at its state and now): no event comes.
      if (session.conn.state === "closed") resolve(false);
    });
  } finally {
    done.abort();
  }
}
