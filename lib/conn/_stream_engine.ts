/**
 * The stream engine behind every {@linkcode ImmortalConn}, the same at both
 * ends and on every transport. It owns the byte positions, the replay buffer,
 * the receive queue, acks, FIN and the heartbeats; links come and go under it.
 * It knows nothing of dialing or handshakes: its {@linkcode SessionSide} (the
 * client's redial loop, or the server's resume and reaping) replaces lost
 * links by calling {@linkcode StreamEngine.attach}.
 *
 * Positions: each direction counts bytes from 0. A FIN takes one position
 * after the last byte, so "position `fin + 1` acknowledged" means "the peer
 * has seen the end". An ACK carries the position the peer's *application*
 * has consumed: that frees the replay buffer and, because the sender never
 * has more unacknowledged than its window (at most the receive window the
 * peer announced), also bounds the receiver's queue — so the read loop never has to stop reading, and heartbeats always
 * get through even when the application does not read.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import {
  encodeFrameInto,
  type Frame,
  FRAME_HEADER_SIZE,
  FrameCode,
  FrameError,
  writeFrameHeader,
} from "../frame/mod.ts";
import { describePeer, formatAddr, type Link, TcpLink } from "../link/mod.ts";
import { localAddressGone } from "../link/_local_addresses.ts";
import { describeValue, errorMessage, peerText } from "../_util.ts";
import { ChunkQueue } from "../_chunk_queue.ts";
import { LogLimiter } from "../_log_limiter.ts";
import { BusyReads } from "../_busy_reads.ts";
import { APPLICATION_CLOSE, closedByPeer, ImmortalError } from "./errors.ts";
import {
  ClosedEvent,
  type ConnState,
  type ConnStats,
  ReconnectingEvent,
  ResumedEvent,
} from "./events.ts";
import { type FrameReader, READ_BUFFER_SIZE } from "./_frame_reader.ts";
import type { ImmortalConn } from "./immortal_conn.ts";
import type { ResolvedOptions } from "./_options.ts";
import { ReadBuffers } from "./_read_buffers.ts";
import { ReplayBuffer } from "./_replay_buffer.ts";
import { SendWindow } from "./_send_window.ts";

const log = getLogger(["immortal", "conn"]);

/**
 * The send buffer holds control frames and a small data frame; larger data
 * goes out straight from the replay ring (see `ZERO_COPY_MIN`).
 */
const SEND_BUFFER_SIZE = 64 * 1024;
/** Room kept in the send buffer for control frames ahead of the data frame. */
const CONTROL_ROOM = 4096;
/**
 * A data frame at least this large goes out as its own write, straight from
 * the replay ring, instead of being copied into the send buffer: one more
 * syscall, one copy of the payload less.
 */
const ZERO_COPY_MIN = 32 * 1024;
/** Most payload one data frame carries (the peer's decoder limit is 1 MiB). */
const MAX_DATA_FRAME = 1024 * 1024;
/** More pings than this in a second end the session (PROTOCOL.md 1.12): ten times the fastest heartbeat's. */
const MAX_PINGS_PER_SECOND = 1000;
/** On a busy link, a ping still goes out every this many heartbeat intervals (for the RTT). */
const RTT_REFRESH_BEATS = 10;
/** A session being closed gets this long to flush its last frame. */
const FLUSH_TIMEOUT_MS = 1000;
/** A received piece smaller than this is copied behind the last small one, not queued alone. */
const SMALL_PIECE = 4096;
/** What small pieces are copied into. */
const SMALL_BUFFER = 16 * 1024;
/**
 * Buffers of small pieces: what `readable` hands out of them is a copy (an
 * application may keep a chunk, which would pin the whole buffer).
 */
const smallBuffers = new WeakSet<ArrayBufferLike>();
/**
 * The send window never shrinks below this (or the most both ends allow):
 * enough to fill loopback and LAN paths from the first byte, and four times
 * the ack threshold, so a bulk sender never waits for a delayed ack.
 */
const WINDOW_FLOOR = 4 << 20;
/** Read buffers lent to the receive queue whatever it holds (see `ReadBuffers`): 2 MiB. */
const MIN_LENT_READ_BUFFERS = 8;

/** What differs between the two ends of a session: how a lost link is replaced, and when the session is forgotten. */
export interface SessionSide {
  /**
   * The link was lost while the session lives. The client redials; the
   * server waits for the client to resume, and reaps the session if it does
   * not. Either ends the engine with {@linkcode StreamEngine.fail} when it
   * gives up.
   */
  linkLost(reason: string): void;
  /** The current link carried a frame after its handshake: it works. */
  linkProven(): void;
  /** Both directions ended and were acknowledged. */
  completed(): void;
  /** The engine is over: timers gone, link closed, `closed` settled. */
  ended(): void;
}

/**
 * Where the engine is in its life. One field instead of a handful of flags:
 * - `open`: the streams run (with or without a link under them);
 * - `complete`: both directions ended and were acknowledged; the server
 *   keeps the session resumable until the client's bye (in case our last ack
 *   was lost with the link);
 * - `closing`: a last frame (bye, or close with a reason) is being flushed,
 *   then the link is closed;
 * - `ended`: nothing is left: timers are gone, the link is closed.
 */
type Phase = "open" | "complete" | "closing" | "ended";

/**
 * The peer's window never exceeds our receive window or its own maximum
 * (which it announced as its receive window), nor starts above the floor:
 * acking at a quarter of the smallest keeps a bulk sender from ever waiting
 * for the delayed-ack timer.
 */
