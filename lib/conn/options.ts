/**
 * Session settings and their defaults (validated in `_options.ts`).
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
