/**
 * The bytes an HTTP-streaming link was given to send and has not POSTed yet,
 * kept as the bodies of the POSTs to come: each write is copied once, into
 * the end of the last body, and a body goes out as it is. Keeping the writes
 * as a list of copies and joining them per POST copied every byte twice and
 * allocated twice per POST (a busy link POSTs 1 MiB at a time, and allocating
 * a large buffer in Deno costs as much as copying it).
 *
 * `fetch` copies a body when called (the Fetch standard's "extract a body"),
 * so a body's buffer is free again as soon as its POST is sent: one spare is
 * kept for the next, and a busy link allocates nothing.
 *
 * @module
 */

/** A new body's smallest buffer: a few small writes fit, a quiet link holds little. */
const MIN_BODY = 16 * 1024;

/** @internal */
export class PostBodies {
  #max: number;
  /** Each body's buffer, filled from its start to the matching length. */
  #buffers: Uint8Array<ArrayBuffer>[] = [];
  #lengths: number[] = [];
  #size = 0;
  #spare: Uint8Array<ArrayBuffer> | null = null;

  /** Bodies of at most `max` bytes. */
  constructor(max: number) {
    this.#max = max;
  }

  /** Bytes held. */
  get size(): number {
    return this.#size;
  }

  /** Copies `data` in behind what is held, starting new bodies as the last one fills. */
  append(data: Uint8Array): void {
    const max = this.#max;
    for (let offset = 0; offset < data.length;) {
      const left = data.length - offset;
      let last = this.#buffers.length - 1;
      if (last < 0 || this.#lengths[last] === max) {
        this.#buffers.push(this.#takeBuffer(Math.min(max, Math.max(MIN_BODY, left))));
        this.#lengths.push(0);
        last++;
      }
      const length = this.#lengths[last];
      let buffer = this.#buffers[last];
      const wanted = Math.min(max, length + left);
      if (wanted > buffer.length) {
        // Grown by doubling at least: a body built of many writes is copied
        // again at most about once in all.
        const grown = new Uint8Array(Math.min(max, Math.max(wanted, 2 * buffer.length)));
        grown.set(buffer.subarray(0, length));
        this.#buffers[last] = buffer = grown;
      }
      const n = Math.min(buffer.length - length, left);
      buffer.set(data.subarray(offset, offset + n), length);
      this.#lengths[last] = length + n;
      offset += n;
    }
    this.#size += data.length;
  }

  /**
   * The oldest body, no longer held, or null when there is none. Its buffer
   * comes back for reuse by {@linkcode PostBodies.recycle}, which the caller
   * may call once nothing reads it any more (once `fetch` was called with it).
   */
  shift(): Uint8Array<ArrayBuffer> | null {
    const buffer = this.#buffers.shift();
    if (buffer === undefined) return null;
    const length = this.#lengths.shift()!;
    this.#size -= length;
    return buffer.subarray(0, length);
  }

  /** Gives back a body from {@linkcode PostBodies.shift}: its buffer may hold the next. */
  recycle(body: Uint8Array<ArrayBuffer>): void {
    if (body.buffer.byteLength === this.#max) this.#spare = new Uint8Array(body.buffer);
  }

  #takeBuffer(size: number): Uint8Array<ArrayBuffer> {
    const spare = this.#spare;
    if (spare !== null && spare.length >= size) {
      this.#spare = null;
      return spare;
    }
    return new Uint8Array(size);
  }
}
