/**
 * Server entry point: {@linkcode listen} and {@linkcode ImmortalListener}.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import {
  type Acceptor,
  describePeer,
  formatAddr,
  type Link,
  TcpAcceptor,
  TlsAcceptor,
} from "../link/mod.ts";
import { acceptBackoff, checkPort, delay, describeValue, errorMessage } from "../_util.ts";
import { LogLimiter } from "../_log_limiter.ts";
import { ImmortalError } from "./errors.ts";
import { FrameReader } from "./_frame_reader.ts";
import { SealedLink } from "./_sealed_link.ts";
import { sendFrame } from "./_handshake.ts";
import { encodeFrame, type Frame, FrameError } from "../frame/mod.ts";

import type { ImmortalConn } from "./immortal_conn.ts";
import { type ResolvedOptions, resolveOptions } from "./_options.ts";
import type { SessionOptions } from "./options.ts";
import { ServerSessions } from "./_server_session.ts";
import { sourceOf } from "../link/_source.ts";
import { SourceBuckets } from "./_source_buckets.ts";

/** A TLS record: fatal alert `protocol_version` (RFC 8446 6), what a plain server says to TLS. */
const TLS_PROTOCOL_VERSION_ALERT = new Uint8Array([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);

/** A listener's limits, defaults filled in. */
interface ListenerLimits {
  backlog: number;
  maxHandshakes: number;
  maxHandshakesPerSource: number;
  maxHandshakeRatePerSource: number;
  maxSessions: number;
  maxSessionsPerSource: number;
}

const log = getLogger(["immortal", "listener"]);
/** What the client of a session the listener closed before it was accepted is told. */
const NOT_ACCEPTED = "the server's listener closed before the session was accepted";

/** Where and how {@linkcode listen} accepts sessions. */
export interface ListenOptions extends SessionOptions {
  /** Address to listen on. Default `0.0.0.0`. */
  hostname?: string;
  /** Port to listen on; `0` (the default) picks a free one. */
  port?: number;
  /** Serve TLS with this certificate and key (PEM) instead of plain TCP. */
  tls?: ListenTlsOptions;
  /**
   * Accepts links another way than plain TCP or TLS. The listener owns it
   * from the call on: it closes it when it closes, or at once when it
   * refuses the other options (a relay node's pipe acceptor would otherwise
   * stay open, and the node take no other).
   */
  acceptor?: Acceptor;
  /** New sessions waiting for `accept()` beyond this are refused as busy. Default 128. */
  backlog?: number;
  /** Links still in their handshake beyond this are dropped at once. Default 256. */
  maxHandshakes?: number;
  /**
   * Links from one source (an IPv4 address, or an IPv6 /64) still in their
   * handshake beyond this are dropped at once, so that one source cannot take
   * the whole pool of `maxHandshakes` and lock everyone else out. Default 16.
   */
  maxHandshakesPerSource?: number;
  /**
   * Handshakes one source may start per second (bursts of twice that); links
   * beyond are dropped at once. A source that reconnects as fast as it is
   * dropped then costs the listener almost nothing. Default 50.
   */
  maxHandshakeRatePerSource?: number;
  /**
   * Sessions kept at once, live or waiting for their client to come back.
   * At the limit, the oldest waiting one is ended to make room; if every one
   * is live, the new session is refused as busy. Default: unlimited with a
   * `key`, 256 without one (anyone may open sessions then, and each holds
   * memory, and with a tunnel, connections to the target, until reaped).
   */
  maxSessions?: number;
  /** The same, per source (an IPv4 address, an IPv6 /64). Default: unlimited with a `key`, 16 without. */
  maxSessionsPerSource?: number;
}

/** What a listener refused, and how often, since it started. */
export interface ListenerStats {
  /** Sessions kept (live, or waiting for their client). */
  sessions: number;
  /** Links in their handshake now. */
  handshaking: number;
  /** Links dropped at once: all handshake slots taken. */
  droppedBusy: number;
  /** Links dropped at once: their source had its share of handshake slots. */
  droppedPerSource: number;
  /** Links dropped at once: their source started handshakes too fast. */
  droppedRate: number;
  /** Handshakes refused for a missing or wrong key. */
  refusedAuth: number;
  /** New sessions refused: no room (see `maxSessions`). */
  refusedFull: number;
  /** Sessions ended to make room for new ones. */
  evicted: number;
  /** `accept` calls that failed (descriptors exhausted, mostly). */
  acceptFailures: number;
}

/** TLS identity of a server; see {@linkcode ListenOptions.tls}. */
export interface ListenTlsOptions {
  /** Certificate chain in PEM format. */
  cert: string;
  /** Private key in PEM format. */
  key: string;
}

/**
 * Accepts immortal sessions; resumes of known sessions are handled inside.
 * `A` is the type of its address: `Deno.NetAddr` over TCP and TLS.
 */
export interface ImmortalListener<A extends Deno.Addr = Deno.NetAddr>
  extends AsyncIterable<ImmortalConn>, Disposable {
  /** The address clients dial. */
  readonly addr: A;
  /** Sessions this listener keeps alive (accepted or waiting to be). */
  readonly sessionCount: number;
  /** Counts of what it refused, and gauges. */
  readonly stats: ListenerStats;
  /** Waits for the next new session. */
  accept(): Promise<ImmortalConn>;
  /**
   * Stops accepting new sessions and resumes. Sessions on a live link go on
   * until that link is lost; the others end at once. As with a
   * `Deno.Listener` whose `accept()` is pending, the port is free again only
   * once that accept has settled: a turn of the event loop later (listening
   * again on the same port at once fails with `AddrInUse`).
   */
  close(): void;
}

class Listener<A extends Deno.Addr> implements ImmortalListener<A> {
  #acceptor: Acceptor<A>;
  #options: ResolvedOptions;
  #sessions: ServerSessions;
  #backlog: number;
  #maxHandshakes: number;
  #ready: ImmortalConn[] = [];
  #waiters: { resolve: (conn: ImmortalConn) => void; reject: (error: Error) => void }[] = [];
  #handshaking = new Set<Link>();
  /** Links being told the server is busy (closed when the listener closes). */
  #refusing = new Set<Link>();
  /** Handshakes in progress per source (see `sourceOf`). */
  #bySource = new Map<string, number>();
  /** Of those, handshakes let in past the source's limits, for resumes (see #roomForResumes). */
  #resumeRoom = new Map<string, number>();
  #maxPerSource: number;
  #limits: ListenerLimits;
  #rates: SourceBuckets;
  #counts = {
    droppedBusy: 0,
    droppedPerSource: 0,
    droppedRate: 0,
    refusedAuth: 0,
    refusedFull: 0,
    evicted: 0,
    acceptFailures: 0,
  };
  #closed = false;
  #closing = new AbortController();
  /** Refusals and accept failures, one line per kind per interval. */
  #logs = new LogLimiter((template, properties) => log.warn(template, properties));

  constructor(acceptor: Acceptor<A>, options: ResolvedOptions, limits: ListenerLimits) {
    this.#limits = limits;
    this.#maxPerSource = limits.maxHandshakesPerSource;
    this.#acceptor = acceptor;
    this.#options = options;
    this.#sessions = new ServerSessions(options);
    this.#backlog = limits.backlog;
    this.#maxHandshakes = limits.maxHandshakes;
    this.#rates = new SourceBuckets(
      limits.maxHandshakeRatePerSource,
      2 * limits.maxHandshakeRatePerSource,
    );
    this.#acceptLoop();
  }

  get stats(): ListenerStats {
    return {
      sessions: this.#sessions.size,
      handshaking: this.#handshaking.size,
      ...this.#counts,
    };
  }

  get addr(): A {
    return this.#acceptor.addr;
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  accept(): Promise<ImmortalConn> {
    const session = this.#ready.shift();
    if (session) return Promise.resolve(session);
    if (this.#closed) return Promise.reject(new ImmortalError("closed", "the listener is closed"));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ImmortalConn> {
    for (;;) {
      try {
        yield await this.accept();
      } catch (error) {
        if (this.#closed) return;
        throw error;
      }
    }
  }

  /**
   * Tells `link` that the server is busy (`reject busy`: worth trying again,
   * where a link closed without a word looks like a server that is not
   * there), then closes it. Rate-limited sources get here only so often, so
   * the write costs little; a peer that does not read (or, over TLS, never
   * finishes its handshake) is closed after {@linkcode BUSY_TELL_MS} anyway,
   * and every one when the listener closes.
   */
  #refuseBusy(link: Link, reason: string): void {
    this.#sayLast(link, { type: "reject", code: "busy", reason });
  }

  /**
   * Sends `link` its last frame, then reads to the end before closing it
   * (within {@linkcode BUSY_TELL_MS}; the listener closing ends it too).
   */
  #sayLast(link: Link, frame: Frame): void {
    this.#refusing.add(link);
    const timer = setTimeout(() => link.close(), BUSY_TELL_MS);
    (async () => {
      await sendFrame(link, frame);
      await link.closeWrite?.();
      // Then read to the end (the client's hello, then its close): a socket
      // closed with unread bytes resets, and a reset can destroy the refusal
      // before the client has read it.
      const sink = new Uint8Array(512);
      while ((await link.read(sink)) !== null) { /* drained */ }
    })().catch(() => {}).finally(() => {
      clearTimeout(timer);
      this.#refusing.delete(link);
      link.close();
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort();
    this.#logs.flush();
    this.#acceptor.close();
    for (const link of this.#handshaking) link.close();
    for (const link of this.#refusing) link.close();
    const error = new ImmortalError("closed", "the listener is closed");
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    // Their clients hear why: no application ever had them to close.
    for (const session of this.#ready.splice(0)) session.close(NOT_ACCEPTED);
    this.#sessions.closeAll();
    log.info("Listener on {addr} closed", { addr: this.#where() });
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Where the listener takes links, for logs: an address, or the relay its pipes come through. */
  #where(): string {
    const addr = formatAddr(this.addr);
    return this.#acceptor.relayed ? `pipes through the relay at ${addr}` : addr;
  }

  /**
   * Where `link` comes from, for the limits per source: null when unknown,
   * or when every link comes through one relay (its address says nothing).
   */
  #sourceOf(link: Link): string | null {
    return this.#acceptor.relayed ? null : sourceOf(link.remoteAddr);
  }

  async #acceptLoop(): Promise<void> {
    let acceptFailures = 0;
    while (!this.#closed) {
      let link: Link;
      try {
        link = await this.#acceptor.accept();
        acceptFailures = 0;
      } catch (error) {
        if (this.#closed) return;
        if (error instanceof Deno.errors.BadResource) {
          // The acceptor is closed for good (a relay node that closed, say):
          // no link will ever come, so the listener ends instead of spinning.
          log.warn("Listener on {addr} ends: its links stopped: {reason}", {
            addr: this.#where(),
            reason: errorMessage(error),
          });
          this.close();
          return;
        }
        // EMFILE and friends: say so (once per interval) and pause (see acceptBackoff).
        this.#counts.acceptFailures++;
        this.#logs.event("accept", "Accepting a link failed: {reason}", {
          reason: errorMessage(error),
        });
        if (!(await delay(acceptBackoff(++acceptFailures), this.#closing.signal))) return;
        continue;
      }
      if (this.#closed) {
        link.close();
        return;
      }
      if (this.#handshaking.size >= this.#maxHandshakes) {
        this.#counts.droppedBusy++;
        this.#logs.event(
          "busy",
          "Dropped a link from {remote}: {count} handshakes already in progress",
          {
            remote: describePeer(link),
            count: this.#handshaking.size,
          },
        );
        link.close();
        continue;
      }
      const source = this.#sourceOf(link);
      if (source === null) {
        this.#handshake(link);
        continue;
      }
      const pending = this.#bySource.get(source) ?? 0;
      const token = this.#rates.take(source);
      if ((!token || pending >= this.#maxPerSource) && this.#roomForResumes(source)) {
        // Past its limits, for its own sessions' resumes only (see
        // #roomForResumes); not counted in its share, which it goes past.
        this.#track(source, this.#resumeRoom);
        let giveBack: (() => void) | null = null;
        const claim = (back: () => void) => {
          // A credit taken: the room is free for the next resume.
          giveBack = back;
          this.#untrack(source, this.#resumeRoom);
        };
        this.#handshake(link, source, claim).finally(() => {
          if (giveBack === null) this.#untrack(source, this.#resumeRoom);
          // A resume that did not take (no proof, a cut, its time up): the
          // session, still waiting, holds its credit again.
          else giveBack();
        });
        continue;
      }
      if (!token) {
        this.#counts.droppedRate++;
        this.#logs.event(
          `rate ${source}`,
          "Dropped a link from {remote}: {source} starts more than {rate} handshakes per second",
          { remote: describePeer(link), source, rate: this.#limits.maxHandshakeRatePerSource },
        );
        link.close();
        continue;
      }
      // Its token stays spent: given back, a flood from one source would
      // meet the costlier busy refusal below at every link, not a silent drop.
      if (pending >= this.#maxPerSource) {
        this.#counts.droppedPerSource++;
        this.#logs.event(
          `source ${source}`,
          "Dropped a link from {remote}: {count} handshakes from {source} already in progress",
          { remote: describePeer(link), count: pending, source },
        );
        this.#refuseBusy(
          link,
          `${pending} handshakes from your address are in progress: try again`,
        );
        continue;
      }
      this.#track(source, this.#bySource);
      this.#handshake(link).finally(() => this.#untrack(source, this.#bySource));
    }
  }

  /**
   * Whether a link from `source` past its rate or its share may still be
   * let in, for a resume (it may bring nothing else: see `handshake`).
   * After a blip, an office behind one address resumes all its sessions at
   * once: 500 took 11-16 s at 50 handshakes a second. So each session that
   * lost its link holds a credit (earned at most once a second, so breaking
   * one's own links earns little), and a source may have as many such
   * handshakes waiting for their hello as it has credits (at most its
   * share, 16), within three quarters of all handshake slots (the rest stay
   * for other sources), each with {@linkcode ROOM_HANDSHAKE_MS} to finish. A
   * hello that resumes a session holding a credit takes it and frees its
   * place. So silent links from the source hold no more slots than its
   * share (they held 192 of 256 when the room went by sessions alone).
   */
  #roomForResumes(source: string): boolean {
    const room = Math.min(this.#sessions.creditsFrom(source), this.#maxPerSource);
    return (this.#resumeRoom.get(source) ?? 0) < room &&
      this.#handshaking.size + 1 <= Math.floor(this.#maxHandshakes * RESUME_ROOM_SHARE);
  }

  #track(source: string, counts: Map<string, number>): void {
    counts.set(source, (counts.get(source) ?? 0) + 1);
  }

  #untrack(source: string, counts: Map<string, number>): void {
    const left = counts.get(source)! - 1;
    if (left === 0) counts.delete(source);
    else counts.set(source, left);
  }

  /** `resumesFrom`: the link came in on its source's room for resumes (see #roomForResumes). */
  async #handshake(
    link: Link,
    resumesFrom?: string,
    claimed?: (giveBack: () => void) => void,
  ): Promise<void> {
    this.#handshaking.add(link);
    const remote = describePeer(link);
    // Clients that never finish their handshake must not hold a slot forever.
    const timer = setTimeout(
      () => link.close(),
      resumesFrom === undefined
        ? this.#options.handshakeTimeout
        : Math.min(this.#options.handshakeTimeout, ROOM_HANDSHAKE_MS),
    );
    // Whether the session is sealed is the client's to ask (and ours to
    // require): the wrapper stays plain unless the handshake seals it.
    const reader = new FrameReader(new SealedLink(link));
    try {
      const hello = await this.#sessions.handshake(reader, resumesFrom, claimed);
      if (hello === null) return; // a resume: the session took the link
      if (this.#closed) throw new ImmortalError("closed", "the listener is closed");
      const source = this.#sourceOf(link) ?? "local";
      const evictedBefore = this.#sessions.evicted;
      const room = this.#sessions.makeRoom(
        source,
        this.#limits.maxSessions,
        this.#limits.maxSessionsPerSource,
      );
      this.#counts.evicted += this.#sessions.evicted - evictedBefore;
      const busy = this.#ready.length >= this.#backlog
        ? "too many sessions waiting to be accepted"
        : room
        ? null
        : `no room for another session from ${source}: the sessions in the way are all live`;
      if (busy !== null) {
        if (!room) this.#counts.refusedFull++;
        await sendFrame(reader.link, { type: "reject", code: "busy", reason: busy });
        throw new ImmortalError("rejected", busy);
      }
      // Out of the handshakes close() ends: a close during this write leaves
      // the link to tell its client, below.
      this.#handshaking.delete(link);
      await sendFrame(reader.link, hello.accept);
      // close() may have run during that write: its table is cleared already.
      // The client holds an accepted session: told, as those queued are, it
      // does not resume to a listener that is gone until its resume timeout.
      if (this.#closed) {
        this.#sayLast(reader.link, { type: "close", reason: NOT_ACCEPTED });
        return;
      }
      const session = this.#sessions.open(reader, hello);
      const waiter = this.#waiters.shift();
      if (waiter) waiter.resolve(session);
      else this.#ready.push(session);
    } catch (error) {
      // A TLS ClientHello (record type 22) at this plain listener: answer with a
      // TLS alert, so that the client fails at once and knows why, not on an EOF.
      if (error instanceof FrameError && /frame type 0x16\b/.test(error.message)) {
        await link.write(TLS_PROTOCOL_VERSION_ALERT).catch(() => {});
      }
      link.close();
      if (error instanceof ImmortalError && error.code === "auth") {
        this.#counts.refusedAuth++;
        // Keyed by source, not address: a client retrying from a new port
        // each time is still one summarised line per 10 s.
        const source = this.#sourceOf(link) ?? "local";
        this.#logs.event(`auth ${source}`, "Refused {remote}: {reason}", {
          remote,
          reason: error.message,
        });
      } else if (error instanceof ImmortalError && error.code === "unknown-session") {
        // The client hears it and gives the session up: the operator hears it too.
        this.#logs.event("unknown-session", "Refused to resume a session for {remote}: {reason}", {
          remote,
          reason: error.message,
        });
      } else {
        log.debug("Handshake with {remote} failed: {reason}", {
          remote,
          reason: errorMessage(error),
        });
      }
    } finally {
      clearTimeout(timer);
      this.#handshaking.delete(link);
    }
  }
}

