/**
 * Incremental frame decoder. Bytes go in as they arrive from a link, in any
 * chunking; complete, validated frames come out. Anything malformed throws a
 * {@linkcode FrameError} and poisons the decoder: a link that sent garbage is
 * never trusted again.
 *
 * Memory: a frame's body is only allocated after its header passed the size
 * check, so no input can make the decoder allocate more than `maxFrameSize`.
 * Data frames are never gathered at all: a data frame split across chunks
 * comes out as several smaller data frames, in order, as its bytes arrive
 * (positions are implicit, so this changes nothing for the receiver).
 *
 * @module
 */

import {
  type Frame,
  FRAME_HEADER_SIZE,
  FrameCode,
  HELLO_MAGIC,
  MAX_FRAME_PAYLOAD,
  MAX_REASON_BYTES,
  PROTOCOL_VERSION,
  REJECT_CODES,
  SEALED_BIT,
} from "./frame.ts";
import { FrameError } from "./frame_error.ts";
import { readF64, readU32, readU64 } from "./_bytes.ts";

/** Options for {@linkcode FrameDecoder}. */
export interface FrameDecoderOptions {
  /** Largest payload accepted, in bytes. Default and hard cap: 1 MiB. */
  maxFrameSize?: number;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

// Largest payload a frame type may carry; data frames use the decoder's limit.
const FIXED_LIMITS: Record<number, number> = {
  [FrameCode.ack]: 8,
  [FrameCode.ping]: 8,
  [FrameCode.pong]: 8,
  [FrameCode.fin]: 8,
  [FrameCode.close]: MAX_REASON_BYTES,
  [FrameCode.bye]: 0,
  [FrameCode.hello]: 58,
  [FrameCode.challenge]: 32,
  [FrameCode.proof]: 32,
  [FrameCode.accept]: 85,
  [FrameCode.reject]: 1 + MAX_REASON_BYTES,
};

function expectValid(ok: boolean, what: string): void {
  if (!ok) throw new FrameError(what);
}

function decodeText(p: Uint8Array): string {
  try {
    return utf8.decode(p);
  } catch {
    throw new FrameError("reason is not valid UTF-8");
  }
}

function parsePayload(type: number, p: Uint8Array): Frame {
  switch (type) {
    case FrameCode.data:
      expectValid(p.length > 0, "empty data frame");
      return { type: "data", data: p };
    case FrameCode.ack:
      expectValid(p.length === 8, "ack frame must be 8 bytes");
      return { type: "ack", position: readU64(p, 0) };
    case FrameCode.fin:
      expectValid(p.length === 8, "fin frame must be 8 bytes");
      return { type: "fin", position: readU64(p, 0) };
    case FrameCode.ping:
    case FrameCode.pong:
      expectValid(p.length === 8, "ping/pong frame must be 8 bytes");
      return { type: type === FrameCode.ping ? "ping" : "pong", stamp: readF64(p, 0) };
    case FrameCode.close:
      return { type: "close", reason: decodeText(p) };
    case FrameCode.bye:
      return { type: "bye" };
    case FrameCode.hello: {
      expectValid(p.length >= 5, "hello frame too short");
      expectValid(HELLO_MAGIC.every((b, i) => p[i] === b), "not an immortal hello");
      // Other versions may lay out the rest differently: report only the version.
      if (p[4] !== PROTOCOL_VERSION) {
        return { type: "hello", version: p[4], nonce: p.subarray(0, 0), window: 0 };
      }
      expectValid(p.length >= 26, "hello frame too short");
      const nonce = p.subarray(6, 22);
      const window = readU32(p, 22);
      const kind = p[5] & ~SEALED_BIT;
      const sealed = (p[5] & SEALED_BIT) !== 0;
      if (kind === 0) {
        expectValid(p.length === 58, "hello (new) must be 58 bytes");
        return {
          type: "hello",
          version: p[4],
          nonce,
          window,
          publicKey: p.subarray(26, 58),
          ...(sealed ? { sealed } : {}),
        };
      }
      expectValid(kind === 1 && p.length === 50, "hello (resume) must be 50 bytes");
      return {
        type: "hello",
        version: p[4],
        nonce,
        window,
        resume: { sessionId: p.subarray(26, 42), received: readU64(p, 42) },
        ...(sealed ? { sealed } : {}),
      };
    }
    case FrameCode.challenge:
      expectValid(p.length === 32, "challenge must be 32 bytes");
      return { type: "challenge", nonce: p };
    case FrameCode.proof:
      expectValid(p.length === 0 || p.length === 32, "proof must be 0 or 32 bytes");
      return { type: "proof", mac: p };
    case FrameCode.accept: {
      expectValid(p.length >= 5, "accept frame too short");
      const fixed = p[0] === 0 ? 53 : 13;
      expectValid(p[0] <= 1, "unknown accept kind");
      expectValid(p.length === fixed || p.length === fixed + 32, "accept frame has a bad size");
      const window = readU32(p, 1);
      const mac = p.subarray(fixed);
      if (p[0] === 0) {
        return {
          type: "accept",
          created: { sessionId: p.subarray(5, 21), publicKey: p.subarray(21, 53) },
          window,
          mac,
        };
      }
      return { type: "accept", received: readU64(p, 5), window, mac };
    }
    case FrameCode.reject: {
      expectValid(p.length >= 1 && p[0] < REJECT_CODES.length, "unknown reject code");
      return { type: "reject", code: REJECT_CODES[p[0]], reason: decodeText(p.subarray(1)) };
    }
    default:
      throw new FrameError(`unknown frame type 0x${type.toString(16).padStart(2, "0")}`);
  }
}

/**
 * Decodes a byte stream into frames.
 *
 * Payloads of frames that lie wholly inside one pushed chunk are views into
 * that chunk (no copy): a caller that reuses its read buffer must copy what it
 * keeps before pushing again.
 *
 * @example Frames split across chunks come out whole
 * ```ts
 * import { encodeFrame, type Frame, FrameDecoder } from "@immortal/sockets/frame";
 *
 * const wire = encodeFrame({ type: "data", data: new TextEncoder().encode("hello") });
 * const decoder = new FrameDecoder();
 * const frames: Frame[] = [];
 * decoder.push(wire.subarray(0, 3), frames); // half a header: nothing yet
 * decoder.push(wire.subarray(3), frames);
 * const [frame] = frames;
 * if (frame.type !== "data" || new TextDecoder().decode(frame.data) !== "hello") {
 *   throw new Error("decoded the wrong frame");
 * }
 * ```
 */
export class FrameDecoder {
  #maxFrameSize: number;
  #header = new Uint8Array(FRAME_HEADER_SIZE);
  #headerLength = 0;
  #type = 0;
  #body: Uint8Array | null = null;
  #bodyLength = 0;
  /** Bytes of a data frame still to come in later chunks. */
  #dataRemaining = 0;
  #failure: FrameError | null = null;

