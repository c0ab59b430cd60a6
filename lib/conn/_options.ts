/**
 * Session settings resolved: validated, with defaults filled in.
 *
 * @module
 */

import { describeValue, MAX_TIMER_MS } from "../_util.ts";
import type { BackoffOptions, SessionOptions } from "./options.ts";

/** Fully resolved settings. */
export interface ResolvedOptions {
  key: Uint8Array | null;
  encrypt: boolean;
  heartbeatInterval: number;
  deadLinkTimeout: number;
  resumeTimeout: number;
  maxUnackedBytes: number;
  handshakeTimeout: number;
  backoff: Required<BackoffOptions>;
}

/**
 * Checks an optional finite number of at least `min` and returns it, or
 * `fallback` when it is not given: a `TypeError` for another type (a number
 * written as a string, say), a `RangeError` for a number out of range; both
 * name the setting and show the value.
 */
export function positive(name: string, value: unknown, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number") {
    throw new TypeError(`${name} must be a number >= ${min}, got ${describeValue(value)}`);
  }
  if (!Number.isFinite(value) || value < min) {
    throw new RangeError(`${name} must be a number >= ${min}, got ${value}`);
  }
  return value;
}

/** The shortest heartbeat interval and dead-link timeout, ms: finer timers are not kept anyway. */
export const MIN_HEARTBEAT_MS = 10;

/**
 * An optional wait in ms of at least `min` (default 1), short enough for a
 * timer: a longer one would fire at once (a resume timeout of 30 days would
 * give up a session the moment its link broke).
 */
export function timerMs(name: string, value: unknown, fallback: number, min = 1): number {
  const ms = positive(name, value, fallback, min);
  if (ms > MAX_TIMER_MS) {
    throw new RangeError(`${name} must be at most ${MAX_TIMER_MS} ms, got ${ms}`);
  }
  return ms;
}

/** The receive window travels as a 32-bit number in the handshake. */
function windowSize(value: number | undefined): number {
  const size = positive("maxUnackedBytes", value, 32 << 20, 1024);
  if (size > 0xffff_ffff) {
    throw new RangeError(`maxUnackedBytes must be at most 4294967295, got ${value}`);
  }
  return Math.floor(size);
}

/** What a session through a relay without a key is told. */
export const RELAY_NEEDS_KEY = "a session through a relay needs a key (without one, the relay " +
  "could stand in the middle of its encryption): make one with generateKey(), or " +
  "`cli/tunnel.ts keygen`";

/**
 * Validates and fills in defaults; throws `RangeError`/`TypeError` naming
 * the bad setting. `throughRelay`: the session's links pass through a relay
 * (RelayNode's pipes), which could stand in the middle of an unkeyed
 * exchange: a key is required, and `encrypt` is on unless set to `false`.
 */
export function resolveOptions(
  options: SessionOptions & { backoff?: BackoffOptions; tls?: unknown },
  { throughRelay = false }: { throughRelay?: boolean } = {},
): ResolvedOptions {
  let key: Uint8Array | null = null;
  if (options.key !== undefined) {
    key = typeof options.key === "string" ? new TextEncoder().encode(options.key) : options.key;
    if (!(key instanceof Uint8Array) || key.length === 0) {
      // Its kind only: a key, even a mistyped one, is not for logs.
      const given = key instanceof Uint8Array || typeof key === "string"
        ? "an empty one"
        : key === null
        ? "null"
        : Array.isArray(key)
        ? "an array"
        : `a value of type ${typeof key}`;
      throw new TypeError(`key must be a non-empty string or Uint8Array, got ${given}`);
    }
  }
  if (throughRelay && key === null) throw new TypeError(RELAY_NEEDS_KEY);
  const heartbeatInterval = timerMs(
    "heartbeatInterval",
    options.heartbeatInterval,
    1000,
    MIN_HEARTBEAT_MS,
  );
  const deadLinkTimeout = timerMs(
    "deadLinkTimeout",
    options.deadLinkTimeout,
    2500,
    MIN_HEARTBEAT_MS,
  );
  if (deadLinkTimeout <= heartbeatInterval) {
    throw new RangeError(
      `deadLinkTimeout (${deadLinkTimeout} ms) must be longer than heartbeatInterval (${heartbeatInterval} ms)`,
    );
  }
  const backoff = options.backoff ?? {};
  if (typeof backoff !== "object" || backoff === null || Array.isArray(backoff)) {
    throw new TypeError(`backoff must be an object, got ${describeValue(backoff)}`);
  }
  const initial = timerMs("backoff.initial", backoff.initial, 100);
  if (options.encrypt !== undefined && typeof options.encrypt !== "boolean") {
    throw new TypeError(`encrypt must be true or false, got ${describeValue(options.encrypt)}`);
  }
  // A string is truthy: `tls: "no"` would quietly mean TLS.
  const tls = options.tls;
  if (
    tls !== undefined && typeof tls !== "boolean" &&
    (typeof tls !== "object" || tls === null || Array.isArray(tls))
  ) {
    throw new TypeError(
      `tls must be a boolean or an object of TLS settings, got ${describeValue(tls)}`,
    );
  }
  return {
    key,
    encrypt: options.encrypt ?? throughRelay,
    heartbeatInterval,
    deadLinkTimeout,
    resumeTimeout: timerMs("resumeTimeout", options.resumeTimeout, 120_000),
    maxUnackedBytes: windowSize(options.maxUnackedBytes),
    handshakeTimeout: timerMs("handshakeTimeout", options.handshakeTimeout, 10_000),
    backoff: {
      initial,
      max: timerMs("backoff.max", backoff.max, Math.max(5000, initial), initial),
      probeInterval: timerMs("backoff.probeInterval", backoff.probeInterval, 50, 1),
    },
  };
}
