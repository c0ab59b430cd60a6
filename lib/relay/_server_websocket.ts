/**
 * The server side of a WebSocket (RFC 6455), strictly: client frames must be
 * masked, reserved bits clear (we agree no extension), control frames short
 * and whole, text valid UTF-8, close codes valid — a frame that breaks a rule
 * ends the connection with 1002 (protocol error) or 1007 (bad data), as the
 * RFC says. Messages are bounded: one larger than `maxMessageBytes` is read
 * past without being held, and reported as oversized.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import { BusyReads } from "../_busy_reads.ts";
import { type ByteReader, ReaderFull } from "./_byte_reader.ts";
import { concat } from "../_util.ts";
export { acceptKey } from "../link/_websocket_client.ts";

const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
/** A socket's read buffer while idle: frame headers and small frames (it grows under load). */
const READ_BUFFER_BYTES = 512;
/** How long we wait for the peer's close frame after sending ours before ending the TCP. */
const CLOSE_GRACE_MS = 1000;
/**
 * Frames one message may come in, at most: each is an object kept until the
 * message ends, and empty ones add nothing to its size, so without a count a
 * stream of 6-byte frames held ever more memory. A message in more frames is
 * too large, as one of too many bytes is. Browsers send a message whole.
 */
const MAX_FRAGMENTS = 1024;

const OP_CONTINUATION = 0;
const OP_TEXT = 1;
const OP_BINARY = 2;
const OP_CLOSE = 8;
const OP_PING = 9;
const OP_PONG = 10;

/**
 * Why `req` is not a valid WebSocket opening handshake (RFC 6455 4.2.1), or
 * null if it is.
 */
export function handshakeProblem(req: Request): string | null {
  const has = (name: string, token: string) =>
    (req.headers.get(name) ?? "").toLowerCase().split(",").some((t) => t.trim() === token);
  if (req.method !== "GET") return "a WebSocket handshake is a GET";
  if (!has("upgrade", "websocket")) return "Upgrade: websocket is missing";
  if (!has("connection", "upgrade")) return "Connection: Upgrade is missing";
  if (req.headers.get("sec-websocket-version") !== "13") return "Sec-WebSocket-Version must be 13";
  const key = req.headers.get("sec-websocket-key") ?? "";
  if (!/^[A-Za-z0-9+/]{22}==$/.test(key)) return "Sec-WebSocket-Key must be 16 bytes in base64";
  return null;
}

/** A close code a peer may send (RFC 6455 7.4). */
function validCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
    (code >= 3000 && code <= 4999);
}

/**
 * Bytes kept free in front of a whole binary message's payload, for the
 * header of the frame that passes it on: a pipe forwards each message to the
 * other end without copying it into a new frame (the relay's pipes spent a
 * tenth of their CPU on that copy). A multiple of four, so the payload stays
 * aligned for {@linkcode unmask}.
 */
const HEADROOM = 12;
/** Payloads from this size up to {@linkcode POOLED_TO} are read into pooled buffers. */
const POOLED_FROM = 16 * 1024;
/** The largest pooled payload: the largest message our links send. */
const POOLED_TO = 256 * 1024;
/** Free buffers kept per size (16 to 256 KiB, powers of two): at most 7.75 MiB, for all sockets. */
const FREE_PER_SIZE = 16;
/**
 * Payload buffers whose frames were written, by payload size, for the next
 * messages. A new buffer per message cost more than the copy it saves: the
 * allocator gave memory back to the kernel and took it again, and the relay
 * spent its time faulting in fresh pages (bench/relay_tunnel.ts ran at half
 * speed with the relay at 83% of a core, in one run out of three). Sizes are
 * powers of two, so a buffer is never more than twice its payload: a queue's
 * byte count (what backpressure looks at) stays close to the memory it holds.
 */
const pool = new Map<number, ArrayBuffer[]>();
/**
 * Payloads this module read with {@linkcode HEADROOM} free bytes in front,
 * not yet framed: the room is used once, by the first frame built for them.
 */
const roomInFront = new WeakSet<Uint8Array>();
/** Frames built in place over a pooled buffer: the buffer returns to the pool once written. */
const inPlace = new WeakSet<Uint8Array>();

