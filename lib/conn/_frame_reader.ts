/**
 * Reads frames off a link: one reused read buffer, one decoder. Shared by the
 * handshake (frame by frame) and the session's read loop (in batches), so that
 * frames that arrive right behind the handshake are not lost.
 *
 * @module
 */

import { type Frame, FrameDecoder } from "../frame/mod.ts";
import type { Link } from "../link/mod.ts";

/** Size of a link's read buffer. */
export const READ_BUFFER_SIZE = 256 * 1024;
/** A read after kept bytes needs at least this much room, or it goes to a fresh buffer. */
const MIN_READ_ROOM = 64 * 1024;

/** @internal */
export class FrameReader {
  readonly link: Link;
  #decoder = new FrameDecoder();
  #buffer = new Uint8Array(READ_BUFFER_SIZE);
  #pending: Frame[] = [];
  /** Where the next read goes in the buffer, and where the last one ended. */
  #offset = 0;
  #end = 0;

  constructor(link: Link) {
    this.link = link;
  }

  /**
   * Between batches: `kept` says whether views into the read buffer are still
   * in use (queued by the session). Their bytes are never read over: the next
   * read goes after them, or into `fresh()` once too little room is left.
   * Without kept views the next read starts at the beginning again.
   */
  afterBatch(
    kept: boolean,
    fresh: (old: Uint8Array<ArrayBuffer>) => Uint8Array<ArrayBuffer>,
  ): void {
    if (!kept) {
      this.#offset = 0;
    } else if (this.#buffer.length - this.#end >= MIN_READ_ROOM) {
      this.#offset = this.#end;
    } else {
      this.#buffer = fresh(this.#buffer);
      this.#offset = 0;
    }
  }

  /** The buffer reads go into now (the session lends views into it). */
  get buffer(): Uint8Array<ArrayBuffer> {
    return this.#buffer;
  }

  /**
   * Next batch of frames, or `null` at end of stream. Data payloads are views
   * into the read buffer, valid until the next call unless kept (see
   * {@linkcode afterBatch}): copy what you keep otherwise.
   */
  async nextBatch(): Promise<Frame[] | null> {
    while (this.#pending.length === 0) {
      const n = await this.link.read(this.#buffer.subarray(this.#offset));
      if (n === null) return null;
      this.#end = this.#offset + n;
      this.#decoder.push(this.#buffer.subarray(this.#offset, this.#end), this.#pending);
    }
    const batch = this.#pending;
    this.#pending = [];
    return batch;
  }

  /** Next single frame (handshake use; payloads are copied), or `null` at end of stream. */
  async nextFrame(): Promise<Frame | null> {
    if (this.#pending.length === 0) {
      const batch = await this.nextBatch();
      if (batch === null) return null;
      // Copy out of the read buffer: later frames stay queued and must not be overwritten.
      this.#pending = batch.map(detach);
    }
    return this.#pending.shift()!;
  }
}

// Deep copy that copies only the bytes a view covers (structuredClone would
// copy the whole read buffer behind every view).
function detach<T>(value: T): T {
  if (value instanceof Uint8Array) return value.slice() as T;
  if (value === null || typeof value !== "object") return value;
  const copy: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) copy[k] = detach(v);
  return copy as T;
}
