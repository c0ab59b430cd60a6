/**
 * {@linkcode MuxSession}: many streams over one ImmortalConn.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { ImmortalError } from "../conn/errors.ts";
import type { ImmortalConn } from "../conn/immortal_conn.ts";
import { StreamEngine } from "../conn/_stream_engine.ts";
import { errorMessage } from "../_util.ts";
import {
  encodeFrame,
  type FrameHandler,
  FrameParser,
  FrameType,
  GREETING,
  HEADER_SIZE,
  MAX_DATA,
  MAX_WINDOW,
  MuxProtocolError,
  writeHeader,
} from "./_frames.ts";
import { ChunkPool } from "./_chunk_pool.ts";
import { StreamCore, type StreamOwner } from "./_stream_core.ts";
import { MuxStream } from "./mux_stream.ts";

const log = getLogger(["immortal", "mux"]);

/** A data payload this small is copied behind its header: one write instead of two. */
const COALESCE_MAX = 16 * 1024;
/**
 * Answers the peer made us queue for nothing, at most: refusals of its OPENs
 * (the session's at `maxStreams`, or the application's: a tunnel server at
 * `maxConnections`), and ACCEPTs of streams it reset while they waited. A
 * peer that opens on and on while not reading them is cut off. Not the
 * ACCEPTs of live streams: they wait behind a full send window on any slow
 * path, from a peer that reads everything, and `maxStreams` bounds them.
 */
const MAX_DEAD_ANSWERS = 4096;
/**
 * Control frames go out in writes of about this much: tens of thousands can
 * queue while the writer waits inside a data write (a stream per connection
 * opened and closed during an outage), and one buffer of them all, built by
 * spreading the list into a call, threw past ~100,000 frames.
 */
const CONTROL_BATCH = 64 * 1024;
/** Round-trip time assumed until the session has measured one, ms. */
const DEFAULT_RTT_MS = 50;

/** Settings of a {@linkcode MuxSession}. */
export interface MuxSessionOptions {
  /**
   * Which end this is: the client opens odd-numbered streams, the server
   * even-numbered ones. Both may open streams.
   */
  role: "client" | "server";
  /** Most streams open at once (both ways); more are refused. Default 65536. */
  maxStreams?: number;
  /** Largest receive window a busy stream grows to, bytes. Default 16 MiB. */
  maxStreamWindow?: number;
  /**
   * Refuse every stream the peer opens, at once, with this reason: for an
   * end that takes none (a tunnel client). Nothing is kept of such a stream,
   * not even the data the peer sends behind its OPEN (accepted, then
   * refused, each held a buffer until refused: a flood held hundreds of MiB).
   */
  refuseStreams?: string;
}

interface QueuedData {
  type: number;
  stream: number;
  payload: Uint8Array | null;
  resolve: () => void;
  reject: (error: Error) => void;
}

/**
 * Carries many independent byte streams over one {@linkcode ImmortalConn}:
 * one link, one handshake, one set of heartbeats and one resume for all of
 * them, whatever their number. Each stream has its own credit window (256 KiB
 * to start, grown while the stream is busy), so a stream nobody reads holds
 * only its own window and the others keep full speed. The wire format is
 * PROTOCOL.md §3.
 *
 * @example Both ends over a real connection
 * ```ts
 * import { connect, listen } from "@immortal/sockets";
 * import { MuxSession } from "@immortal/sockets/mux";
 *
 * using listener = listen({ hostname: "127.0.0.1", port: 0 });
 * const client = new MuxSession(await connect({ port: listener.addr.port }), { role: "client" });
 * const server = new MuxSession(await listener.accept(), { role: "server" });
 *
 * const stream = client.open(new TextEncoder().encode("echo"));
 * await stream.write(new TextEncoder().encode("ping"));
 * await stream.closeWrite();
 *
 * const incoming = await server.accept();
 * const what = new TextDecoder().decode(incoming.meta); // "echo"
 * const got = await new Response(incoming.readable).arrayBuffer();
 * await incoming.write(new Uint8Array(got));
 * await incoming.closeWrite();
 *
 * const echoed = await new Response(stream.readable).text();
 * if (what !== "echo" || echoed !== "ping") throw new Error("not echoed");
 * client.close();
 * server.close();
 * await Promise.all([client.closed, server.closed]);
 * ```
 */
