/**
 * The session engine behind {@linkcode ImmortalConn}, the same for client and
 * server. It owns the byte positions, the replay buffer, the receive queue and
 * the heartbeats; links come and go underneath it.
 *
 * Positions: each direction counts bytes from 0. A FIN takes one position
 * after the last byte, so "position `fin + 1` acknowledged" means "the peer
 * has seen the end". An ACK carries the position the peer's *application*
 * has consumed: that frees the replay buffer and, because the sender never
 * has more than `maxUnackedBytes` unacknowledged, also bounds the receiver's
 * queue — so the read loop never has to stop reading, and heartbeats always
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
import { type Dialer, formatAddr, type Link } from "../link/mod.ts";
import { _backoffDelay } from "./backoff.ts";
import { _dialAndHandshake } from "./dial.ts";
import { _isFatal, ImmortalError } from "./errors.ts";
import { ConnEvent, type ConnState, type ConnStats } from "./events.ts";
import type { _FrameReader } from "./frame_reader.ts";
import { _clientResume, _resumeAccept, _send, type _SessionSecrets } from "./handshake.ts";
import type { ImmortalConn } from "./immortal_conn.ts";
import type { _ResolvedOptions } from "./options.ts";
import { _ReplayBuffer } from "./replay_buffer.ts";

const log = getLogger(["immortal", "conn"]);

/** One write to the link carries at most this much (control frames + one data frame). */
const SEND_BUFFER_SIZE = 256 * 1024;
/** Room kept in the send buffer for control frames ahead of the data frame. */
const CONTROL_ROOM = 4096;
/** An ACK goes out at the latest this long after the application consumed bytes. */
const ACK_DELAY_MS = 10;
/** On a busy link, a ping still goes out every this many heartbeat intervals (for the RTT). */
const RTT_REFRESH_BEATS = 10;
/** A session being closed gets this long to flush its last frame. */
const FLUSH_TIMEOUT_MS = 1000;

function _message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** @internal How a session starts. */
export interface _SessionInit {
  role: "client" | "server";
  options: _ResolvedOptions;
  secrets: _SessionSecrets;
  /** The first link, handshake done. */
  reader: _FrameReader;
  /** Client: makes new links. */
  dialer?: Dialer;
  /** Server: called once the session is over, to drop it from the listener. */
  onForget?: (session: _Session) => void;
}

/** @internal */
export class _Session extends EventTarget implements ImmortalConn {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  readonly closed: Promise<void>;

  #role: "client" | "server";
  #opts: _ResolvedOptions;
  #secrets: _SessionSecrets;
  #dialer?: Dialer;
  #onForget?: (session: _Session) => void;

  #link: Link | null = null;
  #lastLink: Link;
  #state: ConnState = "connected";
  /** Set once the session failed or was aborted: no link will be made again. */
  #dead = false;
  /** Both directions ended and were acknowledged. */
  #complete = false;
  /** Nothing left to do: timers are gone, the link is closed. */
  #finished = false;
  /** The send loop closes the link once its pending control frames are out. */
  #closeAfterFlush = false;
  /** Server whose listener closed: a lost link cannot be replaced. */
  #listenerGone = false;
  /** The application closed the session, or it ended by agreement: `closed` resolves. */
  #clean = false;
  #error: Error | null = null;
  #resolveClosed!: () => void;
  #rejectClosed!: (error: Error) => void;

  // Sending: [acked, replay.end) is held; [sendPos, replay.end) is not yet on this link.
  #replay: _ReplayBuffer;
  #sendPos = 0;
  #highestSent = 0;
  #acked = 0;
  #finPos: number | null = null;
  #control: Frame[] = [];
  #wakeSender: (() => void) | null = null;
  #roomWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];

  // Receiving: bytes [consumed, recvPos) wait in the queue for the application.
  #recvPos = 0;
  #consumed = 0;
  #ackSent = 0;
  #ackForced = false;
  #peerFin: number | null = null;
  #queue: Uint8Array[] = [];
  #queueHead = 0;
  #queued = 0;
  #wakeReader: (() => void) | null = null;

