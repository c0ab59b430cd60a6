/**
 * Received bytes waiting to be read, for links whose transport delivers
 * them as messages or requests rather than on request (WebSocket, HTTP
 * streaming's POSTs): `push` as they come, `read` as the session asks.
 *
 * @module
 */

/** A queue of received byte chunks that `read` drains: the receiving half of a link. */
export class ByteQueue {
  #chunks: Uint8Array[] = [];
  #size = 0;
  #ended = false;
  #error: Error | null = null;
  #wake: (() => void) | null = null;
  #drained: (() => void)[] = [];

  get size(): number {
    return this.#size;
  }

  push(chunk: Uint8Array): void {
    if (this.#ended) return;
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    this.#wakeUp();
  }

  end(error?: Error): void {
    if (error) this.#error ??= error;
    this.#ended = true;
    this.#wakeUp();
    for (const resolve of this.#drained.splice(0)) resolve();
  }

  /** Resolves once fewer than `bytes` wait (or the queue ended). */
  async below(bytes: number): Promise<void> {
    while (this.#size >= bytes && !this.#ended) {
      await new Promise<void>((resolve) => this.#drained.push(resolve));
    }
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    const head = await this.take(buffer.length);
    if (head === null) return null;
    buffer.set(head);
    return head.length;
  }

  /**
   * The oldest bytes pushed, at most `max`, as they were pushed (a view, not
   * a copy: what was pushed is the taker's now); null once the queue ended.
   */
  async take(max: number): Promise<Uint8Array | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    const head = this.#chunks[0];
    const n = Math.min(head.length, max);
    if (n === head.length) this.#chunks.shift();
    else this.#chunks[0] = head.subarray(n);
    this.#size -= n;
    for (const resolve of this.#drained.splice(0)) resolve();
    return n === head.length ? head : head.subarray(0, n);
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
