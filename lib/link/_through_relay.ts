/**
 * Dialers and acceptors whose links pass through a relay: a third party
 * that carries every byte, and could read or change them, or stand in the
 * middle of a key exchange. Sessions over them need a key, and are
 * encrypted unless told otherwise (`connect`, `listen`).
 *
 * @module
 */

const THROUGH_RELAY = Symbol("immortal.throughRelay");

/** Marks `value` (a dialer or an acceptor) as passing through a relay; returns it. */
export function markThroughRelay<T extends object>(value: T): T {
  Object.defineProperty(value, THROUGH_RELAY, { value: true });
  return value;
}

/** Whether `value` was marked by {@linkcode markThroughRelay}. */
export function isThroughRelay(value: unknown): boolean {
  return (typeof value === "function" || (typeof value === "object" && value !== null)) &&
    THROUGH_RELAY in value;
}
