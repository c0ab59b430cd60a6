/**
 * When the client dials again: the rules of {@linkcode BackoffOptions}, as
 * plain arithmetic so they can be tested without a clock.
 *
 * @module
 */

import { backoffDelay, jitter } from "../_util.ts";
import type { BackoffOptions } from "./options.ts";

/** A link that worked for less than this (ms) worked only for a moment. */
export const SHORT_LIVED_MS = 200;
/**
 * Links in a row that work only for a moment and are still redialed at once
 * (a reset, then a second one as the path settles); past them the backoff
 * grows with each.
 */
export const FLAPS_FORGIVEN = 2;
/**
 * The most a link that worked waits before its redial, ms: the backoff's
 * `max` is for servers that refuse; a link that carried data (megabytes,
 * maybe, in its moment) is worth one a second.
 */
export const FLAP_BACKOFF_MAX_MS = 1000;
/**
 * A dial loop's races slow down as it lasts: the interval is at least its
 * length so far over this, so a path that comes back after an outage is
 * used within a tenth of the outage (and the probe interval at first).
 */
export const RACE_SLOWDOWN = 10;
/** The longest interval between races, ms. */
export const RACE_INTERVAL_MAX_MS = 1000;

/** Delays (ms) before the next dial attempt, by what happened to the last one. */
export class ReconnectPolicy {
  #backoff: Required<BackoffOptions>;
  #random: () => number;
  /** Consecutive failures the server answered (or links that never worked): the exponent. */
  #failures = 0;
  /** Consecutive links that worked, each only for a moment. */
  #flaps = 0;

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
   * The link was lost after `livedMs`. One that worked is redialed at once (a
   * reset link usually comes straight back); one that died before carrying
   * anything is as good as a failed attempt. Links that work but each die
   * within {@linkcode SHORT_LIVED_MS} (a proxy or firewall that cuts every
   * connection after its first bytes) back off after
   * {@linkcode FLAPS_FORGIVEN} of them: redialed at once, they cost both
   * ends a handshake each, dozens a second, for ever.
   */
  linkLost(proven: boolean, livedMs: number = Infinity): number {
    if (!proven) return this.#exponential();
    this.#failures = 0;
    if (livedMs >= SHORT_LIVED_MS) {
      this.#flaps = 0;
      return 0;
    }
    if (++this.#flaps <= FLAPS_FORGIVEN) return 0;
    const { initial, max } = this.#backoff;
    const ceiling = Math.min(max, FLAP_BACKOFF_MAX_MS);
    return backoffDelay(this.#flaps - FLAPS_FORGIVEN, initial, ceiling, this.#random);
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
   * interval, but at least four round trips on a long path, and a tenth of
   * the `waitedMs` the dial loop has been going (up to
   * {@linkcode RACE_INTERVAL_MAX_MS}). Racing every 50 ms for as long as
   * connects were slow (a server's accept queue full), 500 sessions of one
   * process fed a storm: each raced-out connect that the kernel completed
   * anyway took a handshake slot at the server, slowing the next ones; all
   * 500 sessions ended.
   */
  raceAfter(rttMs: number, waitedMs = 0): number {
    const floor = Math.max(this.#backoff.probeInterval, 4 * rttMs);
    return Math.max(floor, Math.min(RACE_INTERVAL_MAX_MS, waitedMs / RACE_SLOWDOWN));
  }

  #exponential(): number {
    const { initial, max } = this.#backoff;
    return backoffDelay(++this.#failures, initial, max, this.#random);
  }
}