/** An array for a whole message's `length`-byte payload, with room in front for a frame header. */
function payloadArray(length: number): Uint8Array {
  let payload: Uint8Array;
  if (length >= POOLED_FROM && length <= POOLED_TO) {
    let size = POOLED_FROM;
    while (size < length) size *= 2;
    const buffer = pool.get(size)?.pop() ?? new ArrayBuffer(HEADROOM + size);
    payload = new Uint8Array(buffer, HEADROOM, length);
  } else {
    payload = new Uint8Array(HEADROOM + length).subarray(HEADROOM);
  }
  roomInFront.add(payload);
  return payload;
}

/** `frame` was written (or copied): its pooled buffer, if it has one, may be used again. */
function release(frame: Uint8Array): void {
  if (!inPlace.delete(frame)) return;
  const size = frame.buffer.byteLength - HEADROOM;
  if (size < POOLED_FROM || size > POOLED_TO || (size & (size - 1)) !== 0) return;
  let free = pool.get(size);
  if (free === undefined) pool.set(size, free = []);
  if (free.length < FREE_PER_SIZE) free.push(frame.buffer as ArrayBuffer);
}

/**
 * The binary frame of `payload`: its header written in the room in front of
 * it when it has some ({@linkcode HEADROOM}), else a new frame with a copy.
 * A payload a socket read to pass on ({@linkcode ServerWebSocket.passOn}) is
 * the frame's from then on: whoever received it must not keep it (its
 * buffer is reused once the frame is written).
 */
function binaryFrame(payload: Uint8Array): Uint8Array {
  if (!roomInFront.delete(payload)) return encodeFrame(OP_BINARY, payload);
  const n = payload.length;
  const headLength = headerLength(n);
  const frame = new Uint8Array(payload.buffer, payload.byteOffset - headLength, headLength + n);
  writeHeader(frame, OP_BINARY, n);
  inPlace.add(frame);
  return frame;
}

/** Bytes of an unmasked frame header for an `n`-byte payload (RFC 6455 5.2). */
function headerLength(n: number): number {
  return n < 126 ? 2 : n < 65_536 ? 4 : 10;
}

/** Writes the header of an unmasked frame, FIN set, with an `n`-byte payload at the start of `frame`. */
function writeHeader(frame: Uint8Array, opcode: number, n: number): void {
  frame[0] = 0x80 | opcode;
  if (n < 126) {
    frame[1] = n;
  } else if (n < 65_536) {
    frame[1] = 126;
    new DataView(frame.buffer, frame.byteOffset).setUint16(2, n);
  } else {
    frame[1] = 127;
    new DataView(frame.buffer, frame.byteOffset).setBigUint64(2, BigInt(n));
  }
}

/** One unmasked frame (servers do not mask) with FIN set. */
export function encodeFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const n = payload.length;
  const headLength = headerLength(n);
  const frame = new Uint8Array(headLength + n);
  writeHeader(frame, opcode, n);
  frame.set(payload, headLength);
  return frame;
}

/**
 * The frame of a text message, built once for a broadcast: the relay sends
 * the same text to every node of a room in a row, and a frame, once built,
 * is never changed (queues may share it).
 */
let lastText = "";
let lastFrame: Uint8Array | null = null;
function textFrame(text: string): Uint8Array {
  if (lastFrame === null || text !== lastText) {
    lastFrame = encodeFrame(OP_TEXT, encoder.encode(text));
    lastText = text;
  }
  return lastFrame;
}

function closePayload(code: number, reason: string): Uint8Array {
  // A control frame holds at most 125 bytes: the code and 123 of reason.
  let text = encoder.encode(reason);
  if (text.length > 123) text = encoder.encode(reason.slice(0, 40));
  const payload = new Uint8Array(2 + text.length);
  new DataView(payload.buffer).setUint16(0, code);
  payload.set(text, 2);
  return payload;
}

/**
 * Sockets with frames waiting, written together once the event loop has run
 * everything that came in this turn: a node sent several frames in one turn
 * gets them in one write (one syscall, one TCP segment, one wake-up of its
 * reader), not one each. Under load a turn holds more, so the relay spends
 * less per frame just when it matters; idle, a frame waits only for the end
 * of its turn (microseconds).
 *
 * `setImmediate` (node:timers) because Deno has no own primitive for "after
 * this turn's promise callbacks": `setTimeout(0)` waits a millisecond or
 * more, and a microtask runs before the turn's other reads are handled.
 */
