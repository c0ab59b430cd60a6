/**
 * Events and counters an {@linkcode ImmortalConn} exposes. Each event type
 * has its own class whose fields are always set, and {@linkcode ConnEventMap}
 * types `addEventListener` by event name.
 *
 * @module
 */

import type { ImmortalConn } from "./immortal_conn.ts";

/** Where a session is: on a live link, between links, or ended. */
export type ConnState = "connected" | "reconnecting" | "closed";

/**
 * The link under the session was lost; the session is getting another
 * (client) or waiting for the client to come back (server).
 *
 * @example Log every lost link
 * ```ts
 * import { ReconnectingEvent } from "@immortal/sockets";
 *
 * const event = new ReconnectingEvent("nothing received for 3000 ms");
 * console.log(`link lost: ${event.reason}`);
 * ```
 */
export class ReconnectingEvent extends Event {
  /** How the link was lost, in words. */
  readonly reason: string;

  /** Creates the event; `reason` says how the link was lost. */
  constructor(reason: string) {
    super("reconnecting");
    this.reason = reason;
  }
}

/**
 * A new link carries the session again: nothing was lost.
 *
 * @example
 * ```ts
 * import { ResumedEvent } from "@immortal/sockets";
 *
 * const event = new ResumedEvent(12, 4096);
 * console.log(`back after ${event.downtimeMs} ms, ${event.replayedBytes} bytes sent again`);
 * ```
 */
export class ResumedEvent extends Event {
  /** How long the session had no link, in ms. */
  readonly downtimeMs: number;
  /** Bytes sent again on the new link. */
  readonly replayedBytes: number;

  /** Creates the event with the downtime (ms) and the bytes replayed. */
  constructor(downtimeMs: number, replayedBytes: number) {
    super("resumed");
    this.downtimeMs = downtimeMs;
    this.replayedBytes = replayedBytes;
  }
}

/**
 * The session ended: cleanly (both directions done, or closed locally) when
 * `error` is undefined, abnormally otherwise.
 *
 * @example
 * ```ts
 * import { ClosedEvent, ImmortalError } from "@immortal/sockets";
 *
 * const event = new ClosedEvent(new ImmortalError("timeout", "gone too long"));
 * console.log(event.error ? `ended: ${event.error.message}` : "ended cleanly");
 * ```
 */
export class ClosedEvent extends Event {
  /** Why the session ended, when it did not end cleanly. */
  readonly error: Error | undefined;

  /** Creates the event; pass `error` when the session did not end cleanly. */
  constructor(error?: Error) {
    super("closed");
    this.error = error;
  }
}

/** Event classes by the name an {@linkcode ImmortalConn} dispatches them under. */
export interface ConnEventMap {
  /** The link was lost; see {@linkcode ReconnectingEvent}. */
  reconnecting: ReconnectingEvent;
  /** A new link carries the session; see {@linkcode ResumedEvent}. */
  resumed: ResumedEvent;
  /** The session ended; see {@linkcode ClosedEvent}. */
  closed: ClosedEvent;
}

/** Any state event of an ImmortalConn. */
export type ConnEvent = ConnEventMap[keyof ConnEventMap];

/** A typed listener for event `K` of an ImmortalConn. */
export type ConnEventListener<K extends keyof ConnEventMap> = (
  this: ImmortalConn,
  event: ConnEventMap[K],
) => void;

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
  /**
   * The send window: how many bytes may be unacknowledged now. It grows
   * toward the path's bandwidth-delay product, up to `maxUnackedBytes` and the
   * peer's receive window.
   */
  windowBytes: number;
  /** Bytes received but not yet read by the application. */
  bufferedBytes: number;
  /** Links lost and replaced (successful resumes). */
  reconnects: number;
  /** Bytes sent again after resumes. */
  replayedBytes: number;
  /** Round-trip time of the last heartbeat, in ms, or `null` before the first. */
  rttMs: number | null;
}
