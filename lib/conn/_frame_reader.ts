/**
 * Reads frames off a link: one reused read buffer, one decoder. Shared by the
 * handshake (frame by frame) and the session's read loop (in batches), so that
 * frames that arrive right behind the handshake are not lost.
 *
 * @module
 */

import { type Frame, FrameDecoder } from "../frame/mod.ts";
import type { Link } from "../link/mod.ts";

const READ_BUFFER_SIZE = 256 * 1024;

/** @internal */
export class FrameReader {
  readonly link: Link;
  #decoder = new FrameDecoder();
  #buffer = new Uint8Array(READ_BUFFER_SIZE);
  #pending: Frame[] = [];

  constructor(link: Link) {
    this.link = link;
  }

  /**
   * Next batch of frames, or `null` at end of stream. Data payloads are views
   * into the read buffer, valid until the next call: copy what you keep.
   */
  async nextBatch(): Promise<Frame[] | null> {
    while (this.#pending.length === 0) {
      const n = await this.link.read(this.#buffer);
      if (n === null) return null;
      this.#decoder.push(this.#buffer.subarray(0, n), this.#pending);
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
