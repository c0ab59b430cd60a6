/**
 * Received chunks in order, taken from the front: the receive queue of a
 * session and of each multiplexed stream.
 *
 * @module
 */

/** What a slot holds once its chunk was taken: nothing to keep alive. */
const TAKEN = new Uint8Array(0);

/**
 * A queue of byte chunks. Taking from the front moves a head rather than
 * shifting the array (a shift per chunk is linear in the queue), and clears
 * the slot it leaves: a queue that never empties (a reader one chunk behind
 * its sender) would otherwise keep every chunk it ever handed out, memory
 * growing with the bytes moved. It is compacted now and then.
 */
export class ChunkQueue {
  #items: Uint8Array[] = [];
  #head = 0;

  /** Chunks queued. */
  get length(): number {
    return this.#items.length - this.#head;
  }

  /** The oldest chunk; only while {@linkcode ChunkQueue.length} > 0. */
  get first(): Uint8Array {
    return this.#items[this.#head];
  }

  /** Replaces the oldest chunk (with what is left of it, after a partial take). */
  set first(chunk: Uint8Array) {
    this.#items[this.#head] = chunk;
  }

  /** The newest chunk, or undefined when the queue is empty. */
  get last(): Uint8Array | undefined {
    return this.length > 0 ? this.#items[this.#items.length - 1] : undefined;
  }

  /** Replaces the newest chunk (one filled further); only while the queue is not empty. */
  set last(chunk: Uint8Array) {
    this.#items[this.#items.length - 1] = chunk;
  }

  /** Adds `chunk` at the end. */
  push(chunk: Uint8Array): void {
    this.#items.push(chunk);
  }

  /** Drops the oldest chunk (the caller took it whole). */
  shift(): void {
    this.#items[this.#head++] = TAKEN;
    if (this.#head === this.#items.length) {
      this.#items = [];
      this.#head = 0;
    } else if (this.#head >= 64 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
  }
}