let dueNow: (() => void)[] = [];
let dueNext: (() => void)[] = [];
let writeScheduled = false;

function writeSoon(flush: () => void): void {
  dueNow.push(flush);
  if (writeScheduled) return;
  writeScheduled = true;
  setImmediate(writeDue);
}

function writeDue(): void {
  writeScheduled = false;
  // Swapped first: a socket whose write completes at once may ask again.
  const due = dueNow;
  dueNow = dueNext;
  dueNext = due;
  for (let i = 0; i < due.length; i++) due[i]();
  due.length = 0;
}

/** A rule of RFC 6455 the peer broke. */
class Violation extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

/** Settings of a {@linkcode ServerWebSocket}. */
export interface ServerWebSocketOptions {
  /** Largest message (all its fragments) delivered; larger ones are read past and reported. */
  maxMessageBytes: number;
}

/** An accepted WebSocket: text and binary messages in, text out. */
export class ServerWebSocket {
  /** A whole message: a string for text, bytes for binary. */
  onmessage: ((data: string | Uint8Array) => void) | null = null;
  /** A message larger than `maxMessageBytes` arrived (and was dropped). */
  onoversize: (() => void) | null = null;
  /** The connection ended; `code` is 1006 when it ended without a close frame. */
  onclose: ((code: number, reason: string) => void) | null = null;
  /** Everything sent so far was written to the connection. */
  ondrain: (() => void) | null = null;
  /**
   * Binary messages are passed on to another socket's `sendBinary` as they
   * are (a pipe): they are read with room for that frame's header, into
   * pooled buffers reused once that frame is written. A socket whose
   * messages are kept (queued, parsed) reads each into a buffer of its size.
   */
  passOn = false;

