/**
 * One multiplexed stream's state: its receive queue and the credit it grants,
 * the credit it may spend, half-close and reset. The session feeds it frames
 * and sends what it asks; {@linkcode MuxStream} is its public face.
 *
 * Credit, per direction: the receiver grants a window (256 KiB to start);
 * the sender never has more than that in flight unread. As the application
 * reads, the receiver grants what it consumed, once half the window is
 * consumed. A window that was read through within two round trips is the
 * bottleneck of that stream, so it doubles (up to a maximum): a busy stream
 * on a long path gets the window the path needs, an idle or stalled one
 * keeps what it had, and holds at most that many bytes.
 *
 * @module
 */

import { ImmortalError } from "../conn/errors.ts";
import type { ChunkPool } from "./_chunk_pool.ts";
import { ChunkQueue } from "../_chunk_queue.ts";
import { peerText } from "../_util.ts";
import {
  encodeCredit,
  encodeFrame,
  FrameType,
  INITIAL_WINDOW,
  MAX_DATA,
  MAX_TEXT,
  MuxProtocolError,
} from "./_frames.ts";

/**
 * The round trip a window is judged against is never taken as shorter than
 * this, ms. On loopback or a LAN the measured RTT (~0.1 ms) is shorter than
 * the time the two ends take to handle half a window of data, so a window
 * that limits the stream would almost never be seen to, and stay small.
 */
const MIN_GROWTH_RTT_MS = 1;

/** What a stream needs from its session. */
export interface StreamOwner {
  /** Queues a control frame (ahead of data). */
  sendControl(frame: Uint8Array): void;
  /**
   * Writes a data frame (or a FIN) at once if nothing is queued before it and
   * the session has room: true. The payload is copied before this returns.
   */
  trySendData(stream: number, type: number, payload: Uint8Array | null): boolean;
  /** Queues a data frame (or a FIN) in order; resolves once the session took it. */
  sendData(stream: number, type: number, payload: Uint8Array | null): Promise<void>;
  /** The stream ended both ways: the session forgets it. */
  forget(stream: number): void;
  /** The session's round-trip time estimate, ms. */
  rttMs(): number;
  /** The time now, ms (`performance.now()`; a test sets the clock). */
  now(): number;
  /** The most a stream's receive window may grow to. */
  readonly maxWindow: number;
  /** Where received data is copied to. */
  readonly chunks: ChunkPool;
}

/** Whether we opened the stream or the peer did, and where it stands. */
type Opening = "opening" | "pending" | "open";

/** @internal */
export class StreamCore {
  readonly id: number;
  readonly meta: Uint8Array;
  readonly closed: Promise<void>;
  /** Settles when the acceptor answered (opener) or when we answered (acceptor). */
  readonly accepted: Promise<void>;
  #owner: StreamOwner;
  #opening: Opening;
  #resolveAccepted!: () => void;
  #rejectAccepted!: (error: Error) => void;
  #resolveClosed!: () => void;
  #rejectClosed!: (error: Error) => void;
  /** Set once the stream was reset, refused or lost with its session. */
  #error: Error | null = null;

  // Receiving.
  #queue = new ChunkQueue();
  #queued = 0;
  #peerFin = false;
  #readerWaiters: (() => void)[] = [];
  /** Bytes the peer may send in all (window plus every credit granted). */
  #granted = INITIAL_WINDOW;
  #received = 0;
  #consumed = 0;
  /** Consumed position the last credit covered. */
  #creditedTo = 0;
  #window = INITIAL_WINDOW;
  #lastGrantAt: number;

  // Sending.
  #credit = INITIAL_WINDOW;
  #creditWaiters: (() => void)[] = [];
  /** The last write still running (writes run one at a time, in call order), if any. */
  #writing: Promise<unknown> | null = null;
  #finQueued = false;
  /** The FIN's sending, once closeWrite was called: what every later call answers too. */
  #fin: Promise<void> | null = null;
  #finSent = false;

  constructor(id: number, owner: StreamOwner, init: { meta?: Uint8Array; incoming: boolean }) {
    this.id = id;
    this.#owner = owner;
    this.#lastGrantAt = owner.now();
    this.meta = init.meta ?? new Uint8Array(0);
    this.#opening = init.incoming ? "pending" : "opening";
    this.accepted = new Promise((resolve, reject) => {
      this.#resolveAccepted = resolve;
      this.#rejectAccepted = reject;
    });
    this.closed = new Promise((resolve, reject) => {
      this.#resolveClosed = resolve;
      this.#rejectClosed = reject;
    });
    // Nobody has to await these: a refused or reset stream must not crash the process.
    this.accepted.catch(() => {});
    this.closed.catch(() => {});
  }

  /** Bytes received and not read yet. */
  get buffered(): number {
    return this.#queued;
  }

  /** The receive window granted now. */
  get window(): number {
    return this.#window;
  }

  // ------------------------------------------------------------ acceptor's answer

