/**
 * Buffers for received stream data, reused. Each data piece a stream receives
 * is copied out of the session's read buffer (which is reused at once) into
 * its queue. Allocating a chunk per piece made the garbage collector a third
 * of a busy tunnel's work, so pieces of 16 KiB and more go into pooled 256
 * KiB buffers, given back once written out.
 *
 * A piece that arrives while the last chunk of the queue still has room is
 * copied in behind it instead ({@linkcode ChunkPool.append}): the pieces of
 * a busy stream (a multiplexed frame cut by the session's frames and by link
 * reads comes as two or three) go out to the local socket in one write, not
 * one per piece; a small write there costs as much as a large one.
 *
 * Memory: a new chunk is only started when the last one cannot take the
 * piece, so any two neighbouring chunks hold more than one buffer's worth:
 * a queue of `q` bytes holds at most `2q` plus one buffer. Pieces under 16
 * KiB that do not fit behind the last chunk are plain copies, so a stream
 * sent a few bytes pins a few bytes, not a whole buffer.
 *
 * @module
 */

import { MAX_DATA } from "./_frames.ts";

/** Pieces at least this large start a pooled chunk. */
const MIN_POOLED = 16 * 1024;
/** Size of every pooled buffer: one whole data frame's payload. */
const CHUNK_SIZE = MAX_DATA;
/** Free buffers kept: at most 4 MiB held by a session's pool. */
const MAX_FREE = 16;

/** @internal */
export class ChunkPool {
  #free: ArrayBuffer[] = [];

  /** A copy of `bytes` the caller owns (in a pooled buffer when large). */
  copy(bytes: Uint8Array): Uint8Array {
    if (bytes.length < MIN_POOLED) return bytes.slice();
    const chunk = new Uint8Array(this.#free.pop() ?? new ArrayBuffer(CHUNK_SIZE), 0, bytes.length);
    chunk.set(bytes);
    return chunk;
  }

  /**
   * `tail` (the newest chunk of a queue, not handed out) grown by `bytes`,
   * copied in right behind it, if its buffer has room: null if not. The
   * caller replaces `tail` with the result.
   */
  append(tail: Uint8Array, bytes: Uint8Array): Uint8Array | null {
    const length = tail.length + bytes.length;
    if (tail.byteOffset + length > tail.buffer.byteLength) return null;
    const grown = new Uint8Array(tail.buffer, tail.byteOffset, length);
    grown.set(bytes, tail.length);
    return grown;
  }

  /**
   * Gives back a whole chunk from {@linkcode copy} whose bytes nobody needs
   * any more. Anything else (a plain copy, part of a chunk) is ignored.
   */
  release(chunk: Uint8Array): void {
    if (
      chunk.byteOffset !== 0 || chunk.length < MIN_POOLED ||
      chunk.buffer.byteLength !== CHUNK_SIZE
    ) return;
    if (this.#free.length < MAX_FREE) this.#free.push(chunk.buffer as ArrayBuffer);
  }
}