  // Timing.
  #lastInbound = 0;
  #lastPing = -Infinity;
  #lastOutbound = -Infinity;
  #linkUpAt = 0;
  #lostAt = 0;
  #attempt = 0;
  #resumeEpoch = 0;
  #tickTimer: ReturnType<typeof setTimeout> | undefined;
  #ackTimer: ReturnType<typeof setTimeout> | undefined;
  #reapTimer: ReturnType<typeof setTimeout> | undefined;
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  #abort = new AbortController();

  // Counters.
  #bytesWritten = 0;
  #bytesRead = 0;
  #reconnects = 0;
  #replayedBytes = 0;
  #rttMs: number | null = null;

  constructor(init: _SessionInit) {
    super();
    this.#role = init.role;
    this.#opts = init.options;
    this.#secrets = init.secrets;
    this.#dialer = init.dialer;
    this.#onForget = init.onForget;
    this.#replay = new _ReplayBuffer(init.options.maxUnackedBytes);
    this.#lastLink = init.reader.link;
    this.closed = new Promise<void>((resolve, reject) => {
      this.#resolveClosed = resolve;
      this.#rejectClosed = reject;
    });
    // A session that fails with nobody awaiting `closed` must not crash the process.
    this.closed.catch(() => {});
    this.readable = new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        const chunk = await this.#nextChunk(Infinity);
        if (chunk === null) controller.close();
        else controller.enqueue(chunk);
      },
    }, { highWaterMark: 0 });
    this.writable = new WritableStream<Uint8Array>({
      write: async (chunk) => {
        await this.write(chunk);
      },
      close: () => this.closeWrite(),
      abort: () => this.close(),
    });
    const { heartbeatInterval, deadLinkTimeout } = this.#opts;
    this.#tickTimer = setInterval(
      () => this.#onTick(),
      Math.max(5, Math.min(heartbeatInterval, deadLinkTimeout) / 4),
    );
    this.#attach(init.reader, 0);
    log.info("Session {id} opened as {role} with {remote}", {
      id: this.sessionId,
      role: this.#role,
      remote: formatAddr(this.#lastLink.remoteAddr),
    });
  }

  get sessionId(): string {
    return this.#secrets.id;
  }

  get state(): ConnState {
    return this.#state;
  }

  get localAddr(): Deno.Addr | undefined {
    return this.#lastLink.localAddr;
  }

  get remoteAddr(): Deno.Addr | undefined {
    return this.#lastLink.remoteAddr;
  }

  get stats(): ConnStats {
    return {
      state: this.#state,
      bytesWritten: this.#bytesWritten,
      bytesRead: this.#bytesRead,
      unackedBytes: this.#replay.end - this.#replay.start,
      bufferedBytes: this.#queued,
      reconnects: this.#reconnects,
      replayedBytes: this.#replayedBytes,
      rttMs: this.#rttMs,
    };
  }

  // ---------------------------------------------------------------- application side

  async read(buffer: Uint8Array): Promise<number | null> {
    if (buffer.length === 0) return 0;
    const chunk = await this.#nextChunk(buffer.length);
    if (chunk === null) return null;
    buffer.set(chunk);
    return chunk.length;
  }

  async write(data: Uint8Array): Promise<number> {
    let offset = 0;
    while (offset < data.length) {
      this.#assertWritable();
      const n = this.#replay.append(data.subarray(offset));
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

  closeWrite(): Promise<void> {
    if (this.#finPos === null) {
      this.#assertWritable();
      this.#finPos = this.#replay.end;
      this.#kick();
    }
    return Promise.resolve();
  }

  close(): void {
    if (this.#dead || this.#finished) return;
    log.info("Session {id} closed locally", { id: this.sessionId });
    this.#clean = true;
    this.#fail(
      new ImmortalError("closed", "the connection was closed"),
      "closed by the application",
    );
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.closed.catch(() => {});
  }

  #assertWritable(): void {
    if (this.#dead) throw this.#error!;
    if (this.#finPos !== null) throw new ImmortalError("closed", "the writable side was closed");
  }

  /** Next received bytes (at most `max`), or `null` once the peer's FIN is reached. */
  async #nextChunk(max: number): Promise<Uint8Array | null> {
    for (;;) {
      if (this.#queued > 0) {
        let chunk = this.#queue[this.#queueHead];
        if (chunk.length > max) {
          this.#queue[this.#queueHead] = chunk.subarray(max);
          chunk = chunk.subarray(0, max);
        } else {
          this.#queueHead++;
          if (this.#queueHead === this.#queue.length) {
            this.#queue = [];
            this.#queueHead = 0;
          }
        }
        this.#queued -= chunk.length;
        this.#consume(chunk.length);
        return chunk;
      }
      if (this.#peerFin !== null) {
        this.#consumeFin();
        return null;
      }
      if (this.#dead) throw this.#error!;
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
    }
  }

  #consume(n: number): void {
    this.#consumed += n;
    this.#bytesRead += n;
    // Ack at once when a quarter of the peer's window (assumed equal to ours)
    // is consumed, so a bulk sender never stalls; otherwise shortly after.
    if (this.#consumed - this.#ackSent >= Math.min(this.#opts.maxUnackedBytes >> 2, 1 << 20)) {
      this.#kick();
    } else if (this.#ackTimer === undefined) {
      this.#ackTimer = setTimeout(() => {
        this.#ackTimer = undefined;
        this.#kick();
      }, ACK_DELAY_MS);
    }
  }

  #consumeFin(): void {
    const end = this.#peerFin! + 1;
    if (this.#consumed === end) return;
    this.#consumed = end;
    this.#kick();
    this.#checkComplete();
  }

  // ---------------------------------------------------------------- links

  /** Puts a link (handshake done) under the session; the peer has received `peerReceived`. */
  #attach(reader: _FrameReader, peerReceived: number): void {
    const sentEnd = this.#highestSent;
    if (peerReceived < this.#acked || peerReceived > sentEnd) {
      this.#fail(
        new ImmortalError(
          "protocol",
          `peer claims to have received ${peerReceived} bytes, outside [${this.#acked}, ${sentEnd}]`,
        ),
        "resume position out of range",
      );
      reader.link.close();
      return;
    }
    const replayed = Math.min(sentEnd, this.#replay.end) - peerReceived;
    this.#replayedBytes += Math.max(0, replayed);
    this.#sendPos = peerReceived;
    this.#ackForced = true;
    this.#link = reader.link;
    this.#lastLink = reader.link;
    const now = performance.now();
    this.#lastInbound = now;
    this.#linkUpAt = now;
    this.#lastPing = -Infinity;
    this.#sendLoop(reader.link);
    this.#readLoop(reader);
  }

  /** The link failed in any way: drop it and get another (client) or wait for one (server). */
  #linkFailed(link: Link, reason: string): void {
    if (link !== this.#link) return;
    this.#link = null;
    link.close();
    this.#kick();
    if (this.#closeAfterFlush) {
      this.#finish();
      return;
    }
    if (this.#dead || this.#finished) return;
    if (this.#listenerGone) {
      this.#fail(
        new ImmortalError("closed", `the link was lost (${reason}) and the listener is closed`),
        null,
      );
      return;
    }
    const now = performance.now();
    this.#lostAt = now;
    if (now - this.#linkUpAt >= this.#opts.backoff.stableAfter) this.#attempt = 0;
    log.warn("Session {id} lost its link: {reason}", { id: this.sessionId, reason });
    if (!this.#complete) {
      this.#state = "reconnecting";
      this.dispatchEvent(new ConnEvent("reconnecting", { reason }));
    }
    if (this.#role === "client") {
      this.#reconnect();
    } else if (this.#reapTimer === undefined) {
      this.#reapTimer = setTimeout(() => {
        this.#reapTimer = undefined;
        if (this.#link !== null) return;
        log.warn("Session {id} reaped: the client did not come back within {ms} ms", {
          id: this.sessionId,
          ms: this.#opts.resumeTimeout,
        });
        this.#fail(
          new ImmortalError(
            "timeout",
            `the client did not resume within the resume timeout of ${this.#opts.resumeTimeout} ms`,
          ),
          null,
        );
      }, this.#opts.resumeTimeout);
    }
  }

  async #reconnect(): Promise<void> {
    const { resumeTimeout, handshakeTimeout, backoff } = this.#opts;
    const deadline = this.#lostAt + resumeTimeout;
    while (this.#link === null && !this.#dead && !this.#finished) {
      const remaining = deadline - performance.now();
      if (remaining <= 0) break;
      const delay = Math.min(
        _backoffDelay(this.#attempt++, backoff.initial, backoff.max),
        remaining,
      );
      if (delay > 0 && !(await this.#sleep(delay))) return;
      try {
        const budget = Math.max(1, Math.min(handshakeTimeout, deadline - performance.now()));
        const { reader, value: serverReceived } = await _dialAndHandshake(
          this.#dialer!,
          budget,
          this.#abort.signal,
          (reader) => _clientResume(reader, this.#secrets, this.#recvPos),
        );
        if (this.#dead || this.#finished) {
          reader.link.close();
          return;
        }
        this.#resumed(reader, serverReceived);
        return;
      } catch (error) {
        if (this.#dead || this.#finished) return;
        if (_isFatal(error)) {
          this.#fail(error as ImmortalError, null);
          return;
        }
        log.debug("Session {id}: resume attempt {n} failed: {reason}", {
          id: this.sessionId,
          n: this.#attempt,
          reason: _message(error),
        });
      }
    }
    if (this.#link === null && !this.#dead && !this.#finished) {
      this.#fail(
        new ImmortalError(
          "timeout",
          `could not resume the session within the resume timeout of ${resumeTimeout} ms`,
        ),
        null,
      );
    }
  }

  /** Server: a client proved it owns this session on a new link. */
  async _resumeFrom(
    reader: _FrameReader,
    clientReceived: number,
    transcript: Uint8Array,
  ): Promise<void> {
    const epoch = ++this.#resumeEpoch;
    const old = this.#link;
    if (old) {
      // The client gave up on the old link before we noticed it was dead.
      this.#linkFailed(old, "the client resumed on a new link");
    }
    // No link is attached now, so nothing moves recvPos until we attach.
    const accept = await _resumeAccept(this.#secrets.resumeKey, transcript, this.#recvPos);
    if (epoch !== this.#resumeEpoch || this.#dead || this.#finished) {
      reader.link.close();
      return;
    }
    await _send(reader.link, accept);
    if (epoch !== this.#resumeEpoch || this.#dead || this.#finished) {
      reader.link.close();
      return;
    }
    clearTimeout(this.#reapTimer);
    this.#reapTimer = undefined;
    this.#resumed(reader, clientReceived);
  }

  /** Server: is this session still resumable? */
  get _resumable(): boolean {
    return !this.#dead && !this.#finished;
  }

  /** Server: the listener closed; the session lives on its current link only. */
  _listenerClosed(): void {
    if (this.#complete || this.#link === null) {
      this.#fail(new ImmortalError("closed", "the listener was closed"), null);
    } else {
      this.#onForget = undefined;
      this.#dialer = undefined;
      this.#listenerGone = true;
    }
  }

  #resumed(reader: _FrameReader, peerReceived: number): void {
    const downtimeMs = Math.round(performance.now() - this.#lostAt);
    const before = this.#replayedBytes;
    this.#attach(reader, peerReceived);
    if (this.#dead) return;
    this.#reconnects++;
    const replayedBytes = this.#replayedBytes - before;
    log.info(
      "Session {id} resumed after {downtimeMs} ms via {remote}, {replayedBytes} bytes replayed",
      {
        id: this.sessionId,
        downtimeMs,
        replayedBytes,
        remote: formatAddr(reader.link.remoteAddr),
      },
    );
    if (!this.#complete) this.#state = "connected";
    this.dispatchEvent(new ConnEvent("resumed", { downtimeMs, replayedBytes }));
  }

  // ---------------------------------------------------------------- send loop

  #kick(): void {
    const wake = this.#wakeSender;
    if (wake) {
      this.#wakeSender = null;
      wake();
    }
  }

  /** The only writer of a link: control frames first, then data, batched into one write. */
  async #sendLoop(link: Link): Promise<void> {
    const buffer = new Uint8Array(SEND_BUFFER_SIZE);
    try {
      while (this.#link === link) {
        const n = this.#fill(buffer);
        if (n > 0) {
          await link.write(buffer.subarray(0, n));
          this.#lastOutbound = performance.now();
          continue;
        }
        if (this.#closeAfterFlush) {
          this.#link = null;
          link.close();
          this.#finish();
          return;
        }
        await new Promise<void>((resolve) => this.#wakeSender = resolve);
      }
    } catch (error) {
      this.#linkFailed(link, `send failed: ${_message(error)}`);
    }
  }

  #fill(buffer: Uint8Array): number {
    let n = 0;
    if (!this.#dead && (this.#consumed > this.#ackSent || this.#ackForced)) {
      n += encodeFrameInto({ type: "ack", position: this.#consumed }, buffer, n);
      this.#ackSent = this.#consumed;
      this.#ackForced = false;
      // A pending ack timer is left to fire: it finds nothing new to ack and
      // costs less than clearing and re-arming a timer on every message.
    }
    while (this.#control.length > 0 && n < CONTROL_ROOM) {
      n += encodeFrameInto(this.#control.shift()!, buffer, n);
    }
    if (this.#dead) return n;
    const end = this.#replay.end;
    if (this.#sendPos < end) {
      const length = Math.min(end - this.#sendPos, buffer.length - n - FRAME_HEADER_SIZE);
      writeFrameHeader(buffer, n, FrameCode.data, length);
      this.#replay.copyOut(this.#sendPos, buffer, n + FRAME_HEADER_SIZE, length);
      n += FRAME_HEADER_SIZE + length;
      this.#sendPos += length;
    } else if (this.#finPos !== null && this.#sendPos === this.#finPos) {
      n += encodeFrameInto({ type: "fin", position: this.#finPos }, buffer, n);
      this.#sendPos++;
    }
    if (this.#sendPos > this.#highestSent) this.#highestSent = this.#sendPos;
    return n;
  }

  // ---------------------------------------------------------------- receive loop

  async #readLoop(reader: _FrameReader): Promise<void> {
    const link = reader.link;
    try {
      while (this.#link === link) {
        const frames = await reader.nextBatch();
        if (this.#link !== link) return;
        if (frames === null) {
          this.#linkFailed(link, "the link was closed by the other side");
          return;
        }
        this.#lastInbound = performance.now();
        for (const frame of frames) {
          this.#onFrame(frame);
          if (this.#link !== link) return;
        }
      }
    } catch (error) {
      if (error instanceof ImmortalError) {
        log.error("Session {id}: {reason}", { id: this.sessionId, reason: error.message });
        this.#fail(error, `protocol error: ${error.message}`);
      } else if (error instanceof FrameError) {
        // Garbage on one link (a broken middlebox, say) is a link failure: the
        // replay on the next link repairs whatever it cost.
        this.#linkFailed(link, `bad frame: ${error.message}`);
      } else {
        this.#linkFailed(link, `receive failed: ${_message(error)}`);
      }
    }
  }

  #onFrame(frame: Frame): void {
    if (this.#dead) return;
    switch (frame.type) {
      case "data": {
        if (this.#peerFin !== null) {
          throw new ImmortalError("protocol", "data after the end of stream");
        }
        this.#recvPos += frame.data.length;
        // The frame is a view into the reused read buffer: keep a copy.
        this.#queue.push(frame.data.slice());
        this.#queued += frame.data.length;
        this.#wakeReaderNow();
        return;
      }
      case "ack":
        return this.#onAck(frame.position);
      case "ping":
        this.#control.push({ type: "pong", stamp: frame.stamp });
        this.#kick();
        return;
      case "pong":
        this.#rttMs = performance.now() - frame.stamp;
        return;
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
          reason: frame.reason,
        });
        this.#fail(
          new ImmortalError("aborted", `the peer aborted the connection: ${frame.reason}`),
          null,
        );
        return;
      case "bye":
        if (this.#role !== "server") throw new ImmortalError("protocol", "bye sent to a client");
        this.#fail(null, null);
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
    const waiters = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const waiter of waiters) waiter.resolve();
    this.#checkComplete();
  }

  #wakeReaderNow(): void {
    const wake = this.#wakeReader;
    if (wake) {
      this.#wakeReader = null;
      wake();
    }
  }

  // ---------------------------------------------------------------- heartbeats

  #onTick(): void {
    const link = this.#link;
    if (link === null || this.#closeAfterFlush) return;
    const now = performance.now();
    if (now - this.#lastInbound > this.#opts.deadLinkTimeout) {
      this.#linkFailed(link, `nothing received for ${Math.round(now - this.#lastInbound)} ms`);
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
      this.#control.push({ type: "ping", stamp: now });
      this.#kick();
    }
  }

  #sleep(ms: number): Promise<boolean> {
    const signal = this.#abort.signal;
    if (signal.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const onAbort = () => {
        clearTimeout(timer);
        resolve(false);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener("abort", onAbort);
        resolve(true);
      }, ms);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  // ---------------------------------------------------------------- endings

  #checkComplete(): void {
    if (this.#complete || this.#dead) return;
    if (this.#finPos === null || this.#acked !== this.#finPos + 1) return;
    if (this.#peerFin === null || this.#consumed !== this.#peerFin + 1) return;
    this.#complete = true;
    this.#state = "closed";
    log.info("Session {id} completed: {sent} bytes sent, {received} received", {
      id: this.sessionId,
      sent: this.#bytesWritten,
      received: this.#bytesRead,
    });
    this.dispatchEvent(new ConnEvent("closed"));
    this.#resolveClosed();
    if (this.#role === "client") {
      // Tell the server it may forget the session, then hang up.
      this.#control.push({ type: "bye" });
      this.#closeAfterFlush = true;
      this.#kick();
    } else if (this.#reapTimer === undefined) {
      // Keep the session resumable until the client's bye, in case our last
      // ack was lost with the link; forget it after the resume timeout anyway.
      this.#reapTimer = setTimeout(() => this.#fail(null, null), this.#opts.resumeTimeout);
    }
  }

  /**
   * Ends the session. `error` null means a clean end (bye, or reaping a
   * completed session). With `tellPeer`, a close frame is flushed first.
   */
  #fail(error: Error | null, tellPeer: string | null): void {
    if (this.#dead || this.#finished) return;
    this.#dead = true;
    this.#error = error ?? new ImmortalError("closed", "the connection was closed");
    this.#abort.abort();
    const waiters = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const waiter of waiters) waiter.reject(this.#error);
    this.#wakeReaderNow();
    if (error === null) this.#clean = true;
    if (!this.#complete) {
      this.#state = "closed";
      const clean = this.#clean;
      if (!clean) {
        log.warn("Session {id} ended: {reason}", { id: this.sessionId, reason: error!.message });
      }
      this.dispatchEvent(new ConnEvent("closed", clean ? {} : { error: error! }));
    }
    const link = this.#link;
    if (link !== null && tellPeer !== null) {
      this.#control.push({ type: "close", reason: tellPeer });
      this.#closeAfterFlush = true;
      this.#flushTimer = setTimeout(
        () => this.#linkFailed(link, "flush timed out"),
        FLUSH_TIMEOUT_MS,
      );
      this.#kick();
    } else {
      if (link !== null) {
        this.#link = null;
        link.close();
        this.#kick();
      }
      this.#finish();
    }
  }

  /** Final cleanup: timers, listener bookkeeping, and the `closed` promise. */
  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#closeAfterFlush = false;
    clearInterval(this.#tickTimer);
    clearTimeout(this.#ackTimer);
    clearTimeout(this.#reapTimer);
    clearTimeout(this.#flushTimer);
    this.#abort.abort();
    this.#onForget?.(this);
    this.#onForget = undefined;
    if (this.#complete) return;
    if (this.#clean) this.#resolveClosed();
    else this.#rejectClosed(this.#error!);
  }
}