/**
 * Starts accepting immortal sessions — synchronously, like `Deno.listen`.
 * Over TCP or TLS, `addr` is the bound `Deno.NetAddr`; with an `acceptor`,
 * it is whatever address that acceptor has.
 *
 * It throws as `Deno.listen` does, its message naming the address: a port
 * taken is `Deno.errors.AddrInUse`, a missing `--allow-net`
 * `Deno.errors.NotCapable`; bad settings are a `TypeError` or `RangeError`
 * naming them. (`ImmortalError`s are for sessions: what `connect` and a
 * session report.)
 *
 * @example Echo every session back
 * ```ts
 * import { connect, listen } from "@immortal/sockets";
 *
 * using listener = listen({ hostname: "127.0.0.1", port: 0, key: "secret" });
 * const serving = (async () => {
 *   for await (const conn of listener) {
 *     // Each session on its own (not awaited: the next client need not wait);
 *     // a session a client aborts rejects its pipe, and must not end the loop.
 *     conn.readable.pipeTo(conn.writable).catch(() => {}); // echo
 *   }
 * })();
 * await using client = await connect({ port: listener.addr.port, key: "secret" });
 * await client.write(new TextEncoder().encode("hi"));
 * await client.closeWrite();
 * const echoed = await new Response(client.readable).text(); // "hi"
 * listener.close();
 * await serving;
 * ```
 */
