/**
 * Buffers for received stream data, reused. Each data piece a stream receives
 * is copied out of the session's read buffer (which is reused at once) into
 * a chunk of its own that waits in the stream's queue. Allocating those
 * chunks fresh made the garbage collector a third of a busy tunnel's work;
 * pieces of 16 KiB and more now go into pooled buffers of a power-of-two size
 * from 16 to 256 KiB (never more than twice their size), given back once
 * written out. Smaller
 * pieces are plain copies: pinning a large buffer for a few bytes would let
 * a stream that is not read hold far more than its window.
 *
 * @module
 */

import { MAX_DATA } from "./_frames.ts";

/** Pieces at least this large are pooled. */
const MIN_POOLED = 16 * 1024;
/** Free buffers kept per size: at most 7.75 MiB held by a session's pool. */
const MAX_FREE_PER_SIZE = 16;

/** @internal */
export class ChunkPool {
  #free = new Map<number, ArrayBuffer[]>();

  /** A copy of `bytes` the caller owns (in a pooled buffer when large). */
  copy(bytes: Uint8Array): Uint8Array {
    if (bytes.length < MIN_POOLED) return bytes.slice();
    let size = MIN_POOLED;
    while (size < bytes.length) size *= 2;
    const buffer = this.#free.get(size)?.pop() ?? new ArrayBuffer(size);
    const chunk = new Uint8Array(buffer, 0, bytes.length);
    chunk.set(bytes);
    return chunk;
  }

  /**
   * Gives back a whole chunk from {@linkcode copy} whose bytes nobody needs
   * any more. Anything else (a plain copy, part of a chunk) is ignored.
   */
  release(chunk: Uint8Array): void {
    const size = chunk.buffer.byteLength;
    if (chunk.byteOffset !== 0 || chunk.length < MIN_POOLED || size > MAX_DATA) return;
    let free = this.#free.get(size);
    if (free === undefined) this.#free.set(size, free = []);
    if (free.length < MAX_FREE_PER_SIZE) free.push(chunk.buffer as ArrayBuffer);
  }
}