export class MuxSession implements AsyncDisposable {
  /** Resolves when the session ended by {@linkcode MuxSession.close}; rejects if it was lost. */
  readonly closed: Promise<void>;
  #conn: ImmortalConn;
  #maxStreams: number;
  #streams = new Map<number, StreamCore>();
  #nextId: number;
  #lastPeerId = 0;
  #peerParity: number;
  /** Streams the peer opened, waiting for accept(), oldest first. */
  #incoming = new Set<MuxStream>();
  #acceptWaiters: { resolve: (s: MuxStream) => void; reject: (e: Error) => void }[] = [];
  #control: Uint8Array[] = [];
  /**
   * Answers among {@linkcode MuxSession.#control} that the peer made us
   * queue for nothing: refusals, and ACCEPTs of streams gone (reset) while
   * they waited. ACCEPTs of live streams are bounded by `maxStreams`.
   */
  #deadAnswers = 0;
  /** Queued ACCEPTs, by stream. */
  #queuedAccepts = new Map<number, Uint8Array>();
  /** Queued ACCEPTs whose stream is gone: counted in `#deadAnswers`. */
  #deadAccepts = new WeakSet<Uint8Array>();
  #data: QueuedData[] = [];
  #wakeWriter: (() => void) | null = null;
  /** The writer loop is in a write (which may have appended part of a frame). */
  #writing = false;
  /** The data frame being written: settled by the loop, or by #end if the write never returns. */
  #inFlight: QueuedData | null = null;
  /** Our own session engine, whose synchronous `tryWrite` allows the fast path. */
  #engine: StreamEngine | null;
  /** Header scratch for the fast path (copied by `tryWrite` at once). */
  #header = new Uint8Array(HEADER_SIZE);
  #ending: Error | null = null;
  /** The reason every stream the peer opens is refused with (`refuseStreams`), or null. */
  #refusal: Uint8Array | null = null;
  /** Settled by the peer's greeting, or the session's end before it. */
  #greeted = Promise.withResolvers<void>();
  /** Ended by `close()`, not lost: `closed` resolves and no warning is logged. */
  #closedLocally = false;
  #resolveClosed!: () => void;
  #rejectClosed!: (error: Error) => void;
  #owner: StreamOwner;

