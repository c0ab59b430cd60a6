/**
 * Session settings resolved: validated, with defaults filled in.
 *
 * @module
 */

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

function positive(name: string, value: number | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < min) {
    throw new RangeError(`${name} must be a number >= ${min}, got ${value}`);
  }
  return value;
}

/** The receive window travels as a 32-bit number in the handshake. */
function windowSize(value: number | undefined): number {
  const size = positive("maxUnackedBytes", value, 32 << 20, 1024);
  if (size > 0xffff_ffff) {
    throw new RangeError(`maxUnackedBytes must be at most 4294967295, got ${value}`);
  }
  return Math.floor(size);
}

/** Validates and fills in defaults; throws `RangeError`/`TypeError` naming the bad setting. */
export function resolveOptions(
  options: SessionOptions & { backoff?: BackoffOptions },
): ResolvedOptions {
  let key: Uint8Array | null = null;
  if (options.key !== undefined) {
    key = typeof options.key === "string" ? new TextEncoder().encode(options.key) : options.key;
    if (!(key instanceof Uint8Array) || key.length === 0) {
      throw new TypeError("key must be a non-empty string or Uint8Array");
    }
  }
  const heartbeatInterval = positive("heartbeatInterval", options.heartbeatInterval, 1000, 10);
  const deadLinkTimeout = positive("deadLinkTimeout", options.deadLinkTimeout, 2500, 10);
  if (deadLinkTimeout <= heartbeatInterval) {
    throw new RangeError(
      `deadLinkTimeout (${deadLinkTimeout} ms) must be longer than heartbeatInterval (${heartbeatInterval} ms)`,
    );
  }
  const backoff = options.backoff ?? {};
  const initial = positive("backoff.initial", backoff.initial, 100);
  if (options.encrypt !== undefined && typeof options.encrypt !== "boolean") {
    throw new TypeError(`encrypt must be true or false, got ${options.encrypt}`);
  }
  return {
    key,
    encrypt: options.encrypt ?? false,
    heartbeatInterval,
    deadLinkTimeout,
    resumeTimeout: positive("resumeTimeout", options.resumeTimeout, 120_000),
    maxUnackedBytes: windowSize(options.maxUnackedBytes),
    handshakeTimeout: positive("handshakeTimeout", options.handshakeTimeout, 10_000),
    backoff: {
      initial,
      max: positive("backoff.max", backoff.max, Math.max(5000, initial), initial),
      probeInterval: positive("backoff.probeInterval", backoff.probeInterval, 50, 1),
    },
  };
}
