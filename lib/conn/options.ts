/**
 * Session settings, their defaults, and their validation.
 *
 * @module
 */

/** Settings shared by both ends of an immortal session. */
export interface SessionOptions {
  /**
   * Pre-shared key. When the server has one, only clients proving the same
   * key may open sessions (and the server proves it back).
   */
  key?: string | Uint8Array;
  /** A ping is sent this often, in ms. Default 1000. */
  heartbeatInterval?: number;
  /** A link with no inbound frame for this long (ms) is declared dead. Default 5000. */
  deadLinkTimeout?: number;
  /** Give up resuming (client) or reap the session (server) after this long down, in ms. Default 120000. */
  resumeTimeout?: number;
  /** Most bytes written but not yet consumed by the peer; writers wait beyond it. Default 4 MiB. */
  maxUnackedBytes?: number;
  /** Time allowed for dialing plus the handshake of one link, in ms. Default 10000. */
  handshakeTimeout?: number;
}

/** Reconnect backoff (client side). */
export interface BackoffOptions {
  /** First delay after a failed attempt, in ms (the first attempt is immediate). Default 100. */
  initial?: number;
  /** Cap of the delay, in ms. Default 5000. */
  max?: number;
  /** A link that stayed up this long (ms) resets the backoff. Default 10000. */
  stableAfter?: number;
}

/** @internal Fully resolved settings. */
export interface _ResolvedOptions {
  key: Uint8Array | null;
  heartbeatInterval: number;
  deadLinkTimeout: number;
  resumeTimeout: number;
  maxUnackedBytes: number;
  handshakeTimeout: number;
  backoff: Required<BackoffOptions>;
}

function _positive(name: string, value: number | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < min) {
    throw new RangeError(`${name} must be a number >= ${min}, got ${value}`);
  }
  return value;
}

/** Validates and fills in defaults; throws `RangeError`/`TypeError` naming the bad setting. */
export function _resolveOptions(
  options: SessionOptions & { backoff?: BackoffOptions },
): _ResolvedOptions {
  let key: Uint8Array | null = null;
  if (options.key !== undefined) {
    key = typeof options.key === "string" ? new TextEncoder().encode(options.key) : options.key;
    if (!(key instanceof Uint8Array) || key.length === 0) {
      throw new TypeError("key must be a non-empty string or Uint8Array");
    }
  }
  const heartbeatInterval = _positive("heartbeatInterval", options.heartbeatInterval, 1000, 10);
  const deadLinkTimeout = _positive("deadLinkTimeout", options.deadLinkTimeout, 5000, 10);
  if (deadLinkTimeout <= heartbeatInterval) {
    throw new RangeError(
      `deadLinkTimeout (${deadLinkTimeout} ms) must be longer than heartbeatInterval (${heartbeatInterval} ms)`,
    );
  }
  const backoff = options.backoff ?? {};
  const initial = _positive("backoff.initial", backoff.initial, 100);
  return {
    key,
    heartbeatInterval,
    deadLinkTimeout,
    resumeTimeout: _positive("resumeTimeout", options.resumeTimeout, 120_000),
    maxUnackedBytes: _positive("maxUnackedBytes", options.maxUnackedBytes, 4 << 20, 1024),
    handshakeTimeout: _positive("handshakeTimeout", options.handshakeTimeout, 10_000),
    backoff: {
      initial,
      max: _positive("backoff.max", backoff.max, Math.max(5000, initial), initial),
      stableAfter: _positive("backoff.stableAfter", backoff.stableAfter, 10_000, 0),
    },
  };
}
