/**
 * Buffers for received stream data, reused. Each data piece a stream receives
 * is copied out of the session's read buffer (which is reused at once) into
 * its queue. Allocating a chunk per piece made the garbage collector a third
 * of a busy tunnel's work, so pieces of 16 KiB and more go into pooled 256
 * KiB buffers, given back once written out.
 *
 * A piece that arrives while the last chunk of the queue (not yet handed
 * out) still has room is copied in behind it instead, as much of it as fits
 * ({@linkcode ChunkPool.extend}): the pieces of a busy stream (a multiplexed
 * frame cut by the session's frames and by link reads comes as two or three)
 * go out to the local socket in full 256 KiB writes, not one per piece; a
 * small write there costs as much as a large one.
 *
 * Memory: a new chunk is only started when the last one has no room left (a
 * full pooled chunk, a filled small buffer, a plain copy), so every 256 KiB
 * chunk but the last is full: a queue of `q` bytes holds at most `q` plus two
 * buffers (the last one's free room, and the part of the first that the
 * reader already took). A piece under 16 KiB that starts a chunk of a quiet
 * stream takes no 256 KiB buffer, so a stream sent a few bytes pins a few
 * bytes (or a 4 KiB small buffer), not a whole one; behind a full chunk (a busy stream) it is pooled, as the
 * rest of the burst will follow it. One under 4 KiB (or of 4 KiB, starting
 * an empty queue) goes into a small reused 4 KiB buffer, which the pieces
 * behind it fill before another starts (so small chunks are full but the
 * last, whatever the pieces' sizes); one of 4 to 16 KiB is a plain copy.
 * Chunks handed to an application that keeps them (`readable`) are copied
 * out of buffers much larger than they are.
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
/** Size of the small buffers small pieces go into (one a queue, filled before another starts). */
const SMALL_SIZE = 4096;
/** Free small buffers kept: at most 64 KiB. */
const MAX_FREE_SMALL = 16;

/** Whether `chunk` is a pooled 256 KiB chunk filled to its buffer's end. */
function isFull(chunk: Uint8Array): boolean {
  return chunk.buffer.byteLength === CHUNK_SIZE && chunk.byteOffset + chunk.length === CHUNK_SIZE;
}

/** @internal */
export class ChunkPool {
  #free: ArrayBuffer[] = [];
  #freeSmall: ArrayBuffer[] = [];

  /**
   * A copy of `bytes` the caller owns, starting a new chunk `behind` the
   * queue's last one (null: the queue is empty): in a pooled 256 KiB buffer
   * if it is large or follows a full one (the stream is busy); in a reused 4
   * KiB one if it is small (a request or a reply: the reader is waiting, so
   * it comes back soon, and creating an ArrayBuffer in Deno costs half a
   * microsecond and garbage-collector work, per message); else a plain copy.
   */
  copy(bytes: Uint8Array, behind: Uint8Array | null): Uint8Array {
    let buffer: ArrayBuffer;
    if (bytes.length >= MIN_POOLED || (behind !== null && isFull(behind))) {
      buffer = this.#free.pop() ?? new ArrayBuffer(CHUNK_SIZE);
    } else if (bytes.length < SMALL_SIZE || (behind === null && bytes.length === SMALL_SIZE)) {
      // Behind a chunk with no room too: a plain copy of a tiny piece has no
      // room either, so a peer's one-byte frames queued as a chunk each,
      // some 200 bytes of memory per byte of the window. In a small buffer
      // the pieces behind it go in behind it, 4 KiB a chunk.
      buffer = this.#freeSmall.pop() ?? new ArrayBuffer(SMALL_SIZE);
    } else {
      return bytes.slice();
    }
    const chunk = new Uint8Array(buffer, 0, bytes.length);
    chunk.set(bytes);
    return chunk;
  }

  /**
   * `tail` (the newest chunk of a queue, not handed out) grown by as much of
   * `bytes` as its buffer has room for, copied in right behind it; `tail`
   * itself if there is none. The caller replaces `tail` with the result and
   * copies the rest of `bytes` into a new chunk.
   */
  extend(tail: Uint8Array, bytes: Uint8Array): Uint8Array {
    const room = tail.buffer.byteLength - tail.byteOffset - tail.length;
    if (room <= 0 || bytes.length === 0) return tail;
    const taken = Math.min(room, bytes.length);
    const grown = new Uint8Array(tail.buffer, tail.byteOffset, tail.length + taken);
    grown.set(bytes.subarray(0, taken), tail.length);
    return grown;
  }

  /**
   * Gives back a whole chunk from {@linkcode copy} whose bytes nobody needs
   * any more. Anything else (part of a chunk) is ignored.
   */
  release(chunk: Uint8Array): void {
    if (chunk.byteOffset !== 0) return;
    // A plain copy is never 256 KiB (it is under 16 KiB); one of exactly 4
    // KiB is as good as a small buffer of the pool's own.
    const size = chunk.buffer.byteLength;
    if (size === CHUNK_SIZE) {
      if (this.#free.length < MAX_FREE) this.#free.push(chunk.buffer as ArrayBuffer);
    } else if (size === SMALL_SIZE) {
      if (this.#freeSmall.length < MAX_FREE_SMALL) {
        this.#freeSmall.push(chunk.buffer as ArrayBuffer);
      }
    }
  }
}
