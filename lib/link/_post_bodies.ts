/**
 * The bytes an HTTP-streaming link was given to send and has not POSTed yet,
 * kept as the bodies of the POSTs to come: each write is copied once, into
 * the end of the last body, and a body goes out as it is. Keeping the writes
 * as a list of copies and joining them per POST copied every byte twice and
 * allocated twice per POST (a busy link POSTs 1 MiB at a time, and allocating
 * a large buffer in Deno costs as much as copying it).
 *
 * A body's buffer is free again once its POST is answered (a POST whose
 * connection died under it goes again, with the same bytes): one spare is
 * kept for the next, so a busy link allocates one buffer per POST in flight
 * beyond it, not one per POST.
 *
 * @module
 */

/** A new body's smallest buffer: a few small writes fit, a quiet link holds little. */
const MIN_BODY = 16 * 1024;

/** @internal */
export class PostBodies {
  #max: number;
  /** The bodies: each a view from the start of its own buffer, as long as what it holds. */
  #bodies: Uint8Array<ArrayBuffer>[] = [];
  #size = 0;
  #spare: ArrayBuffer | null = null;

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
      let last = this.#bodies.at(-1);
      if (last === undefined || last.length === max) {
        last = new Uint8Array(this.#takeBuffer(Math.min(max, Math.max(MIN_BODY, left))), 0, 0);
        this.#bodies.push(last);
      }
      const length = last.length;
      let buffer = last.buffer;
      const wanted = Math.min(max, length + left);
      if (wanted > buffer.byteLength) {
        // Grown by doubling at least: a body built of many writes is copied
        // again at most about once in all.
        buffer = new ArrayBuffer(Math.min(max, Math.max(wanted, 2 * buffer.byteLength)));
        new Uint8Array(buffer).set(last);
      }
      const n = Math.min(buffer.byteLength - length, left);
      const grown = new Uint8Array(buffer, 0, length + n);
      grown.set(data.subarray(offset, offset + n), length);
      this.#bodies[this.#bodies.length - 1] = grown;
      offset += n;
    }
    this.#size += data.length;
  }

  /**
   * The oldest body, no longer held, or null when there is none. Its buffer
   * comes back for reuse by {@linkcode PostBodies.recycle}, which the caller
   * may call once nothing reads it any more (once its POST was answered).
   */
  shift(): Uint8Array<ArrayBuffer> | null {
    const body = this.#bodies.shift();
    if (body === undefined) return null;
    this.#size -= body.length;
    return body;
  }

  /** Gives back a body from {@linkcode PostBodies.shift}: its buffer may hold the next. */
  recycle(body: Uint8Array<ArrayBuffer>): void {
    if (body.buffer.byteLength === this.#max) this.#spare = body.buffer;
  }

  #takeBuffer(size: number): ArrayBuffer {
    const spare = this.#spare;
    if (spare !== null && spare.byteLength >= size) {
      this.#spare = null;
      return spare;
    }
    return new ArrayBuffer(size);
  }
}
