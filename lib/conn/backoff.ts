/**
 * Capped exponential backoff with jitter. Jitter spreads the reconnects of
 * many clients that lost the same server at the same moment.
 *
 * @module
 */

/**
 * Delay before reconnect attempt number `attempt` (0-based): 0 for the first
 * (a reset link often comes straight back), then `initial * 2^(n-1)` capped
 * at `max`, scaled by a random factor in [0.5, 1).
 */
export function _backoffDelay(attempt: number, initial: number, max: number): number {
  if (attempt <= 0) return 0;
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt - 1, 30));
  return ceiling * (0.5 + Math.random() / 2);
}
