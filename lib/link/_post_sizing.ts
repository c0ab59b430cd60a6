/**
 * How large the upstream POSTs of an HTTP-streaming dialer's links may be.
 * A path may not carry our largest: a proxy that takes smaller bodies
 * (nginx: 1 MB by default; 413), or connections that die before a large
 * POST is through. A link that fails there, redialed with the same size,
 * would send the same POST again, and fail again, for ever, its session
 * resuming each time and never going forward. So a POST refused as too
 * large, or lost without an answer even when sent again, halves the size
 * the dialer's next links use (down to {@linkcode MIN_POST_BYTES}); a run of
 * POSTs answered at a size doubles it again, so that a passing fault costs
 * throughput for a while, not for good. Never again to a size refused as
 * too large: that is a proxy's setting, not a passing fault.
 *
 * @module
 */

/** The smallest size a dialer falls back to. */
export const MIN_POST_BYTES = 16 * 1024;
/** POSTs answered in a row at one size before the size doubles. */
const GROW_AFTER = 16;

/** @internal */
export class PostSizing {
  /** The largest size: ours, or below one refused as too large. */
  #max: number;
  #bytes: number;
  #answered = 0;

  /** Sizes of at most `max` bytes, starting there. */
  constructor(max: number) {
    this.#max = this.#bytes = max;
  }

  /** The most bytes a new link's POST carries. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A POST of `bytes` was answered. */
  answered(bytes: number): void {
    // Only POSTs that were full count: small ones say nothing of large ones.
    if (bytes < this.#bytes || this.#bytes * 2 > this.#max) return;
    if (++this.#answered < GROW_AFTER) return;
    this.#answered = 0;
    this.#bytes *= 2;
  }

  /**
   * A POST of `bytes` did not get through: `refused` as too large, or lost
   * twice; returns the size the next link uses.
   */
  failed(bytes: number, refused: boolean): number {
    this.#answered = 0;
    if (refused) this.#max = Math.min(this.#max, bytes - 1);
    this.#bytes = Math.max(
      MIN_POST_BYTES,
      Math.min(this.#bytes, 2 ** Math.floor(Math.log2(bytes / 2))),
    );
    return this.#bytes;
  }
}
