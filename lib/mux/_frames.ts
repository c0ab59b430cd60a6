/**
 * The wire format of stream multiplexing, carried inside one ImmortalConn's
 * byte stream (which is already reliable, ordered and resumable, so this
 * layer has no positions, acks or replay of its own). PROTOCOL.md §3 is the
 * specification.
 *
 * Each side first sends the 8-byte greeting `IMMUX` 0x01 0x00 0x00, then
 * frames: a 9-byte header (type u8, stream id u32, payload length u32, all
 * big-endian) and the payload.
 *
 * @module
 */

import { readU32, writeU32 } from "../frame/_bytes.ts";

/** What each side sends first: "IMMUX", version 1, two reserved zero bytes. */
export const GREETING: Uint8Array = new Uint8Array([0x49, 0x4d, 0x4d, 0x55, 0x58, 0x01, 0, 0]);
/** Size of a frame header. */
export const HEADER_SIZE = 9;
/** Most payload one data frame carries. */
export const MAX_DATA = 256 * 1024;
/** Most bytes of an open frame's metadata, or of a refuse or reset reason. */
export const MAX_TEXT = 1024;
/**
 * The receive window every stream starts with, in each direction: data may
 * follow an open frame at once, before the accept, up to this much.
 */
export const INITIAL_WINDOW = 256 * 1024;
/** Largest window a credit frame may open (2^31 − 1, as in HTTP/2). */
export const MAX_WINDOW = 0x7fff_ffff;

/** Frame types. */
export const FrameType = {
  /** Opens a stream; payload: metadata for the acceptor (what to connect to, say). */
  open: 0x01,
  /** The acceptor took the stream. No payload. */
  accept: 0x02,
  /** The acceptor turned the stream down; payload: the reason (UTF-8). */
  refuse: 0x03,
  /** Stream bytes. */
  data: 0x04,
  /** The receiver consumed bytes: the sender may send this many more (u32). */
  credit: 0x05,
  /** The sender's direction of the stream ended (half-close). No payload. */
  fin: 0x06,
  /** Both directions aborted; payload: the reason (UTF-8). */
  reset: 0x07,
} as const;

/** Largest payload each type may carry. */
const LIMITS: Record<number, number> = {
  [FrameType.open]: MAX_TEXT,
  [FrameType.accept]: 0,
  [FrameType.refuse]: MAX_TEXT,
  [FrameType.data]: MAX_DATA,
  [FrameType.credit]: 4,
  [FrameType.fin]: 0,
  [FrameType.reset]: MAX_TEXT,
};

/** A malformed multiplexed stream: the session cannot go on. */
export class MuxProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MuxProtocolError";
  }
}

/** A frame header followed by its payload, as one buffer. */
export function encodeFrame(type: number, stream: number, payload?: Uint8Array): Uint8Array {
  const length = payload?.length ?? 0;
  const out = new Uint8Array(HEADER_SIZE + length);
  writeHeader(out, type, stream, length);
  if (payload) out.set(payload, HEADER_SIZE);
  return out;
}

/** Writes a frame header at the start of `out`. */
export function writeHeader(out: Uint8Array, type: number, stream: number, length: number): void {
  out[0] = type;
  writeU32(out, 1, stream);
  writeU32(out, 5, length);
}

/** A credit frame granting `increment` more bytes. */
export function encodeCredit(stream: number, increment: number): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + 4);
  writeHeader(out, FrameType.credit, stream, 4);
  writeU32(out, HEADER_SIZE, increment);
  return out;
}

/** What the parser hands on. */
export interface FrameHandler {
  /**
   * Bytes of a data frame: a frame may come in several pieces. `bytes` is a
   * view into the caller's chunk: copy what you keep.
   */
  data(stream: number, bytes: Uint8Array): void;
  /** Any other frame, whole; `payload` is the parser's own (keep it if you like). */
  control(type: number, stream: number, payload: Uint8Array): void;
  /** The peer's greeting came whole: it speaks stream multiplexing. */
  greeted?(): void;
}

/**
 * Incremental parser: feed it the byte stream in chunks of any size. It
 * checks the greeting, then hands frames to a {@linkcode FrameHandler}.
 */
export class FrameParser {
  #handler: FrameHandler;
  #greeting = 0;
  #header = new Uint8Array(HEADER_SIZE);
  #headerLength = 0;
  #type = 0;
  #stream = 0;
  /** Payload bytes of the current frame still to come. */
  #remaining = 0;
  /** A control frame's payload being gathered. */
  #payload: Uint8Array | null = null;
  #payloadLength = 0;

  constructor(handler: FrameHandler) {
    this.#handler = handler;
  }

  /** Parses `chunk`; throws {@linkcode MuxProtocolError} on malformed input. */
  push(chunk: Uint8Array): void {
    let off = 0;
    const end = chunk.length;
    while (this.#greeting < GREETING.length && off < end) {
      if (chunk[off] !== GREETING[this.#greeting]) {
        throw new MuxProtocolError("the peer does not speak stream multiplexing (bad greeting)");
      }
      this.#greeting++;
      off++;
      if (this.#greeting === GREETING.length) this.#handler.greeted?.();
    }
    while (off < end) {
      if (this.#remaining > 0) {
        const n = Math.min(this.#remaining, end - off);
        if (this.#payload === null) {
          this.#handler.data(this.#stream, chunk.subarray(off, off + n));
        } else {
          this.#payload.set(chunk.subarray(off, off + n), this.#payloadLength);
          this.#payloadLength += n;
        }
        this.#remaining -= n;
        off += n;
        if (this.#remaining === 0 && this.#payload !== null) this.#finishControl();
        continue;
      }
      const n = Math.min(HEADER_SIZE - this.#headerLength, end - off);
      this.#header.set(chunk.subarray(off, off + n), this.#headerLength);
      this.#headerLength += n;
      off += n;
      if (this.#headerLength < HEADER_SIZE) return;
      this.#headerLength = 0;
      this.#startFrame();
    }
  }

  #startFrame(): void {
    const type = this.#header[0];
    const length = readU32(this.#header, 5);
    const limit = LIMITS[type];
    if (limit === undefined) {
      throw new MuxProtocolError(`unknown frame type 0x${type.toString(16).padStart(2, "0")}`);
    }
    if (length > limit) {
      throw new MuxProtocolError(`frame type ${type} of ${length} bytes (limit ${limit})`);
    }
    this.#type = type;
    this.#stream = readU32(this.#header, 1);
    if (type === FrameType.data) {
      if (length === 0) throw new MuxProtocolError("empty data frame");
      this.#payload = null;
      this.#remaining = length;
      return;
    }
    if (type === FrameType.credit && length !== 4) {
      throw new MuxProtocolError(`credit frame of ${length} bytes (must be 4)`);
    }
    this.#payload = new Uint8Array(length);
    this.#payloadLength = 0;
    this.#remaining = length;
    if (length === 0) this.#finishControl();
  }

  #finishControl(): void {
    const payload = this.#payload!;
    this.#payload = null;
    this.#handler.control(this.#type, this.#stream, payload);
  }
}
