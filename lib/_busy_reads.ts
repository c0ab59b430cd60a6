/**
 * Fair turns for a read loop. Deno completes up to 128 operations in one
 * turn of its event loop, one after another, before it looks at its timers:
 * a read whose bytes are there completes at once, the loop handles them and
 * reads again, and that read completes in the same turn. A peer that sends
 * faster than its frames are handled (a flood of tiny frames, millions a
 * second) makes each of those 128 a batch of 20,000 frames: a turn took
 * 300-400 ms, timers fired 4 times a second, and another client's handshake
 * with the server took 5-7 s. So a loop that has not seen the event loop
 * turn for a while lets it, once.
 *
 * @module
 */

import { setImmediate } from "node:timers";

/** How long a loop may keep the event loop before it lets it turn. */
export const BUSY_TURN_MS = 5;

/**
 * Tells a read loop when to let the event loop turn: ask
 * {@linkcode BusyReads.due} after each read's work, await
 * {@linkcode BusyReads.turn} when it says so.
 *
 * @internal
 */
export class BusyReads {
  #clock: () => number;
  /** When the loop began waiting for the event loop to turn (its watch was set). */
  #since = 0;
  /** A watch is set: an immediate that says the event loop turned, when it runs. */
  #watching = false;
  #turned = () => {
    this.#watching = false;
  };

  /** `clock` is for tests. */
  constructor(clock: () => number = () => performance.now()) {
    this.#clock = clock;
  }

  /**
   * Whether the loop has kept the event loop for {@linkcode BUSY_TURN_MS}:
   * then await {@linkcode BusyReads.turn}. Asked after the work on what a
   * read brought; sets a watch (an immediate that runs when the event loop
   * turns) if none is set. Watching costs an immediate per turn, not per
   * read: a loop whose reads wait is seen turning at its next read.
   */
  due(): boolean {
    const now = this.#clock();
    if (!this.#watching) {
      this.#watching = true;
      this.#since = now;
      setImmediate(this.#turned);
      return false;
    }
    return now - this.#since >= BUSY_TURN_MS;
  }

  /**
   * Lets the event loop turn once: `setImmediate` runs after the turn's I/O
   * and timers, where a promise (a read that completed) runs within it.
   */
  turn(): Promise<void> {
    return new Promise<void>((resolve) => setImmediate(resolve));
  }
}