  /** Creates a decoder; see {@linkcode FrameDecoderOptions}. */
  constructor(options: FrameDecoderOptions = {}) {
    const max = options.maxFrameSize ?? MAX_FRAME_PAYLOAD;
    if (!Number.isInteger(max) || max < 1 || max > MAX_FRAME_PAYLOAD) {
      throw new RangeError(`maxFrameSize must be an integer in 1..${MAX_FRAME_PAYLOAD}`);
    }
    this.#maxFrameSize = max;
  }

  /** True while a frame has started but not yet completed. */
  get partial(): boolean {
    return this.#headerLength > 0 || this.#body !== null || this.#dataRemaining > 0;
  }

  /**
   * Feeds `chunk` and appends every frame it completes to `out`.
   * @throws {FrameError} on malformed input (and on every call after that).
   */
  push(chunk: Uint8Array, out: Frame[]): void {
    if (this.#failure) throw this.#failure;
    try {
      this.#push(chunk, out);
    } catch (error) {
      this.#failure = error instanceof FrameError ? error : new FrameError(String(error));
      throw this.#failure;
    }
  }

  #limit(type: number): number {
    if (type === FrameCode.data) return this.#maxFrameSize;
    const limit = FIXED_LIMITS[type];
    if (limit === undefined) {
      throw new FrameError(`unknown frame type 0x${type.toString(16).padStart(2, "0")}`);
    }
    return limit;
  }

  #push(chunk: Uint8Array, out: Frame[]): void {
    let off = 0;
    const end = chunk.length;
    while (off < end) {
      if (this.#dataRemaining > 0) {
        const n = Math.min(this.#dataRemaining, end - off);
        out.push({ type: "data", data: chunk.subarray(off, off + n) });
        this.#dataRemaining -= n;
        off += n;
        continue;
      }
      if (this.#body === null) {
        let length: number;
        if (this.#headerLength === 0 && end - off >= FRAME_HEADER_SIZE) {
          this.#type = chunk[off];
          length = readU32(chunk, off + 1);
          off += FRAME_HEADER_SIZE;
        } else {
          const n = Math.min(FRAME_HEADER_SIZE - this.#headerLength, end - off);
          this.#header.set(chunk.subarray(off, off + n), this.#headerLength);
          this.#headerLength += n;
          off += n;
          if (this.#headerLength < FRAME_HEADER_SIZE) return;
          this.#headerLength = 0;
          this.#type = this.#header[0];
          length = readU32(this.#header, 1);
        }
        const limit = this.#limit(this.#type);
        if (length > limit) {
          throw new FrameError(`frame of ${length} bytes exceeds the limit of ${limit}`);
        }
        if (end - off >= length) {
          out.push(parsePayload(this.#type, chunk.subarray(off, off + length)));
          off += length;
          continue;
        }
        if (this.#type === FrameCode.data) {
          if (length === 0) throw new FrameError("empty data frame");
          this.#dataRemaining = length;
          continue;
        }
        this.#body = new Uint8Array(length);
        this.#bodyLength = 0;
      }
      const body = this.#body;
      const n = Math.min(body.length - this.#bodyLength, end - off);
      body.set(chunk.subarray(off, off + n), this.#bodyLength);
      this.#bodyLength += n;
      off += n;
      if (this.#bodyLength === body.length) {
        this.#body = null;
        out.push(parsePayload(this.#type, body));
      }
    }
  }
}
