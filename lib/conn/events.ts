/**
 * Events and counters an {@linkcode ImmortalConn} exposes.
 *
 * @module
 */

/** Where a session is: on a live link, between links, or ended. */
export type ConnState = "connected" | "reconnecting" | "closed";

/** Names of the events an ImmortalConn dispatches. */
export type ConnEventType = "reconnecting" | "resumed" | "closed";

/** Options of a {@linkcode ConnEvent}. */
export interface ConnEventInit {
  /** Why the link was lost (`reconnecting`). */
  reason?: string;
  /** How long the session had no link, in ms (`resumed`). */
  downtimeMs?: number;
  /** Bytes sent again on the new link (`resumed`). */
  replayedBytes?: number;
  /** Why the session ended, if it did not end cleanly (`closed`). */
  error?: Error;
}

/**
 * A state change of an ImmortalConn:
 * - `reconnecting`: the link was lost; `reason` says how;
 * - `resumed`: a new link carries the session again;
 * - `closed`: the session ended (`error` is set when it did not end cleanly).
 */
export class ConnEvent extends Event {
  /** Why the link was lost (`reconnecting`). */
  readonly reason?: string;
  /** How long the session had no link, in ms (`resumed`). */
  readonly downtimeMs?: number;
  /** Bytes sent again on the new link (`resumed`). */
  readonly replayedBytes?: number;
  /** Why the session ended, if it did not end cleanly (`closed`). */
  readonly error?: Error;

  /** Creates an event of `type`. */
  constructor(type: ConnEventType, init: ConnEventInit = {}) {
    super(type);
    this.reason = init.reason;
    this.downtimeMs = init.downtimeMs;
    this.replayedBytes = init.replayedBytes;
    this.error = init.error;
  }
}

/** Counters of one session. */
export interface ConnStats {
  /** Current state. */
  state: ConnState;
  /** Bytes the application wrote. */
  bytesWritten: number;
  /** Bytes delivered to the application. */
  bytesRead: number;
  /** Bytes written but not yet consumed by the peer (held for replay). */
  unackedBytes: number;
  /** Bytes received but not yet read by the application. */
  bufferedBytes: number;
  /** Links lost and replaced (successful resumes). */
  reconnects: number;
  /** Bytes sent again after resumes. */
  replayedBytes: number;
  /** Round-trip time of the last heartbeat, in ms, or `null` before the first. */
  rttMs: number | null;
}