  #conn: Deno.Conn;
  #reader: ByteReader;
  #max: number;
  #closeSent = false;
  #ended = false;
  #bufferedAmount = 0;
  /** Frames waiting to be written, in order. */
  #queue: Uint8Array[] = [];
  /** Where in the queue a pong waits, if one does: the next ping's replaces it. */
  #pongAt = -1;
  /** Nothing may reach the connection before the handshake's response: false until `run`. */
  #started = false;
  /** The queue is waiting for the end of this turn ({@linkcode writeSoon}). */
  #scheduled = false;
  /** A write is in flight: what is queued meanwhile goes in the next one. */
  #writing = false;
  /** The bytes of the write in flight. */
  #unwritten: Uint8Array | null = null;
  /** The frame in flight when it went alone: released ({@linkcode release}) once written. */
  #whole: Uint8Array | null = null;
  /** Waiters for the queue to be written (or the socket to end). */
  #idle: PromiseWithResolvers<void> | null = null;
  readonly #flushSoon = () => {
    this.#scheduled = false;
    this.#flush();
  };
  #graceTimer: ReturnType<typeof setTimeout> | undefined;
  #paused: PromiseWithResolvers<void> | null = null;

  /** A socket on `conn` whose handshake is done; `reader` holds what was read past it. */
  constructor(conn: Deno.Conn, reader: ByteReader, options: ServerWebSocketOptions) {
    this.#conn = conn;
    // The request head needed a large buffer; frames need little (payloads
    // are read straight into their own arrays).
    reader.shrink(READ_BUFFER_BYTES);
    this.#reader = reader;
    this.#max = options.maxMessageBytes;
  }

  /** Whether messages may still be sent (no close started). */
  get open(): boolean {
    return !this.#closeSent && !this.#ended;
  }

  /** Bytes handed to `send` and not yet written to the connection. */
  get bufferedAmount(): number {
    return this.#bufferedAmount;
  }

  /** Sends a text message (dropped if the socket is closing). */
  send(text: string): void {
    if (this.open) this.#write(textFrame(text));
  }

  /** Queues a binary message (dropped if the socket is closing); `bufferedAmount` says how much waits. */
  sendBinary(data: Uint8Array): void {
    if (this.open) this.#write(binaryFrame(data), true);
  }

  /** Sends a binary message; resolves once it is written (rejects if the socket ends first). */
  async sendBytes(data: Uint8Array): Promise<void> {
    if (!this.open) throw new Deno.errors.ConnectionReset("the WebSocket is closed");
    this.#write(binaryFrame(data), true);
    await this.#drained();
    if (this.#ended) throw new Deno.errors.ConnectionReset("the WebSocket ended while writing");
  }

  /**
   * Stops reading frames until {@linkcode ServerWebSocket.resume}: the
   * peer's bytes wait in the kernel, and TCP slows the peer down.
   */
  pause(): void {
    this.#paused ??= Promise.withResolvers<void>();
  }

  /** Reads frames again after {@linkcode ServerWebSocket.pause}. */
  resume(): void {
    this.#paused?.resolve();
    this.#paused = null;
  }

  /** Starts the closing handshake; the TCP connection ends when the peer answers, or soon after. */
  close(code = 1000, reason = ""): void {
    if (this.#closeSent || this.#ended) return;
    this.#closeSent = true;
    this.#write(encodeFrame(OP_CLOSE, closePayload(code, reason)));
    this.#graceTimer = setTimeout(
      () => this.#end(1006, "no close frame came back"),
      CLOSE_GRACE_MS,
    );
  }

  /**
   * Runs the socket once the handshake's response is written: reads frames
   * until the connection ends, and resolves then (never rejects).
   */
  run(): Promise<void> {
    this.#started = true;
    this.#schedule();
    // Chained, not awaited in an async frame: a socket waits for days, and
    // every frame it waits in is memory, times every node.
    return this.#readFrames().then(
      (close) => this.#finish(close ?? [1006, "the connection ended without a close frame"]),
      (error) => this.#finish(this.#violated(error)),
    );
  }

  /** Why reading ended with `error`: a rule the peer broke (answered with our close), or a broken connection. */
  #violated(error: unknown): [number, string] {
    // A frame header cannot fill the reader; if one ever did, it is too large.
    if (error instanceof ReaderFull) error = new Violation(1009, "frame header too large");
    if (!(error instanceof Violation)) return [1006, "the connection ended without a close frame"];
    if (!this.#closeSent) {
      this.#closeSent = true;
      this.#write(encodeFrame(OP_CLOSE, closePayload(error.code, error.message)));
    }
    return [error.code, error.message];
  }

  /** Lets our last frames (a close, its echo) go out, unless the peer stops reading; then ends. */
  async #finish([code, reason]: [number, string]): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#drained(),
      new Promise<void>((resolve) => timer = setTimeout(resolve, CLOSE_GRACE_MS)),
    ]);
    clearTimeout(timer);
    this.#end(code, reason);
  }

  /**
   * Queues `frame`. Text (a relay's messages, fanned out) waits for the end of
   * the turn, to share a write with the turn's other frames for this node;
   * binary (a pipe's stream) goes `now` when no write is in flight: a stream
   * is paced by its writes, and waiting a turn before each slowed pipes by
   * about a sixth (bench/relay_tunnel.ts).
   */
  #write(frame: Uint8Array, now = false): void {
    this.#bufferedAmount += frame.length;
    this.#queue.push(frame);
    if (now && this.#started) this.#flush();
    else this.#schedule();
  }

  /**
   * Answers a ping. A pong still queued is replaced by this one, not joined
   * (RFC 6455 5.5.3 allows answering only the latest ping): a peer that
   * pings and never reads would otherwise queue pongs without end.
   */
  #pong(payload: Uint8Array): void {
    const frame = encodeFrame(OP_PONG, payload);
    if (this.#pongAt < 0) {
      this.#pongAt = this.#queue.length;
      return this.#write(frame);
    }
    this.#bufferedAmount += frame.length - this.#queue[this.#pongAt].length;
    this.#queue[this.#pongAt] = frame;
  }

  #schedule(): void {
    if (this.#scheduled || this.#writing || !this.#started) return;
    this.#scheduled = true;
    writeSoon(this.#flushSoon);
  }

  /**
   * Writes the queue, everything waiting in one write, and one write in
   * flight at a time: frames queued meanwhile go in the next. Callbacks, not
   * an async loop: one promise per write (the runtime's), which is most of
   * what a relay does per delivered message besides the syscall.
   */
  #flush(): void {
    if (this.#writing || this.#ended || this.#queue.length === 0) return;
    const frames = this.#queue;
    this.#queue = [];
    this.#pongAt = -1;
    this.#writing = true;
    if (frames.length === 1) {
      this.#whole = frames[0];
      return this.#writeOut(frames[0]);
    }
    const bytes = concat(...frames);
    for (const frame of frames) release(frame);
    this.#writeOut(bytes);
  }

  #writeOut(bytes: Uint8Array): void {
    this.#unwritten = bytes;
    this.#conn.write(bytes).then(this.#written, this.#writeFailed);
  }

  readonly #written = (n: number): void => {
    this.#bufferedAmount -= n;
    const bytes = this.#unwritten!;
    if (n < bytes.length && !this.#ended) return this.#writeOut(bytes.subarray(n)); // a short write
    this.#unwritten = null;
    if (this.#whole !== null && n === bytes.length) release(this.#whole);
    this.#whole = null;
    this.#writing = false;
    if (this.#ended) return;
    if (this.#queue.length > 0) return this.#schedule();
    this.#idle?.resolve();
    this.#idle = null;
    this.ondrain?.();
  };

  readonly #writeFailed = (): void => {
    this.#unwritten = null;
    this.#whole = null;
    this.#writing = false;
    this.#end(1006, "writing failed");
  };

  /** Resolves once everything queued so far was written (or the socket ended). */
  async #drained(): Promise<void> {
    if (this.#ended || (!this.#writing && this.#queue.length === 0)) return;
    this.#idle ??= Promise.withResolvers<void>();
    await this.#idle.promise;
  }

  #end(code: number, reason: string): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#idle?.resolve();
    this.#idle = null;
    this.resume();
    clearTimeout(this.#graceTimer);
    try {
      this.#conn.close();
    } catch {
      // Closed already.
    }
    this.onclose?.(code, reason);
  }

  /** Reads frames and dispatches messages; returns the peer's close, or null if the stream ended. */
  async #readFrames(): Promise<[number, string] | null> {
    const reader = this.#reader;
    let fragments: Uint8Array[] | null = null;
    let fragmentOpcode = OP_TEXT;
    let messageBytes = 0;
    let messageFrames = 0;
    let oversized = false;
    // A node whose frames are always there (a flood) would keep the event
    // loop for its socket alone: every other node's reads, and the timers.
    // Asked only while frames are buffered (a burst): a node whose next frame
    // is not there yet waits for it in a turn of its own, and the relay's
    // usual frame, one per read, costs no clock and no immediate.
    const busy = new BusyReads();
    for (;;) {
      if (reader.buffered.length > 0 && busy.due()) await busy.turn();
      if (this.#paused) await this.#paused.promise;
      // Awaited here, not in a helper: an idle socket waits at this line, and
      // each async frame it waits through is memory, times 10,000 nodes.
      while (reader.buffered.length < 2) if (!(await reader.fill())) return null;
      const [b0, b1] = reader.buffered;
      const fin = (b0 & 0x80) !== 0;
      const opcode = b0 & 0x0f;
      if (b0 & 0x70) throw new Violation(1002, "reserved bits set: no extension was agreed");
      if (!(b1 & 0x80)) throw new Violation(1002, "client frames must be masked");
      const short = b1 & 0x7f;
      const lengthBytes = short === 126 ? 2 : short === 127 ? 8 : 0;
      while (reader.buffered.length < 2 + lengthBytes + 4) {
        if (!(await reader.fill())) return null;
      }
      const view = new DataView(
        reader.buffered.buffer,
        reader.buffered.byteOffset,
        2 + lengthBytes + 4,
      );
      let length = short;
      if (short === 126) length = view.getUint16(2);
      if (short === 127) {
        const high = view.getUint32(2);
        if (high >= 0x200000) throw new Violation(1009, "frame length out of range");
        length = high * 2 ** 32 + view.getUint32(6);
      }
      const mask = reader.buffered.slice(2 + lengthBytes, 2 + lengthBytes + 4);
      reader.consume(2 + lengthBytes + 4);
      if (opcode >= 8) {
        if (!fin || length > 125) throw new Violation(1002, "control frames are whole and short");
        if (opcode !== OP_CLOSE && opcode !== OP_PING && opcode !== OP_PONG) {
          throw new Violation(1002, `unknown opcode ${opcode}`);
        }
      } else if (opcode === OP_CONTINUATION) {
        if (fragments === null) throw new Violation(1002, "a continuation without a message");
      } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
        if (fragments !== null) throw new Violation(1002, "a new message inside a fragmented one");
        fragments = [];
        fragmentOpcode = opcode;
        messageBytes = 0;
        messageFrames = 0;
        oversized = false;
      } else {
        throw new Violation(1002, `unknown opcode ${opcode}`);
      }
      if (opcode < 8) {
        messageBytes += length;
        oversized ||= messageBytes > this.#max || ++messageFrames > MAX_FRAGMENTS;
      }
      const payload = opcode < 8 && oversized
        ? await this.#skip(length)
        : await this.#take(length, this.passOn && opcode === OP_BINARY && fin);
      if (payload === null) return null;
      if (opcode >= 8) {
        unmask(payload, mask);
        if (opcode === OP_PING && this.open) this.#pong(payload);
        if (opcode === OP_CLOSE) return this.#answerClose(payload);
        continue;
      }
      if (!oversized) {
        unmask(payload, mask);
        if (payload.length > 0 || fragments!.length === 0) fragments!.push(payload);
      } else {
        fragments = [];
      }
      if (!fin) continue;
      const parts = fragments!;
      fragments = null;
      if (oversized) {
        this.onoversize?.();
        continue;
      }
      const data = parts.length === 1 ? parts[0] : concat(...parts);
      if (fragmentOpcode === OP_BINARY) {
        this.onmessage?.(data);
        continue;
      }
      let text: string;
      try {
        text = strictUtf8.decode(data);
      } catch {
        throw new Violation(1007, "text messages must be valid UTF-8");
      }
      this.onmessage?.(text);
    }
  }

  /** The peer's close frame: check it, answer it once, and report it. */
  #answerClose(payload: Uint8Array): [number, string] {
    if (payload.length === 1) throw new Violation(1002, "a close frame cannot hold one byte");
    let code = 1005; // "no status received"
    let reason = "";
    if (payload.length >= 2) {
      code = new DataView(payload.buffer, payload.byteOffset).getUint16(0);
      if (!validCloseCode(code)) throw new Violation(1002, `invalid close code ${code}`);
      try {
        reason = strictUtf8.decode(payload.subarray(2));
      } catch {
        throw new Violation(1007, "the close reason must be valid UTF-8");
      }
    }
    if (!this.#closeSent) {
      this.#closeSent = true;
      this.#write(encodeFrame(OP_CLOSE, payload.length >= 2 ? payload.subarray(0, 2) : payload));
    }
    return [code, reason];
  }

  /** The next `length` bytes, with room in front for a frame header if `passedOn` (a whole message passed on). */
  async #take(length: number, passedOn: boolean): Promise<Uint8Array | null> {
    const out = passedOn ? payloadArray(length) : new Uint8Array(length);
    return (await this.#reader.readFull(out)) ? out : null;
  }

  async #skip(length: number): Promise<Uint8Array | null> {
    for (let left = length; left > 0;) {
      const part = await this.#reader.readSome(Math.min(left, 65_536));
      if (part === null) return null;
      left -= part.length;
    }
    return new Uint8Array(0);
  }
}

/**
 * XORs `payload` with the 4-byte `mask`, four bytes at a time where the
 * payload is aligned (ours always is: `#take` allocates it): several times
 * faster than byte by byte, and the relay's pipes unmask every byte.
 */
function unmask(payload: Uint8Array, mask: Uint8Array): void {
  const words = payload.byteOffset % 4 === 0 ? payload.length >>> 2 : 0;
  if (words > 0) {
    // The mask as a word in this machine's byte order, so each word's bytes line up.
    const word = new Uint32Array(mask.slice().buffer)[0];
    const view = new Uint32Array(payload.buffer, payload.byteOffset, words);
    for (let i = 0; i < words; i++) view[i] ^= word;
  }
  for (let i = words * 4; i < payload.length; i++) payload[i] ^= mask[i & 3];
}
