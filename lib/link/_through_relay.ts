/**
 * Dialers whose links pass through a relay: a third party that carries
 * every byte, and could read or change them, or stand in the middle of a key
 * exchange. Sessions over them need a key, and are encrypted unless told
 * otherwise (`connect`). An acceptor says the same of its links with
 * `relayed` (see `Acceptor`).
 *
 * @module
 */

import type { Dialer } from "./link.ts";

const THROUGH_RELAY = Symbol("immortal.throughRelay");

/** Marks `dialer` as dialing through a relay; returns it. */
export function markThroughRelay(dialer: Dialer): Dialer {
  Object.defineProperty(dialer, THROUGH_RELAY, { value: true });
  return dialer;
}

/** Whether `dialer` was marked by {@linkcode markThroughRelay}. */
export function dialsThroughRelay(dialer: unknown): boolean {
  return typeof dialer === "function" && THROUGH_RELAY in dialer;
}