function ackThreshold(ownMax: number, peerWindow: number): number {
  return Math.min(WINDOW_FLOOR, ownMax, peerWindow) >> 2;
}

/** What a send loop writes after its buffer: a data payload straight from the replay ring. */
interface Outgoing {
  payload: Uint8Array | null;
}

/** How a failed or aborted session ended. */
interface Ending {
  error: Error;
  /** A local close or an agreed end: `closed` resolves instead of rejecting. */
  clean: boolean;
}

/** Settings of a {@linkcode StreamEngine}. */
export interface StreamEngineInit {
  role: "client" | "server";
  options: ResolvedOptions;
  /** Hex id of the session, for logs and {@linkcode ImmortalConn.sessionId}. */
  sessionId: string;
  side: SessionSide;
  /** The peer's receive window from the handshake: never have more unacknowledged. */
  peerWindow: number;
}

/** The transport-agnostic byte stream of one session; see the module doc. */
export class StreamEngine extends EventTarget implements ImmortalConn {
  readonly readable: ReadableStream<Uint8Array<ArrayBuffer>>;
  readonly writable: WritableStream<Uint8Array>;
  readonly closed: Promise<void>;
  readonly sessionId: string;

  #role: "client" | "server";
  #opts: ResolvedOptions;
  #side: SessionSide;

  #link: Link | null = null;
  #lastLink: Link | null = null;
  #state: ConnState = "connected";
  #phase: Phase = "open";
  /** Set once the session failed or was aborted: no data moves any more. */
  #ending: Ending | null = null;
  #resolveClosed!: () => void;
  #rejectClosed!: (error: Error) => void;

  // Sending: [acked, replay.end) is held; [sendPos, replay.end) is not yet on this link.
  #replay: ReplayBuffer;
  #window: SendWindow;
  /** Consumed bytes that trigger an ack at once: a quarter of the smallest window the peer may use. */
  #ackThreshold: number;
  #sendPos = 0;
  #highestSent = 0;
  #acked = 0;
  #finPos: number | null = null;
  #control: Frame[] = [];
  /** Stamp of the ping to answer, if any (one slot: see the ping case). */
  #pendingPong: number | null = null;
  /** When the link in use was attached: a pong of a ping sent before is an earlier link's. */
  #attachedAt = -Infinity;
  #wakeSender: (() => void) | null = null;
  #roomWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];

  // Receiving: bytes [consumed, recvPos) wait in the queue for the application.
  #recvPos = 0;
  #consumed = 0;
  #ackSent = 0;
  #ackForced = false;
  #peerFin: number | null = null;
  #queue = new ChunkQueue();
  /** The buffer small pieces are queued in, and how much of it is used. */
  #small: Uint8Array | null = null;
  #smallUsed = 0;
  #queued = 0;
  /** Readers (`read` without a parked buffer, or `readable`) waiting for bytes. */
  #readerWaiters: (() => void)[] = [];
  /** Link read buffers that queued payloads are views into. */
  #readBuffers = new ReadBuffers(READ_BUFFER_SIZE, MIN_LENT_READ_BUFFERS);
  /** A `read` waiting with its buffer while the queue is empty. */
  #parked: { buffer: Uint8Array; resolve: (n: number) => void } | null = null;

  // Timing.
  #lastInbound = 0;
  #lastPing = -Infinity;
  #lastOutbound = -Infinity;
  #lostAt = 0;
  /** Pings heard since `#pingsSince` (within a second). */
  #pings = 0;
  #pingsSince = -Infinity;
  #tickTimer: ReturnType<typeof setTimeout> | undefined;
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  #abort = new AbortController();

  // Counters.
  #bytesWritten = 0;
  #bytesRead = 0;
  #reconnects = 0;
  #replayedBytes = 0;
  #rttMs: number | null = null;
  /**
   * Losses and resumes of links, said once per kind per interval and
   * counted beyond: a link that breaks every second (a proxy cutting each
   * connection after a moment) wrote two lines a second for as long as it
   * lasted. Made at the first loss: most sessions never have one.
   */
  #linkNews: { warn: LogLimiter; info: LogLimiter } | null = null;

