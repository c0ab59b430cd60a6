/**
 * Wake-ups for code that waits until something changes, with a bound in
 * time and a way out.
 *
 * @module
 */

import { MAX_TIMER_MS } from "./_util.ts";

/**
 * Waiters for the next change: {@linkcode Changes.next} resolves at the next
 * {@linkcode Changes.notify}, or after `ms`; it rejects with the signal's
 * reason if the signal aborts first. Either way it leaves no listener or
 * timer behind.
 */
export class Changes {
  #waiters = new Set<() => void>();

  /** Resolves at the next change, or after `ms`; rejects if `signal` aborts first. */
  next(signal: AbortSignal, ms = MAX_TIMER_MS): Promise<void> {
    return new Promise((resolve, reject) => {
      const wake = () => {
        this.#waiters.delete(wake);
        signal.removeEventListener("abort", wake);
        clearTimeout(timer);
        if (signal.aborted) reject(signal.reason);
        else resolve();
      };
      const timer = setTimeout(wake, Math.min(ms, MAX_TIMER_MS));
      this.#waiters.add(wake);
      signal.addEventListener("abort", wake, { once: true });
      if (signal.aborted) wake();
    });
  }

  /** Something changed: wakes every waiter. */
  notify(): void {
    for (const wake of [...this.#waiters]) wake();
  }
}
