/**
 * When the client dials again: the rules of {@linkcode BackoffOptions}, as
 * plain arithmetic so they can be tested without a clock.
 *
 * @module
 */

import { backoffDelay, jitter } from "../_util.ts";
import type { BackoffOptions } from "./options.ts";

/** Delays (ms) before the next dial attempt, by what happened to the last one. */
export class ReconnectPolicy {
  #backoff: Required<BackoffOptions>;
  #random: () => number;
  /** Consecutive failures the server answered (or links that never worked): the exponent. */
  #failures = 0;

  /** `random` (default `Math.random`) sets the jitter; tests pass a fixed one. */
  constructor(backoff: Required<BackoffOptions>, random: () => number = Math.random) {
    this.#backoff = backoff;
    this.#random = random;
  }

  /** Consecutive failures counted so far. */
  get failures(): number {
    return this.#failures;
  }

  /** A link carried frames after its handshake: it works, so the backoff starts over. */
  linkProven(): void {
    this.#failures = 0;
  }

  /**
   * The link was lost. One that worked is redialed at once (a reset link
   * usually comes straight back); one that died before carrying anything is
   * as good as a failed attempt.
   */
  linkLost(proven: boolean): number {
    if (proven) {
      this.#failures = 0;
      return 0;
    }
    return this.#exponential();
  }

  /**
   * An attempt failed. If the server answered (refused, reset, rejected),
   * back off exponentially: retrying at once would only load it. If nothing
   * answered (no route, no address, a timeout), probe again soon, so a path
   * that comes back is used at once; that costs the server nothing.
   */
  attemptFailed(serverAnswered: boolean, rttMs: number): number {
    return serverAnswered ? this.#exponential() : jitter(this.raceAfter(rttMs), this.#random);
  }

  /**
   * How long an attempt may stall before a fresh one races it: the probe
   * interval, but at least four round trips on a long path.
   */
  raceAfter(rttMs: number): number {
    return Math.max(this.#backoff.probeInterval, 4 * rttMs);
  }

  #exponential(): number {
    const { initial, max } = this.#backoff;
    return backoffDelay(++this.#failures, initial, max, this.#random);
  }
}