  accept(): void {
    // A stream the peer reset before we answered needs no answer.
    if (this.#opening !== "pending" || this.#error) return;
    this.#opening = "open";
    this.#owner.sendControl(encodeFrame(FrameType.accept, this.id));
    this.#resolveAccepted();
  }

  refuse(reason: string): void {
    if (this.#opening !== "pending" || this.#error) return;
    this.#owner.sendControl(encodeFrame(FrameType.refuse, this.id, text(reason)));
    this.#end(new ImmortalError("rejected", `stream refused: ${reason}`), true);
  }

  // ------------------------------------------------------------ application side

  /**
   * Next received bytes (the queue's own chunk: the caller may keep it, or
   * hand a whole one back with {@linkcode release}), or null at the end.
   */
  async nextChunk(max = Infinity): Promise<Uint8Array | null> {
    for (;;) {
      const chunk = this.takeChunk(max);
      if (chunk !== undefined) return chunk;
      await new Promise<void>((resolve) => this.#readerWaiters.push(resolve));
    }
  }

  /** {@linkcode nextChunk} without waiting: `undefined` when nothing is there yet. */
  takeChunk(max = Infinity): Uint8Array | null | undefined {
    if (this.#queued > 0) {
      let chunk = this.#queue.first;
      if (chunk.length > max) {
        this.#queue.first = chunk.subarray(max);
        chunk = chunk.subarray(0, max);
      } else {
        this.#queue.shift();
      }
      this.#queued -= chunk.length;
      this.#consume(chunk.length);
      return chunk;
    }
    if (this.#peerFin) return null;
    if (this.#error) throw this.#error;
    return undefined;
  }

  /** A whole chunk from {@linkcode nextChunk} was written out: its buffer may be reused. */
  release(chunk: Uint8Array): void {
    this.#owner.chunks.release(chunk);
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    if (buffer.length === 0) return 0;
    const chunk = await this.nextChunk(buffer.length);
    if (chunk === null) return null;
    buffer.set(chunk);
    // A chunk split by a short buffer is still partly queued: only a whole one goes back.
    if (chunk.byteOffset === 0 && chunk.length < buffer.length) this.release(chunk);
    return chunk.length;
  }

  write(data: Uint8Array): Promise<number> {
    // Refused at the call, not later: a write queued before closeWrite still
    // goes out whole, ahead of the FIN.
    try {
      this.#assertWritable();
    } catch (error) {
      return Promise.reject(error);
    }
    // The common case of a request or a reply: no write before it, credit
    // for all of it, one frame, room in the session: written at once.
    const n = data.length;
    if (
      this.#writing === null && this.#error === null && !this.#finQueued && n > 0 &&
      n <= this.#credit && n <= MAX_DATA
    ) {
      this.accept();
      if (this.#owner.trySendData(this.id, FrameType.data, data)) {
        this.#credit -= n;
        return Promise.resolve(n);
      }
    }
    return this.#serialize(() => this.#write(data));
  }

  /** Runs `task` after every write before it (at once when there is none). */
  #serialize<T>(task: () => Promise<T>): Promise<T> {
    const done = this.#writing === null ? task() : this.#writing.then(task);
    const settled = done.catch(() => {});
    this.#writing = settled;
    settled.then(() => {
      if (this.#writing === settled) this.#writing = null;
    });
    return done;
  }

  async #write(data: Uint8Array): Promise<number> {
    // Writing is answering: an acceptor that writes has accepted.
    this.accept();
    for (let off = 0; off < data.length;) {
      if (this.#error) throw this.#error;
      if (this.#credit === 0) {
        await new Promise<void>((resolve) => this.#creditWaiters.push(resolve));
        continue;
      }
      const n = Math.min(this.#credit, data.length - off, MAX_DATA);
      this.#credit -= n;
      const piece = data.subarray(off, off + n);
      if (!this.#owner.trySendData(this.id, FrameType.data, piece)) {
        await this.#owner.sendData(this.id, FrameType.data, piece);
      }
      off += n;
    }
    return data.length;
  }

  closeWrite(): Promise<void> {
    // Again: the first call's outcome, a FIN that failed included.
    if (this.#fin !== null) return this.#fin;
    try {
      this.#assertWritable();
    } catch (error) {
      return Promise.reject(error);
    }
    this.#finQueued = true;
    this.accept();
    this.#fin = this.#serialize(async () => {
      if (this.#error) throw this.#error;
      if (!this.#owner.trySendData(this.id, FrameType.fin, null)) {
        await this.#owner.sendData(this.id, FrameType.fin, null);
      }
      this.#finSent = true;
      this.#maybeDone();
    });
    return this.#fin;
  }

  /** Aborts both directions; the peer's stream fails with `reason`. */
  close(reason = "closed by the application"): void {
    // A stream finished both ways has ended already (see #maybeDone).
    if (this.#error) return;
    this.#owner.sendControl(encodeFrame(FrameType.reset, this.id, text(reason)));
    this.#end(new ImmortalError("closed", "the stream was closed"), true);
  }

  #assertWritable(): void {
    if (this.#error) throw this.#error;
    if (this.#finQueued) throw new ImmortalError("closed", "the writable side was closed");
  }

  /** Grants the peer what the application consumed, once half the window is. */
  #consume(n: number): void {
    this.#consumed += n;
    const unCredited = this.#consumed - this.#creditedTo;
    if (unCredited < this.#window / 2 || this.#peerFin || this.#error) return;
    let increment = unCredited;
    const now = this.#owner.now();
    // Read through half the window within a round trip or so: the window
    // limits this stream. Grow it (the extra is granted now).
    if (
      now - this.#lastGrantAt < 2 * Math.max(this.#owner.rttMs(), MIN_GROWTH_RTT_MS) &&
      this.#window < this.#owner.maxWindow
    ) {
      const grown = Math.min(this.#window * 2, this.#owner.maxWindow);
      increment += grown - this.#window;
      this.#window = grown;
    }
    this.#lastGrantAt = now;
    this.#creditedTo = this.#consumed;
    this.#granted += increment;
    this.#owner.sendControl(encodeCredit(this.id, increment));
  }

  // ------------------------------------------------------------ frames from the peer

  /** Stream bytes (a view: copied here). */
  onData(bytes: Uint8Array): void {
    if (this.#error) return; // reset or refused by us: what was in flight is dropped
    if (this.#peerFin) throw new MuxProtocolError(`data after fin on stream ${this.id}`);
    this.#received += bytes.length;
    if (this.#received > this.#granted) {
      throw new MuxProtocolError(
        `stream ${this.id}: ${this.#received - this.#granted} bytes past the window granted`,
      );
    }
    // Behind the last queued chunk as far as it has room: one write out for all.
    const chunks = this.#owner.chunks;
    const tail = this.#queue.last;
    let rest = bytes;
    let behind: Uint8Array | null = null;
    if (tail !== undefined) {
      behind = chunks.extend(tail, rest);
      this.#queue.last = behind;
      rest = rest.subarray(behind.length - tail.length);
    }
    if (rest.length > 0) this.#queue.push(chunks.copy(rest, behind));
    this.#queued += bytes.length;
    this.#wakeReaders();
  }

  onControl(type: number, payload: Uint8Array): void {
    switch (type) {
      case FrameType.accept:
        if (this.#opening === "opening") {
          this.#opening = "open";
          this.#resolveAccepted();
        }
        return;
      case FrameType.refuse:
        if (this.#opening === "opening") {
          this.#end(new ImmortalError("rejected", `stream refused: ${decode(payload)}`));
        }
        return;
      case FrameType.credit: {
        const increment = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
        this.#credit += increment;
        const waiters = this.#creditWaiters;
        this.#creditWaiters = [];
        for (const wake of waiters) wake();
        return;
      }
      case FrameType.fin:
        if (this.#error) return;
        if (this.#peerFin) throw new MuxProtocolError(`second fin on stream ${this.id}`);
        this.#peerFin = true;
        this.#wakeReaders();
        this.#maybeDone();
        return;
      case FrameType.reset:
        this.#end(new ImmortalError("aborted", `the peer reset the stream: ${decode(payload)}`));
        return;
      default:
        throw new MuxProtocolError(`unexpected frame type ${type} on stream ${this.id}`);
    }
  }

  /**
   * Whether the peer's FIN came: every byte it sent is here, and what is
   * queued may still be read after the stream fails.
   */
  get peerFinished(): boolean {
    return this.#peerFin;
  }

  /** Whether the stream has ended: finished, closed, reset or refused, or its session gone. */
  get ended(): boolean {
    return this.#error !== null;
  }

  /** The session is gone: so is the stream. */
  fail(error: Error): void {
    this.#end(error);
  }

  #wakeReaders(): void {
    const waiters = this.#readerWaiters;
    this.#readerWaiters = [];
    for (const wake of waiters) wake();
  }

  #maybeDone(): void {
    if (this.#finSent && this.#peerFin && !this.#error) this.#end(null);
  }

  /**
   * Ends the stream: `error` null means both directions finished; `clean`
   * (a local close or refusal) settles `closed` without an error.
   */
  #end(error: Error | null, clean = error === null): void {
    if (this.#error) return;
    this.#error = error ?? new ImmortalError("closed", "the stream is finished");
    this.#owner.forget(this.id);
    this.#wakeReaders();
    const waiters = this.#creditWaiters;
    this.#creditWaiters = [];
    for (const wake of waiters) wake();
    if (error) this.#rejectAccepted(error);
    else this.#resolveAccepted();
    if (clean) this.#resolveClosed();
    else this.#rejectClosed(error!);
  }
}

const encoder = new TextEncoder();

/** UTF-8 of `reason`, cut to what a frame carries. */
function text(reason: string): Uint8Array {
  const bytes = encoder.encode(reason);
  return bytes.length <= MAX_TEXT ? bytes : bytes.subarray(0, MAX_TEXT);
}

/** A reason the peer sent, for an error message (and so a log line). */
function decode(bytes: Uint8Array): string {
  return peerText(new TextDecoder().decode(bytes));
}
