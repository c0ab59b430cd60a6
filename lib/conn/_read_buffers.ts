/**
 * The read buffers of a session's links, lent to its receive queue. A data
 * frame's payload arrives as a view into the buffer its link read into;
 * queueing that view instead of a copy saves an allocation and a copy per
 * frame (and the garbage collector's work), as long as the link reads its
 * next bytes into another buffer. A buffer whose views have all been consumed
 * is used again, so a steady stream allocates nothing. The buffers lent at
 * once are bounded by the bytes they carry: `minHeld`, plus two per buffer's
 * worth of queued bytes. Past that a frame is copied, as before, so a peer
 * that sends many tiny frames cannot pin a whole buffer per byte.
 *
 * @module
 */

/**
 * Consumed buffers kept for reuse at most (8 MiB); more are left to the
 * garbage collector. {@linkcode ReadBuffers.trim} gives back what a stream
 * stopped needing.
 */
const MAX_FREE = 32;

/** @internal */
export class ReadBuffers {
  #size: number;
  #minHeld: number;
  /** Queued views per lent buffer. */
  #views = new Map<ArrayBufferLike, number>();
  /** Lent buffers the link no longer reads into: reused once their views are consumed. */
  #retired = new Set<ArrayBufferLike>();
  #free: Uint8Array<ArrayBuffer>[] = [];
  /** Fewest free buffers since the last trim: that many were not needed. */
  #lowFree = 0;

  constructor(size: number, minHeld: number) {
    this.#size = size;
    this.#minHeld = minHeld;
  }

  /** Buffers lent to the queue right now. */
  get held(): number {
    return this.#views.size;
  }

  /** Whether `view` is into a lent buffer. */
  lent(view: Uint8Array): boolean {
    return this.#views.has(view.buffer);
  }

  /**
   * Lends `view`'s buffer to the queue, which holds `queued` bytes already;
   * false if too many buffers are lent for that (the caller copies instead).
   */
  hold(view: Uint8Array, queued: number): boolean {
    const buffer = view.buffer;
    const n = this.#views.get(buffer);
    if (n === undefined) {
      const allowed = this.#minHeld + 2 * Math.ceil(queued / this.#size);
      if (this.#views.size >= allowed) return false;
      this.#views.set(buffer, 1);
    } else {
      this.#views.set(buffer, n + 1);
    }
    return true;
  }

  /**
   * A queued view was consumed. Its bytes stay valid until the next link read
   * (the buffer is read into again only then), so a caller that copies them
   * at once may call this first. Views that were never lent are ignored.
   */
  drop(view: Uint8Array): void {
    const buffer = view.buffer;
    const n = this.#views.get(buffer);
    if (n === undefined) return;
    if (n > 1) {
      this.#views.set(buffer, n - 1);
      return;
    }
    this.#views.delete(buffer);
    if (this.#retired.delete(buffer) && this.#free.length < MAX_FREE) {
      this.#free.push(new Uint8Array(buffer as ArrayBuffer));
    }
  }

  /**
   * A buffer for a link to read into instead of `old`, which it leaves to the
   * views into it: they return it for reuse once consumed.
   */
  replace(old: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
    if (this.#views.has(old.buffer)) this.#retired.add(old.buffer);
    const reused = this.#free.pop();
    if (this.#free.length < this.#lowFree) this.#lowFree = this.#free.length;
    return reused ?? new Uint8Array(this.#size);
  }

  /**
   * Called now and then (every heartbeat tick): frees the buffers that sat
   * unused since the last call, so an idle session holds none for long.
   */
  trim(): void {
    this.#free.length -= this.#lowFree;
    this.#lowFree = this.#free.length;
  }
}