export function listen(options?: ListenOptions & { acceptor?: undefined }): ImmortalListener;
/** Starts accepting immortal sessions on links from `options.acceptor`. */
export function listen<A extends Deno.Addr>(
  options: ListenOptions & { acceptor: Acceptor<A> },
): ImmortalListener<A>;
/** Starts accepting immortal sessions; the address type depends on the options. */
export function listen(options: ListenOptions): ImmortalListener<Deno.Addr>;
export function listen(options: ListenOptions = {}): ImmortalListener<Deno.Addr> {
  try {
    return listenOn(options);
  } catch (error) {
    closeRefusedAcceptor(options.acceptor);
    throw error;
  }
}

/**
 * Closes an acceptor given with options that were refused: its listener
 * would have owned it (a relay node's pipe acceptor left open took no
 * other). A failing close is not the news: the refusal is.
 */
export function closeRefusedAcceptor(acceptor: Acceptor | undefined): void {
  try {
    acceptor?.close();
  } catch {
    // See above.
  }
}

function listenOn(options: ListenOptions): ImmortalListener<Deno.Addr> {
  // A relayed acceptor's links pass a third party: see Acceptor.relayed.
  const resolved = resolveOptions(options, { throughRelay: options.acceptor?.relayed === true });
  const keyed = resolved.key !== null;
  const limit = (name: keyof ListenOptions, fallback: number, integer = true): number => {
    const value = options[name] ?? fallback;
    if (typeof value !== "number") {
      throw new TypeError(`${name} must be a number, got ${describeValue(value)}`);
    }
    if (
      !(value >= 1) ||
      (integer && !Number.isInteger(value) && value !== Infinity)
    ) {
      throw new RangeError(
        `${name} must be ${integer ? "an integer" : "a number"} >= 1, got ${value}`,
      );
    }
    return value;
  };
  const limits: ListenerLimits = {
    backlog: limit("backlog", 128),
    maxHandshakes: limit("maxHandshakes", 256),
    maxHandshakesPerSource: limit("maxHandshakesPerSource", 16),
    maxHandshakeRatePerSource: limit("maxHandshakeRatePerSource", 50, false),
    maxSessions: limit("maxSessions", keyed ? Infinity : 256),
    maxSessionsPerSource: limit("maxSessionsPerSource", keyed ? Infinity : 16),
  };
  const where = {
    hostname: options.hostname,
    port: checkPort("port", options.port ?? 0, true),
  };
  const acceptor: Acceptor = options.acceptor ?? (options.tls
    ? new TlsAcceptor({
      ...where,
      ...options.tls,
      // A client without TLS reads this as a refusal with a reason, not as garbage.
      plainReply: encodeFrame({
        type: "reject",
        code: "protocol",
        reason: "this server speaks TLS: connect with TLS",
      }),
    })
    : new TcpAcceptor(where));
  return new Listener(acceptor, resolved, limits);
}

/** The share of all handshake slots that resumes past their source's limits may take. */
const RESUME_ROOM_SHARE = 0.75;
/** How long a resume let in past its source's limits has to finish, ms (a resume is two round trips). */
const ROOM_HANDSHAKE_MS = 2000;

/** How long a link refused as busy may take to be told so before it is closed anyway. */
const BUSY_TELL_MS = 1000;
