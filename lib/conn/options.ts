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
  /**
   * Encrypt the session end to end (ChaCha20-Poly1305, per-link keys from the
   * session's X25519 exchange; PROTOCOL.md 1.21), so that whatever carries
   * the links — a relay, a TLS-terminating proxy — sees only ciphertext, and
   * a changed byte is caught (the link is replaced; nothing corrupt is
   * delivered). Client: ask for it; server: take encrypted sessions only.
   * Without a `key`, an active man in the middle of the first handshake
   * could still read everything: use both. Default `false`.
   */
  encrypt?: boolean;
  /**
   * A link quiet outbound this long (ms) gets a ping, so the peer hears
   * something; a busy link still gets one every ten intervals, for the RTT.
   * Default 1000.
   */
  heartbeatInterval?: number;
  /**
   * A link with no inbound frame for this long (ms) is declared dead and
   * replaced. Default 2500: with pings every second, a dead link is noticed
   * within 3 s, and a false alarm costs only a quick resume.
   */
  deadLinkTimeout?: number;
  /** Give up resuming (client) or reap the session (server) after this long down, in ms. Default 120000. */
  resumeTimeout?: number;
  /**
   * The most bytes that may be written but not yet consumed by the peer, and
   * the most this end holds received but unread (its receive window, told to
   * the peer in the handshake; a peer that sends past it is cut off). The
   * send window grows toward the path's bandwidth-delay product up to this,
   * so long fat paths are filled while memory follows what the path needs.
   * Writers wait beyond the window. Default 32 MiB; at most 4 GiB - 1.
   */
  maxUnackedBytes?: number;
  /** Time allowed for dialing plus the handshake of one link, in ms. Default 10000. */
  handshakeTimeout?: number;
}

/**
 * How the client replaces a lost link. A link that worked and broke is
 * redialed at once. Attempts the server answers with a refusal back off
 * exponentially from `initial` to `max` (jittered), so a struggling server
 * is not hammered; the backoff resets as soon as a link carries frames.
 * Attempts nobody answers (no route, no address, a timeout) are retried, and
 * a stalled attempt is raced by a fresh one, every `probeInterval`, so a path
 * that comes back is used within that time (races slow down as an outage
 * lasts: to a tenth of its length so far, up to a second).
 */
export interface BackoffOptions {
  /** First delay after a refused attempt, in ms. Default 100. */
  initial?: number;
  /** Cap of the delay after refused attempts, in ms. Default 5000. */
  max?: number;
  /**
   * While nothing answers, a fresh attempt starts this often, in ms (at
   * least four round trips of the session, on long paths). Default 50.
   */
  probeInterval?: number;
}