  /** Starts multiplexing over `conn`, which nothing else may read or write from now on. */
  constructor(conn: ImmortalConn, options: MuxSessionOptions) {
    this.#conn = conn;
    this.#engine = conn instanceof StreamEngine ? conn : null;
    this.#maxStreams = options.maxStreams ?? 65_536;
    if (options.refuseStreams !== undefined) {
      this.#refusal = new TextEncoder().encode(options.refuseStreams);
    }
    const maxWindow = options.maxStreamWindow ?? 16 << 20;
    if (!Number.isInteger(maxWindow) || maxWindow < 256 * 1024 || maxWindow > MAX_WINDOW) {
      throw new RangeError(`maxStreamWindow must be an integer in 256 KiB..${MAX_WINDOW}`);
    }
    this.#nextId = options.role === "client" ? 1 : 2;
    this.#peerParity = options.role === "client" ? 0 : 1;
    this.closed = new Promise((resolve, reject) => {
      this.#resolveClosed = resolve;
      this.#rejectClosed = reject;
    });
    this.closed.catch(() => {});
    this.#owner = {
      maxWindow,
      chunks: new ChunkPool(),
      sendControl: (frame) => this.#sendControl(frame),
      sendData: (stream, type, payload) => this.#sendData(stream, type, payload),
      trySendData: (stream, type, payload) => this.#trySend(type, stream, payload),
      forget: (stream) => {
        this.#streams.delete(stream);
        // A stream gone while its ACCEPT still waits (the peer opened and
        // reset it without reading): that answer is queued for nothing.
        const accept = this.#queuedAccepts.get(stream);
        if (accept !== undefined) {
          this.#queuedAccepts.delete(stream);
          this.#deadAccepts.add(accept);
          this.#deadAnswers++;
        }
      },
      rttMs: () => conn.stats.rttMs ?? DEFAULT_RTT_MS,
      now: () => performance.now(),
    };
    // Nobody need ask: a session that ends before the peer greets must not
    // be an unhandled rejection.
    this.#greeted.promise.catch(() => {});
    this.#control.push(GREETING);
    this.#writeLoop();
    this.#readLoop();
  }

  /** The connection under the streams. */
  get conn(): ImmortalConn {
    return this.#conn;
  }

  /**
   * Resolves once the peer's greeting has come: it speaks stream
   * multiplexing (a session to a server of another kind ends with a protocol
   * error instead). Rejects if the session ends first.
   */
  get greeted(): Promise<void> {
    return this.#greeted.promise;
  }

  /** Streams open now (both ways). */
  get streams(): number {
    return this.#streams.size;
  }

  /**
   * Opens a stream; `meta` (at most 1 KiB) tells the peer what it is for.
   * Data may be written at once: the first 256 KiB need no answer. See
   * {@linkcode MuxStream.accepted} for the peer's answer.
   */
  open(meta?: Uint8Array): MuxStream {
    if (this.#ending) throw this.#ending;
    if (meta && meta.length > 1024) throw new RangeError("stream metadata is limited to 1 KiB");
    if (this.#streams.size >= this.#maxStreams) {
      throw new ImmortalError("rejected", `${this.#maxStreams} streams are open already`);
    }
    const id = this.#nextId;
    this.#nextId += 2;
    const core = new StreamCore(id, this.#owner, { meta, incoming: false });
    this.#streams.set(id, core);
    this.#sendControl(encodeFrame(FrameType.open, id, meta));
    return new MuxStream(core);
  }

  /** The next stream the peer opened; answer it with `accept`/`refuse` (or write). */
  accept(): Promise<MuxStream> {
    const stream = this.#incoming.values().next().value;
    if (stream) {
      this.#incoming.delete(stream);
      return Promise.resolve(stream);
    }
    if (this.#ending) return Promise.reject(this.#ending);
    return new Promise((resolve, reject) => this.#acceptWaiters.push({ resolve, reject }));
  }

  /** Streams the peer opens, until the session ends. */
  async *[Symbol.asyncIterator](): AsyncIterator<MuxStream> {
    for (;;) {
      try {
        yield await this.accept();
      } catch (error) {
        if (this.#ending && this.#ending === error && this.#closedLocally) return;
        throw error;
      }
    }
  }

  /**
   * Ends every stream and the connection under them. `reason`, if given, is
   * what the peer is told (its streams fail with it), and what this side's
   * streams fail with.
   */
  close(reason?: string): void {
    if (this.#ending) return;
    this.#closedLocally = true;
    this.#end(new ImmortalError("closed", reason ?? "the session was closed"), reason);
  }

  /** Same as {@linkcode MuxSession.close}, then waits for the connection to close. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.#conn.closed.catch(() => {});
  }

  // ------------------------------------------------------------ sending

  #sendControl(frame: Uint8Array): void {
    if (this.#ending) return;
    try {
      if (this.#engine && this.#writerIdle() && this.#engine.tryWrite([frame])) return;
    } catch {
      // The connection failed; the read loop ends the session with its reason.
      return;
    }
    this.#control.push(frame);
    // Refusals waiting here are what a peer that opens and does not read
    // makes us hold: they count toward its limit, not our own frames. So
    // does an ACCEPT once its stream is gone (see forget) while it waits.
    if (frame[0] === FrameType.refuse) this.#deadAnswers++;
    else if (frame[0] === FrameType.accept) this.#queuedAccepts.set(streamOf(frame), frame);
    this.#kick();
  }

  /** Nothing queued and nothing being written: a frame may go straight to the connection. */
  #writerIdle(): boolean {
    return !this.#writing && this.#control.length === 0 && this.#data.length === 0;
  }

  /**
   * Writes a frame straight into the session's send buffer when nothing is
   * queued before it and there is room: no queueing, no await, no copy of
   * header and payload into one buffer. False: queue it instead.
   */
  #trySend(type: number, stream: number, payload: Uint8Array | null): boolean {
    const engine = this.#engine;
    if (engine === null || this.#ending || !this.#writerIdle()) return false;
    const header = this.#header;
    writeHeader(header, type, stream, payload?.length ?? 0);
    try {
      return engine.tryWrite(payload ? [header, payload] : [header]);
    } catch {
      // The connection failed a moment before we noticed: the queued path
      // rejects the write properly, and the read loop ends the session.
      return false;
    }
  }

  #sendData(stream: number, type: number, payload: Uint8Array | null): Promise<void> {
    if (this.#ending) return Promise.reject(this.#ending);
    return new Promise((resolve, reject) => {
      this.#data.push({ type, stream, payload, resolve, reject });
      this.#kick();
    });
  }

  /** The oldest queued control frames, about {@linkcode CONTROL_BATCH} bytes of them, in one buffer. */
  #takeControlBatch(): Uint8Array {
    const frames = this.#control;
    let bytes = frames[0].length;
    let count = 1;
    while (count < frames.length && bytes + frames[count].length <= CONTROL_BATCH) {
      bytes += frames[count++].length;
    }
    this.#control = count === frames.length ? [] : frames.slice(count);
    const batch = count === 1 ? frames[0] : new Uint8Array(bytes);
    for (let i = 0, at = 0; i < count; at += frames[i++].length) {
      if (count > 1) batch.set(frames[i], at);
      const frame = frames[i];
      if (frame[0] === FrameType.refuse || this.#deadAccepts.delete(frame)) this.#deadAnswers--;
      else if (frame[0] === FrameType.accept) this.#queuedAccepts.delete(streamOf(frame));
    }
    return batch;
  }

  #kick(): void {
    const wake = this.#wakeWriter;
    if (wake) {
      this.#wakeWriter = null;
      wake();
    }
  }

  /**
   * The only writer of the connection: control frames first (credit must not
   * wait behind data), all of them in one write; then one data frame.
   */
  async #writeLoop(): Promise<void> {
    const header = new Uint8Array(HEADER_SIZE);
    try {
      while (!this.#ending) {
        if (this.#control.length > 0) {
          this.#writing = true;
          await this.#conn.write(this.#takeControlBatch());
          this.#writing = false;
          continue;
        }
        const item = this.#data.shift();
        this.#inFlight = item ?? null;
        if (item === undefined) {
          await new Promise<void>((resolve) => this.#wakeWriter = resolve);
          continue;
        }
        const length = item.payload?.length ?? 0;
        this.#writing = true;
        if (length <= COALESCE_MAX) {
          const frame = new Uint8Array(HEADER_SIZE + length);
          writeHeader(frame, item.type, item.stream, length);
          if (item.payload) frame.set(item.payload, HEADER_SIZE);
          await this.#conn.write(frame);
        } else {
          writeHeader(header, item.type, item.stream, length);
          await this.#conn.write(header);
          await this.#conn.write(item.payload!);
        }
        this.#writing = false;
        this.#inFlight = null;
        item.resolve();
      }
    } catch (error) {
      this.#end(error instanceof Error ? error : new Error(String(error)));
    }
  }

  // ------------------------------------------------------------ receiving

  async #readLoop(): Promise<void> {
    const parser = new FrameParser(this.#handler());
    const conn = this.#conn;
    try {
      if (conn instanceof StreamEngine) {
        // Parse straight from the session's receive queue: no copy first.
        const push = (view: Uint8Array) => parser.push(view);
        while ((await conn.readWith(push)) !== null) {
          if (this.#ending) return;
        }
      } else {
        const buffer = new Uint8Array(MAX_DATA);
        for (let n; (n = await conn.read(buffer)) !== null;) {
          parser.push(buffer.subarray(0, n));
          if (this.#ending) return;
        }
      }
      this.#end(new ImmortalError("closed", "the peer ended the session"));
    } catch (error) {
      if (error instanceof MuxProtocolError) {
        // The peer hears what it did wrong, as in the session protocol's own aborts.
        this.#end(
          new ImmortalError("protocol", error.message),
          `protocol error: ${error.message}`,
          true,
        );
      } else {
        this.#end(error instanceof Error ? error : new Error(String(error)));
      }
    }
  }

  #handler(): FrameHandler {
    return {
      greeted: () => this.#greeted.resolve(),
      data: (stream, bytes) => this.#streams.get(stream)?.onData(bytes),
      control: (type, stream, payload) => {
        if (type === FrameType.open) this.#onOpen(stream, payload);
        // Frames for a stream already gone (reset, refused) were in flight: dropped.
        else this.#streams.get(stream)?.onControl(type, payload);
      },
    };
  }

  #onOpen(id: number, meta: Uint8Array): void {
    if (id % 2 !== this.#peerParity || id <= this.#lastPeerId) {
      throw new MuxProtocolError(`the peer opened stream ${id} out of turn`);
    }
    this.#lastPeerId = id;
    // A peer that opens on and on while not reading our answers would grow
    // the control queue without end: cut it off.
    if (this.#deadAnswers >= MAX_DEAD_ANSWERS) {
      throw new MuxProtocolError("the peer keeps opening streams without reading our answers");
    }
    if (this.#refusal !== null) {
      return this.#sendControl(encodeFrame(FrameType.refuse, id, this.#refusal));
    }
    if (this.#streams.size >= this.#maxStreams) {
      this.#sendControl(
        encodeFrame(FrameType.refuse, id, new TextEncoder().encode("too many streams")),
      );
      return;
    }
    const core = new StreamCore(id, this.#owner, { meta, incoming: true });
    this.#streams.set(id, core);
    const stream = new MuxStream(core);
    const waiter = this.#acceptWaiters.shift();
    if (waiter) return waiter.resolve(stream);
    this.#incoming.add(stream);
    // One the peer resets before it was taken leaves the queue: it counts
    // against maxStreams no more, and a peer that opens and resets on and on
    // would otherwise grow the queue without bound.
    core.closed.catch(() => {
      this.#incoming.delete(stream);
    });
  }

  // ------------------------------------------------------------ ending

  /**
   * Ends every stream and the session under them; the peer is told
   * `tellPeer`, if given. `ours`: the fault is this layer's (a protocol
   * error in the streams' frames), or unknown (not an `ImmortalError`: a
   * bug), and is said at warning level. Otherwise the session under the
   * streams said how it ended (lost, reaped, closed by the peer): said again
   * here, it was a line more for one event.
   */
  #end(error: Error, tellPeer?: string, ours = !(error instanceof ImmortalError)): void {
    if (this.#ending) return;
    this.#ending = error;
    this.#greeted.reject(error); // settled already once the peer greeted
    if (!this.#closedLocally) {
      const fields = { id: this.#conn.sessionId.slice(0, 8), reason: errorMessage(error) };
      if (ours) log.warn("Multiplexed session {id} ended: {reason}", fields);
      else log.debug("Multiplexed session {id} ended: {reason}", fields);
    }
    for (const core of [...this.#streams.values()]) core.fail(error);
    this.#streams.clear();
    for (const stream of this.#incoming) stream.close();
    this.#incoming.clear();
    for (const waiter of this.#acceptWaiters.splice(0)) waiter.reject(error);
    for (const item of this.#data.splice(0)) item.reject(error);
    this.#inFlight?.reject(error);
    this.#inFlight = null;
    this.#control = [];
    this.#queuedAccepts.clear();
    this.#kick();
    this.#conn.close(tellPeer);
    if (this.#closedLocally) this.#resolveClosed();
    else this.#rejectClosed(error);
  }
}

/** The stream a frame is for (bytes 1-4 of its header, big-endian). */
function streamOf(frame: Uint8Array): number {
  return ((frame[1] << 24) | (frame[2] << 16) | (frame[3] << 8) | frame[4]) >>> 0;
}
