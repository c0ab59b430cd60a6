/**
 * The sender's replay buffer: a ring holding every byte written but not yet
 * acknowledged, addressed by absolute session byte positions. Its capacity is
 * the session's `maxUnackedBytes`, so memory is bounded by construction; it
 * starts small and grows on demand, so idle sessions stay cheap.
 *
 * @module
 */

const INITIAL_SIZE = 64 * 1024;

/** Bounded ring of unacknowledged bytes. */
export class ReplayBuffer {
  #ring: Uint8Array;
  #capacity: number;
  #start = 0;
  #end = 0;

  constructor(capacity: number) {
    this.#capacity = capacity;
    this.#ring = new Uint8Array(Math.min(capacity, INITIAL_SIZE));
  }

  /** Position of the oldest byte still held (everything before is acknowledged). */
  get start(): number {
    return this.#start;
  }

  /** Position after the newest byte written. */
  get end(): number {
    return this.#end;
  }

  /** Bytes that can be appended before the buffer is full. */
  get free(): number {
    return this.#capacity - (this.#end - this.#start);
  }

  /** Copies as much of `data` as fits; returns how many bytes were taken. */
  append(data: Uint8Array): number {
    const n = Math.min(data.length, this.free);
    if (n === 0) return 0;
    this.#ensure(this.#end - this.#start + n);
    this.#store(this.#end, data.subarray(0, n));
    this.#end += n;
    return n;
  }

  /** Drops every byte before `position`. */
  release(position: number): void {
    this.#start = Math.max(this.#start, Math.min(position, this.#end));
  }

  /**
   * A view of the held bytes from `position` on, at most `maxLength` long and
   * ending where the ring wraps: no copy. The bytes stay valid until they are
   * released (a later growth of the ring leaves this view on the old memory).
   */
  view(position: number, maxLength: number): Uint8Array {
    if (position < this.#start || position >= this.#end) {
      throw new RangeError(`replay position ${position} outside [${this.#start}, ${this.#end})`);
    }
    const size = this.#ring.length;
    const at = position % size;
    const length = Math.min(maxLength, this.#end - position, size - at);
    return this.#ring.subarray(at, at + length);
  }

  /** Copies bytes `[position, position + length)` into `dst` at `offset`. */
  copyOut(position: number, dst: Uint8Array, offset: number, length: number): void {
    if (position < this.#start || position + length > this.#end) {
      throw new RangeError(
        `replay range ${position}+${length} outside [${this.#start}, ${this.#end})`,
      );
    }
    const size = this.#ring.length;
    const at = position % size;
    const first = Math.min(length, size - at);
    dst.set(this.#ring.subarray(at, at + first), offset);
    if (first < length) dst.set(this.#ring.subarray(0, length - first), offset + first);
  }

  #store(position: number, data: Uint8Array): void {
    const size = this.#ring.length;
    const at = position % size;
    const first = Math.min(data.length, size - at);
    this.#ring.set(data.subarray(0, first), at);
    if (first < data.length) this.#ring.set(data.subarray(first), 0);
  }

  #ensure(needed: number): void {
    if (needed <= this.#ring.length) return;
    let size = this.#ring.length;
    while (size < needed) size *= 2;
    const live = this.#end - this.#start;
    const copy = new Uint8Array(live);
    this.copyOut(this.#start, copy, 0, live);
    this.#ring = new Uint8Array(Math.min(size, this.#capacity));
    this.#store(this.#start, copy);
  }
}