  /** A session with no link yet: its side attaches the first one. */
  constructor(init: StreamEngineInit) {
    super();
    this.#role = init.role;
    this.#opts = init.options;
    this.#side = init.side;
    this.sessionId = init.sessionId;
    const max = init.options.maxUnackedBytes;
    this.#ackThreshold = ackThreshold(max, init.peerWindow);
    this.#replay = new ReplayBuffer(max);
    this.#window = new SendWindow(WINDOW_FLOOR, Math.min(max, init.peerWindow));
    this.closed = new Promise<void>((resolve, reject) => {
      this.#resolveClosed = resolve;
      this.#rejectClosed = reject;
    });
    // A session that fails with nobody awaiting `closed` must not crash the process.
    this.closed.catch(() => {});
    this.readable = new ReadableStream<Uint8Array<ArrayBuffer>>({
      pull: async (controller) => {
        const chunk = await this.#next((view) =>
          this.#readBuffers.lent(view) || smallBuffers.has(view.buffer) ? view.slice() : view
        );
        if (chunk === null) controller.close();
        // Typed as Deno.Conn's chunks are: ours are views of our own
        // ArrayBuffers (never shared), so `crypto.subtle.digest`, `Blob`
        // and code written for a Deno.Conn take them without a cast.
        else controller.enqueue(chunk as Uint8Array<ArrayBuffer>);
      },
      // A reader that stops (a `break` out of `for await`) ends the session,
      // as cancelling a Deno.Conn's readable closes it: otherwise nobody
      // reads, the peer's window fills, and its writes wait for ever.
      cancel: () => this.close("the reader stopped reading"),
    }, { highWaterMark: 0 });
    this.writable = new WritableStream<Uint8Array>({
      write: async (chunk) => {
        await this.write(chunk);
      },
      close: () => this.closeWrite(),
      // Aborting the writable aborts the session; the peer is told the reason.
      abort: (reason) => this.close(reason === undefined ? undefined : errorMessage(reason)),
    });
    const { heartbeatInterval, deadLinkTimeout } = this.#opts;
    this.#tickTimer = setInterval(
      () => this.#onTick(),
      Math.max(5, Math.min(heartbeatInterval, deadLinkTimeout) / 4),
    );
  }

  get state(): ConnState {
    return this.#state;
  }

  get localAddr(): Deno.Addr | undefined {
    return this.#lastLink?.localAddr;
  }

  get remoteAddr(): Deno.Addr | undefined {
    return this.#lastLink?.remoteAddr;
  }

  get peer(): string {
    return describePeer(this.#lastLink ?? {});
  }

  get stats(): ConnStats {
    return {
      state: this.#state,
      bytesWritten: this.#bytesWritten,
      bytesRead: this.#bytesRead,
      unackedBytes: this.#replay.end - this.#replay.start,
      windowBytes: this.#window.limit,
      bufferedBytes: this.#queued,
      reconnects: this.#reconnects,
      replayedBytes: this.#replayedBytes,
      rttMs: this.#rttMs,
    };
  }

  // ---------------------------------------------------------------- for the side

  /** Bytes received so far: what a resume tells the peer. */
  get received(): number {
    return this.#recvPos;
  }

  /** When the last link was lost (`performance.now()` time). */
  get lostAt(): number {
    return this.#lostAt;
  }

  /** A link is under the session now. */
  get linked(): boolean {
    return this.#link !== null;
  }

  /** Both directions ended and were acknowledged. */
  get complete(): boolean {
    return this.#phase === "complete";
  }

  /**
   * A client's session is complete and only its bye is left to say: nothing
   * of the application's is at stake any more.
   */
  get sayingBye(): boolean {
    return this.#role === "client" && this.#phase === "closing" && this.#ending === null;
  }

  /**
   * Can still take a new link: not failed, not over. A client whose session
   * completed while it had no link is still `closing`: its bye goes out on
   * the next link.
   */
  get resumable(): boolean {
    return this.#ending === null && this.#phase !== "ended";
  }

  /** Aborted when the engine ends: stops whatever its side is waiting for. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  // ---------------------------------------------------------------- application side

  async read(buffer: Uint8Array): Promise<number | null> {
    if (buffer.length === 0) return 0;
    if (
      this.#queued === 0 && this.#peerFin === null && this.#ending === null && this.#parked === null
    ) {
      // Nothing to hand out: the next data frame lands straight in `buffer`
      // (one copy instead of two). 0 means "woken without data: look again".
      const n = await new Promise<number>((resolve) => this.#parked = { buffer, resolve });
      if (n > 0) return n;
    }
    return this.#next((view) => {
      buffer.set(view);
      return view.length;
    }, buffer.length);
  }

  async write(data: Uint8Array): Promise<number> {
    if (!(data instanceof Uint8Array)) {
      // Deno.Conn refuses them too; an ArrayBuffer has no `length`, and would
      // have "written" nothing.
      throw new TypeError(`write takes a Uint8Array, got ${describeValue(data)}`);
    }
    let offset = 0;
    while (offset < data.length) {
      this.#assertWritable();
      const room = this.#window.limit - (this.#replay.end - this.#replay.start);
      const n = room > 0 ? this.#replay.append(data.subarray(offset, offset + room)) : 0;
      if (n > 0) {
        offset += n;
        this.#bytesWritten += n;
        this.#kick();
        continue;
      }
      await new Promise<void>((resolve, reject) => this.#roomWaiters.push({ resolve, reject }));
    }
    return data.length;
  }

  /**
   * Hands the next received bytes to `use` as they lie in the link's read
   * buffer, sparing the copy a `read` makes; `null` at the end of the stream.
   * `use` must copy what it keeps, synchronously (see `#next`).
   */
  readWith<T>(use: (view: Uint8Array) => T): Promise<T | null> {
    return this.#next(use);
  }

  /**
   * Appends all of `parts` at once if the window has room for all of them,
   * else nothing: false. Synchronous, so a writer that frames its own
   * messages (the multiplexer) can write a header and its payload with no
   * await in between and no copy into one buffer first. Throws as `write`
   * does when the stream cannot be written.
   */
  tryWrite(parts: readonly Uint8Array[]): boolean {
    this.#assertWritable();
    let length = 0;
    for (const part of parts) length += part.length;
    if (length > this.#window.limit - (this.#replay.end - this.#replay.start)) return false;
    for (const part of parts) this.#replay.append(part);
    this.#bytesWritten += length;
    this.#kick();
    return true;
  }

  async flush(): Promise<void> {
    // Positions written so far; the peer acknowledges what its application read.
    const written = this.#replay.end;
    while (this.#acked < written) {
      if (this.#ending !== null) throw this.#ending.error;
      await new Promise<void>((resolve, reject) => this.#roomWaiters.push({ resolve, reject }));
    }
  }

  // deno-lint-ignore require-await -- async so that a refusal rejects rather than throws
  async closeWrite(): Promise<void> {
    if (this.#finPos === null) {
      this.#assertWritable();
      this.#finPos = this.#replay.end;
      this.#kick();
    }
  }

  close(reason: string = APPLICATION_CLOSE): void {
    if (this.#ending !== null || this.#phase === "ended") return;
    if (this.#phase !== "open") {
      // Both directions are done: there is nothing to abort, and a close
      // frame now would turn a complete exchange into an abort at the peer.
      // A client's bye is on its way, or a link for it (the closing's time
      // bounds both): given up, the server would keep the session until
      // its resume timeout and end it as timed out. A server keeps a
      // complete session for that bye: its last ack may have been lost with
      // the link, and the client resumes for it (hanging up, it answered
      // that resume "unknown session"); the bye, or the reaper, ends it.
      return;
    }
    const own = reason === APPLICATION_CLOSE ? "" : `: ${reason}`;
    log.info("Session {id} closed locally{own}", { id: this.sessionId, own });
    this.fail(new ImmortalError("closed", `the connection was closed${own}`), reason, {
      clean: true,
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.closed.catch(() => {});
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #assertWritable(): void {
    if (this.#ending !== null) throw this.#ending.error;
    if (this.#finPos !== null) throw new ImmortalError("closed", "the writable side was closed");
  }

  /**
   * Hands the next received bytes (at most `max`) to `use`, or returns `null`
   * once the peer's FIN is reached. The bytes may be a view into a link's read
   * buffer: `use` must copy what it keeps, synchronously, because the buffer
   * may be read into again as soon as it returns (a link read can complete at
   * once when it is issued, before any awaiting continuation runs).
   */
  async #next<T>(use: (view: Uint8Array) => T, max = Infinity): Promise<T | null> {
    for (;;) {
      if (this.#queued > 0) {
        const whole = this.#queue.first;
        let view = whole;
        if (whole.length > max) {
          this.#queue.first = whole.subarray(max);
          view = whole.subarray(0, max);
        } else {
          this.#queue.shift();
        }
        this.#queued -= view.length;
        this.#consume(view.length);
        try {
          return use(view);
        } finally {
          if (view === whole) this.#readBuffers.drop(whole);
        }
      }
      if (this.#peerFin !== null) {
        this.#consumeFin();
        return null;
      }
      if (this.#ending !== null) throw this.#ending.error;
      await new Promise<void>((resolve) => this.#readerWaiters.push(resolve));
    }
  }

  #consume(n: number): void {
    this.#consumed += n;
    this.#bytesRead += n;
    // Ack at once when a quarter of the smallest window the peer can have is
    // consumed, so a sender never waits for an ack. Smaller amounts ride on
    // the next frame we send (a reply, say), or go out on the next heartbeat
    // tick: no timer per read, and no lone ack frame waking the peer between
    // a request and its response.
    if (this.#consumed - this.#ackSent >= this.#ackThreshold) this.#kick();
  }

  #consumeFin(): void {
    const end = this.#peerFin! + 1;
    if (this.#consumed === end) return;
    this.#consumed = end;
    this.#ackForced = true;
    this.#kick();
    this.#checkComplete();
  }

  // ---------------------------------------------------------------- links

  /**
   * Whether a resume position is below what the peer has acknowledged: an
   * attempt it gave up on, overtaken (a live peer never claims less).
   */
  resumeBehind(peerReceived: number): boolean {
    return peerReceived < this.#acked;
  }

  /**
   * Why a peer that says it has received `peerReceived` positions cannot
   * resume from there (it acknowledged more, or claims what was never sent:
   * the bytes between are lost or invented), or null if it can.
   */
  resumePositionError(peerReceived: number): ImmortalError | null {
    if (peerReceived >= this.#acked && peerReceived <= this.#highestSent) return null;
    return new ImmortalError(
      "protocol",
      `peer claims to have received ${peerReceived} bytes, outside [${this.#acked}, ${this.#highestSent}]`,
    );
  }

  /**
   * Puts a link (handshake done) under the session; the peer has received
   * `peerReceived` bytes, so sending resumes from there, and announced
   * `peerWindow` as its receive window. The first link opens the session;
   * every later one is a resume.
   */
  attach(reader: FrameReader, peerReceived: number, peerWindow: number): void {
    const sentEnd = this.#highestSent;
    const wrong = this.resumePositionError(peerReceived);
    if (wrong !== null) {
      this.fail(wrong, "resume position out of range");
      reader.link.close();
      return;
    }
    const first = this.#lastLink === null;
    const replayed = Math.max(0, Math.min(sentEnd, this.#replay.end) - peerReceived);
    this.#replayedBytes += replayed;
    this.#window.setMax(Math.min(this.#opts.maxUnackedBytes, peerWindow));
    this.#ackThreshold = ackThreshold(this.#opts.maxUnackedBytes, peerWindow);
    this.#window.reset();
    this.#sendPos = peerReceived;
    this.#ackForced = true;
    this.#link = reader.link;
    this.#lastLink = reader.link;
    this.#lastInbound = performance.now();
    this.#lastPing = -Infinity;
    // A ping queued while the dead link's write was stuck, or a pong owed on
    // it, would measure the outage as a round trip (and the client paces its
    // redials by the RTT): this link starts its own.
    this.#attachedAt = this.#lastInbound;
    this.#control = this.#control.filter((frame) => frame.type !== "ping");
    this.#pendingPong = null;
    // A client that completed without a link says its bye on this one: within the closing's time.
    if (this.#phase === "closing") this.#closingFrom();
    this.#sendLoop(reader.link);
    this.#readLoop(reader);
    const remote = describePeer(reader.link);
    if (first) {
      log.info("Session {id} opened as {role} with {remote}", {
        id: this.sessionId,
        role: this.#role,
        remote,
      });
      return;
    }
    const downtimeMs = Math.round(performance.now() - this.#lostAt);
    if (this.#phase === "closing") {
      // A link for the bye only: the application heard `closed` already,
      // and no resume of its connection.
      log.debug("Session {id}: a link to say bye on, after {downtimeMs} ms", {
        id: this.sessionId,
        downtimeMs,
      });
      return;
    }
    this.#reconnects++;
    this.#news().info.event(
      "resumed",
      "Session {id} resumed after {downtimeMs} ms via {remote}, {replayed} bytes replayed",
      { id: this.sessionId, downtimeMs, remote, replayed },
    );
    if (this.#phase === "open") this.#state = "connected";
    this.dispatchEvent(new ResumedEvent(downtimeMs, replayed));
  }

  /**
   * Drops the current link (if any) as lost: the side gets or awaits
   * another. `news` is how loud the loss is said: a link replaced by the
   * peer (it resumed on a new one) is `info`, the peer's side told of the
   * fault already.
   */
  dropLink(reason: string, news: "warn" | "info" = "warn"): void {
    if (this.#link !== null) this.#linkFailed(this.#link, reason, { news });
  }

  /**
   * The link failed in any way: drop it and let the side replace it.
   * `hungUp`: the peer closed it (an end of stream, not an error).
   */
  #linkFailed(
    link: Link,
    reason: string,
    { news = "warn", hungUp = false }: { news?: "warn" | "info"; hungUp?: boolean } = {},
  ): void {
    if (link !== this.#link) return;
    this.#link = null;
    link.close();
    this.#kick();
    if (this.#phase === "closing") {
      // A server answers a bye by hanging up. A link that broke instead (a
      // reset, a failed write) may have lost the bye, and the server would
      // wait its resume timeout for it, then reject its `closed`: the
      // client resumes to say it again, within the closing's time (a server
      // that had it answers "unknown session", which ends this one cleanly).
      if (hungUp || !this.sayingBye) {
        this.#end();
        return;
      }
      if (!this.#control.some((frame) => frame.type === "bye")) {
        this.#control.push({ type: "bye" });
      }
    }
    if (!this.resumable) return;
    this.#lostAt = performance.now();
    this.#side.linkLost(reason);
    if (!this.resumable) return;
    if (this.#phase === "closing") {
      log.debug("Session {id} lost its link before its bye was answered: {reason}", {
        id: this.sessionId,
        reason,
      });
      return;
    }
    this.#news()[news].event(`lost ${news}`, "Session {id} lost its link: {reason}", {
      id: this.sessionId,
      reason,
    });
    if (this.#phase === "open") {
      this.#state = "reconnecting";
      this.dispatchEvent(new ReconnectingEvent(reason));
    }
  }

  // ---------------------------------------------------------------- send loop

  #kick(): void {
    const wake = this.#wakeSender;
    if (wake) {
      this.#wakeSender = null;
      wake();
    }
  }

  /**
   * The only writer of a link: control frames first, then data, batched into
   * one write; a large data payload follows in a second write straight from
   * the replay ring.
   */
  async #sendLoop(link: Link): Promise<void> {
    const buffer = new Uint8Array(SEND_BUFFER_SIZE);
    // This loop's own slot: a loop of a replaced link may still be finishing
    // a write (closing a socket does not cancel its pending writes), and must
    // never pick up a payload meant for the new link's frame.
    const out: Outgoing = { payload: null };
    try {
      while (this.#link === link) {
        const n = this.#fill(buffer, out);
        if (n > 0) {
          await link.write(buffer.subarray(0, n));
          const payload = out.payload;
          if (payload !== null) {
            out.payload = null;
            await link.write(payload);
          }
          this.#lastOutbound = performance.now();
          continue;
        }
        if (this.#phase === "closing") {
          // Everything is sent: hang up only our half (where the link can),
          // and let the read loop see the peer hang up (it does, on our close
          // or bye), within the flush time. Closed whole at once, a socket
          // with frames unread (acks on their way, say) is reset, and a reset
          // can destroy the close or bye on its way to the peer, which then
          // resumed, for nothing, until its resume timeout; an HTTP link's
          // last POST could be cut by the program exiting.
          // The flush time started as the phase began (#closingFrom): a
          // half-close that waits (an HTTP link's, for its POSTs' answers)
          // is bounded by it too.
          this.#closingFrom();
          await link.closeWrite?.();
          return;
        }
        await new Promise<void>((resolve) => this.#wakeSender = resolve);
      }
    } catch (error) {
      this.#linkFailed(link, `send failed: ${errorMessage(error)}`);
    }
  }

  #fill(buffer: Uint8Array, out: Outgoing): number {
    out.payload = null;
    let n = 0;
    const live = this.#ending === null;
    if (live && (this.#consumed > this.#ackSent || this.#ackForced) && this.#ackGoes()) {
      n += encodeFrameInto({ type: "ack", position: this.#consumed }, buffer, n);
      this.#ackSent = this.#consumed;
      this.#ackForced = false;
    }
    if (this.#pendingPong !== null) {
      n += encodeFrameInto({ type: "pong", stamp: this.#pendingPong }, buffer, n);
      this.#pendingPong = null;
    }
    while (this.#control.length > 0 && n < CONTROL_ROOM) {
      n += encodeFrameInto(this.#control.shift()!, buffer, n);
    }
    if (!live) return n;
    const end = this.#replay.end;
    if (this.#sendPos < end) {
      const inBuffer = buffer.length - n - FRAME_HEADER_SIZE;
      let length: number;
      const view = end - this.#sendPos >= ZERO_COPY_MIN
        ? this.#replay.view(this.#sendPos, MAX_DATA_FRAME)
        : null;
      // A view cut short by the ring's wrap is copied: not worth a syscall of its own.
      if (view !== null && view.length >= ZERO_COPY_MIN) {
        out.payload = view;
        length = view.length;
        writeFrameHeader(buffer, n, FrameCode.data, length);
        n += FRAME_HEADER_SIZE;
      } else {
        length = Math.min(end - this.#sendPos, inBuffer);
        writeFrameHeader(buffer, n, FrameCode.data, length);
        this.#replay.copyOut(this.#sendPos, buffer, n + FRAME_HEADER_SIZE, length);
        n += FRAME_HEADER_SIZE + length;
      }
      this.#sendPos += length;
      this.#window.sent(this.#sendPos, performance.now());
    } else if (this.#finPos !== null && this.#sendPos === this.#finPos) {
      n += encodeFrameInto({ type: "fin", position: this.#finPos }, buffer, n);
      this.#sendPos++;
    }
    if (this.#sendPos > this.#highestSent) this.#highestSent = this.#sendPos;
    return n;
  }

  /**
   * Whether an ack goes in the frames being filled: always when it is due (a
   * quarter of the peer's window consumed, a heartbeat tick, a new link, the
   * peer's FIN), else only riding on something else that goes anyway. A send
   * loop that acked whatever was consumed each time its last write completed
   * wrote one 13-byte ack per link read of a bulk stream: as many syscalls as
   * the data itself took, for nothing the peer needed.
   */
  #ackGoes(): boolean {
    if (this.#ackForced || this.#consumed - this.#ackSent >= this.#ackThreshold) return true;
    if (this.#pendingPong !== null || this.#control.length > 0) return true;
    return this.#sendPos < this.#replay.end ||
      (this.#finPos !== null && this.#sendPos === this.#finPos);
  }

  // ---------------------------------------------------------------- receive loop

  async #readLoop(reader: FrameReader): Promise<void> {
    const link = reader.link;
    let proven = false;
    // A flood of tiny frames (pings are outside flow control) kept the
    // event loop for this link alone: other clients' handshakes took seconds.
    const busy = new BusyReads();
    try {
      while (this.#link === link) {
        const frames = await reader.nextBatch();
        if (this.#link !== link) return;
        if (frames === null) {
          this.#linkFailed(link, "the link was closed by the other side", { hungUp: true });
          return;
        }
        this.#lastInbound = performance.now();
        if (!proven) {
          proven = true;
          this.#side.linkProven();
        }
        for (const frame of frames) {
          this.#onFrame(frame);
          if (this.#link !== link) return;
        }
        const buffers = this.#readBuffers;
        reader.afterBatch(buffers.lent(reader.buffer), (old) => buffers.replace(old));
        if (busy.due()) await busy.turn();
      }
    } catch (error) {
      if (error instanceof ImmortalError) {
        log.error("Session {id}: {reason}", { id: this.sessionId, reason: error.message });
        this.fail(error, `protocol error: ${error.message}`);
      } else if (error instanceof FrameError) {
        // Garbage on one link (a broken middlebox, say) is a link failure: the
        // replay on the next link repairs whatever it cost.
        this.#linkFailed(link, `bad frame: ${error.message}`);
      } else {
        // A TLS peer that closes without close_notify (ours, on a bye:
        // node:tls closes so) ends the stream so: it hung up, as with an
        // end of stream, and a client saying bye need not resume for it.
        this.#linkFailed(link, `receive failed: ${errorMessage(error)}`, {
          hungUp: error instanceof Deno.errors.UnexpectedEof,
        });
      }
    }
  }

  /**
   * Queues a small piece behind the last one, in a buffer of small pieces,
   * when it is the last thing queued and there is room; else starts a chunk
   * there (a new buffer when that one is full).
   */
  #queueSmall(piece: Uint8Array): void {
    // Nothing queued: nothing refers to the buffer any more (what was taken
    // of it was copied), so it is filled again from its start.
    if (this.#queued === 0) this.#smallUsed = 0;
    let small = this.#small;
    const last = this.#queue.last;
    const end = this.#smallUsed + piece.length;
    if (small !== null && end <= small.length) {
      small.set(piece, this.#smallUsed);
      if (
        last !== undefined && last.buffer === small.buffer &&
        last.byteOffset + last.length === this.#smallUsed
      ) {
        this.#queue.last = small.subarray(last.byteOffset, end);
      } else {
        this.#queue.push(small.subarray(this.#smallUsed, end));
      }
      this.#smallUsed = end;
      return;
    }
    small = this.#small = new Uint8Array(SMALL_BUFFER);
    smallBuffers.add(small.buffer);
    small.set(piece);
    this.#queue.push(small.subarray(0, piece.length));
    this.#smallUsed = piece.length;
  }

  #onFrame(frame: Frame): void {
    if (this.#ending !== null) return;
    switch (frame.type) {
      case "data": {
        if (this.#peerFin !== null) {
          throw new ImmortalError("protocol", "data after the end of stream");
        }
        // We announced this cap; a peer that sends past it ignores flow control.
        const cap = this.#opts.maxUnackedBytes;
        if (this.#queued + frame.data.length > cap) {
          throw new ImmortalError(
            "protocol",
            `the peer sent ${
              this.#queued + frame.data.length - cap
            } bytes past the receive window of ${cap} bytes`,
          );
        }
        this.#recvPos += frame.data.length;
        const parked = this.#parked;
        let taken = 0;
        if (parked !== null) {
          this.#parked = null;
          taken = Math.min(frame.data.length, parked.buffer.length);
          parked.buffer.set(frame.data.subarray(0, taken));
          this.#consume(taken);
          parked.resolve(taken);
          if (taken === frame.data.length) return;
        }
        // The frame is a view into the link's read buffer: queue the view if
        // that buffer can be lent (the link then reads into another), else a
        // copy. A small one is copied behind the last small one: a chunk per
        // frame cost ~170 bytes of memory per byte of a peer's 1-byte frames.
        const rest = frame.data.subarray(taken);
        if (rest.length < SMALL_PIECE) this.#queueSmall(rest);
        else this.#queue.push(this.#readBuffers.hold(rest, this.#queued) ? rest : rest.slice());
        this.#queued += rest.length;
        this.#wakeReaderNow();
        return;
      }
      case "ack":
        return this.#onAck(frame.position);
      case "ping": {
        // Pings are outside flow control: a flood of them (millions a
        // second, 13 bytes each) cost a core. The fastest honest peer pings
        // 100 times a second (a 10 ms heartbeat).
        const now = performance.now();
        if (now - this.#pingsSince >= 1000) {
          this.#pingsSince = now;
          this.#pings = 0;
        }
        if (++this.#pings > MAX_PINGS_PER_SECOND) {
          throw new ImmortalError(
            "protocol",
            `the peer sent more than ${MAX_PINGS_PER_SECOND} pings in a second`,
          );
        }
        // One pending pong at most (the newest stamp): a peer that floods
        // pings without reading cannot grow our control queue. Nothing is
        // sent after a bye.
        if (this.#phase === "closing") return;
        this.#pendingPong = frame.stamp;
        this.#kick();
        return;
      }
      case "pong": {
        const now = performance.now();
        const rtt = now - frame.stamp;
        // The stamp is ours only if the peer is honest: ignore what cannot be
        // a round trip, or was one of an earlier link's.
        if (!(rtt >= 0 && rtt < 60_000) || frame.stamp < this.#attachedAt) return;
        this.#rttMs = rtt;
        this.#window.rtt(rtt, now);
        return;
      }
      case "fin":
        if (this.#peerFin !== null || frame.position !== this.#recvPos) {
          throw new ImmortalError(
            "protocol",
            `end of stream at ${frame.position}, expected ${this.#recvPos}`,
          );
        }
        this.#peerFin = frame.position;
        this.#recvPos++;
        this.#wakeReaderNow();
        return;
      case "close":
        log.info("Session {id} aborted by the peer: {reason}", {
          id: this.sessionId,
          reason: peerText(frame.reason),
        });
        this.fail(
          new ImmortalError(
            "aborted",
            `the peer aborted the connection: ${peerText(frame.reason)}`,
          ),
          null,
        );
        return;
      case "bye":
        if (this.#role !== "server") throw new ImmortalError("protocol", "bye sent to a client");
        if (this.#phase === "open") {
          throw new ImmortalError("protocol", "bye before both directions were complete");
        }
        this.fail(null, null);
        return;
      default:
        throw new ImmortalError("protocol", `unexpected ${frame.type} frame in a running session`);
    }
  }

  #onAck(position: number): void {
    if (position > this.#highestSent) {
      throw new ImmortalError(
        "protocol",
        `ack of ${position} beyond the ${this.#highestSent} bytes sent`,
      );
    }
    if (position <= this.#acked) return;
    this.#acked = position;
    this.#replay.release(position);
    this.#window.acked(position, performance.now());
    const waiters = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const waiter of waiters) waiter.resolve();
    this.#checkComplete();
  }

  #wakeReaderNow(): void {
    if (this.#readerWaiters.length > 0) {
      const waiters = this.#readerWaiters;
      this.#readerWaiters = [];
      for (const wake of waiters) wake();
    }
    const parked = this.#parked;
    if (parked) {
      this.#parked = null;
      parked.resolve(0);
    }
  }

  // ---------------------------------------------------------------- heartbeats

  #onTick(): void {
    this.#readBuffers.trim();
    // An idle session holds no buffer of small pieces (10,000 tunnel
    // sessions would hold 160 MiB): the next small piece makes a new one.
    if (this.#queued === 0) this.#small = null;
    const link = this.#link;
    if (link === null || this.#phase === "closing") return;
    // What the application consumed since the last ack, if nothing carried it yet.
    if (this.#consumed > this.#ackSent) {
      this.#ackForced = true;
      this.#kick();
    }
    const now = performance.now();
    if (now - this.#lastInbound > this.#opts.deadLinkTimeout) {
      this.#linkFailed(link, `nothing received for ${Math.round(now - this.#lastInbound)} ms`);
      return;
    }
    // Only the client can act on a lost address: it dials again from the new one.
    if (
      this.#role === "client" && link instanceof TcpLink && localAddressGone(link.localAddr, now)
    ) {
      this.#linkFailed(link, `the local address ${formatAddr(link.localAddr)} is gone`);
      return;
    }
    // Ping when the link has been quiet outbound (the peer needs to hear
    // something), and now and then anyway to refresh the RTT. Not pinging a
    // busy link also keeps small extra writes off it: where TCP_NODELAY cannot
    // be set (Deno.listenTls), such a write can wait for a delayed ACK.
    const interval = this.#opts.heartbeatInterval;
    if (
      now - this.#lastOutbound >= interval || now - this.#lastPing >= interval * RTT_REFRESH_BEATS
    ) {
      this.#lastPing = now;
      // A write blocked on a full socket leaves lastOutbound old: one queued ping is enough.
      if (!this.#control.some((frame) => frame.type === "ping")) {
        this.#control.push({ type: "ping", stamp: now });
      }
      this.#kick();
    }
  }

  // ---------------------------------------------------------------- endings

  /**
   * The session is closing: its last frames, the half-close and the peer
   * hanging up get `FLUSH_TIMEOUT_MS` (or the dead-link time) in all, from
   * now (set once: a later step does not extend it). Then the link then in
   * use, if any (a client's bye may wait for the next), is given up, and the
   * session ends.
   */
  #closingFrom(): void {
    if (this.#flushTimer !== undefined) return;
    // An HTTP link's half-close waits for its last POST's answer: a link as
    // slow as the dead-link time allows gets that long.
    this.#flushTimer = setTimeout(() => {
      // Time is up, whatever the link is doing: no resume for a bye after it.
      const link = this.#link;
      this.#link = null;
      link?.close();
      this.#kick();
      this.#end();
    }, Math.max(FLUSH_TIMEOUT_MS, this.#opts.deadLinkTimeout));
  }

  #checkComplete(): void {
    if (this.#phase !== "open" || this.#ending !== null) return;
    if (this.#finPos === null || this.#acked !== this.#finPos + 1) return;
    if (this.#peerFin === null || this.#consumed !== this.#peerFin + 1) return;
    this.#phase = "complete";
    this.#state = "closed";
    this.#sayLinkNews();
    log.info("Session {id} completed: {sent} bytes sent, {received} received", {
      id: this.sessionId,
      sent: this.#bytesWritten,
      received: this.#bytesRead,
    });
    // A client says bye first: `closed` resolves once the server has it (the
    // server hangs up on it, or the flush time ran out), so that a program
    // may exit then (an HTTP link's last POST, killed by an exit, left the
    // server waiting for its resume timeout). Without a link, the bye goes on
    // the next one, if one comes within the same time: it kept resuming for
    // the resume timeout, its timers holding a program that awaited `closed`.
    if (this.#role === "client") {
      // Tell the server it may forget the session, then hang up.
      this.#control.push({ type: "bye" });
      this.#phase = "closing";
      this.#closingFrom();
      this.#kick();
    }
    this.#side.completed();
    // Listeners run last, on a settled state: a close() from one of them
    // finds the bye queued and the phase moved on.
    if (this.#role === "server") this.#resolveClosed();
    this.dispatchEvent(new ClosedEvent());
  }

  /**
   * Ends the session. `error` null means an agreed end (bye, or reaping a
   * completed session); `clean` (default: `error` is null) makes `closed`
   * resolve rather than reject. With `tellPeer`, a close frame carrying that
   * reason is flushed first. `said`: whoever ended it logged why (a line
   * more for one event, when sessions are ended by the dozen, is a flood).
   */
  fail(
    error: Error | null,
    tellPeer: string | null,
    { clean = error === null, said = false }: { clean?: boolean; said?: boolean } = {},
  ): void {
    if (this.#ending !== null || this.#phase === "ended") return;
    const ending = {
      error: error ?? new ImmortalError("closed", "the connection was closed"),
      clean,
    };
    this.#ending = ending;
    this.#abort.abort();
    const waiters = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const waiter of waiters) waiter.reject(ending.error);
    this.#wakeReaderNow();
    if (this.#state !== "closed") {
      this.#state = "closed";
      this.#sayLinkNews();
      // The peer's application closing it was logged (at info) as it came.
      if (!clean && !said && !closedByPeer(ending.error)) {
        log.warn("Session {id} ended: {reason}", {
          id: this.sessionId,
          reason: ending.error.message,
        });
      }
      this.dispatchEvent(new ClosedEvent(clean ? undefined : ending.error));
    }
    const link = this.#link;
    if (link !== null && tellPeer !== null) {
      this.#control.push({ type: "close", reason: tellPeer });
      this.#phase = "closing";
      this.#closingFrom();
      this.#kick();
    } else {
      if (link !== null) {
        this.#link = null;
        link.close();
        this.#kick();
      }
      this.#end();
    }
  }

  /** What the link news counted, said now: before the lines of the session's end. */
  #sayLinkNews(): void {
    this.#linkNews?.warn.flush();
    this.#linkNews?.info.flush();
  }

  /** The session's link news, said at most once per kind per interval. */
  #news(): { warn: LogLimiter; info: LogLimiter } {
    return this.#linkNews ??= {
      warn: new LogLimiter((template, properties) => log.warn(template, properties)),
      info: new LogLimiter((template, properties) => log.info(template, properties)),
    };
  }

  /** Final cleanup: timers, the side's bookkeeping, and the `closed` promise. */
  #end(): void {
    if (this.#phase === "ended") return;
    this.#phase = "ended";
    clearInterval(this.#tickTimer);
    clearTimeout(this.#flushTimer);
    this.#sayLinkNews();
    this.#abort.abort();
    this.#side.ended();
    // A completed session resolved `closed` already; settling again is a no-op.
    const ending = this.#ending;
    if (ending === null || ending.clean) this.#resolveClosed();
    else this.#rejectClosed(ending.error);
  }
}
