/**
 * A room: the nodes that joined the same relay "session" id and hear each
 * other (conn's `Session` is something else: one resumable connection). A
 * {@linkcode Member} is one joined node; its {@linkcode Sink} is whichever
 * transport carries frames to it.
 *
 * @module
 */

import { History, type HistoryBudget, type HistoryEntry, type HistoryLimits } from "./_history.ts";
import type { RelayMember, RelayRole } from "./_protocol.ts";
import { secretsEqual } from "./_secret.ts";

/** Where frames towards one node go (a WebSocket, or an event stream). */
export interface Sink {
  /** Queues one encoded frame; `false` when the node's queue is full. */
  push(frame: string): boolean;
  /** Ends the connection, telling the node why when the transport can. */
  close(code: number, reason: string): void;
}

/**
 * The sink of a node whose connection broke: what it misses waits in the
 * room's history until it is back (or declared gone).
 */
export const DETACHED: Sink = { push: () => true, close: () => {} };

/** A joined node. */
export class Member {
  /** When the relay last heard from the node (clock ms). */
  lastHeard: number;
  /** The node's own id, when it asked for exactly-once messages. */
  id: string | undefined;
  /** The node's claim (its hello's), kept with its nickname's reservation when it is gone. */
  claim: string | undefined;
  /** The highest `seq` taken from the node: anything at or below is a duplicate. */
  lastSeq = 0;
  /** The highest `seq` the relay has made safe (in a cluster: in Redis): what acks say. */
  ackedSeq = 0;
  /**
   * In a cluster: the `seq` last handed to Redis on this connection, the
   * `prev` of its next message (a rate-limited one never reaches Redis, so
   * it is not {@linkcode Member.lastSeq}).
   */
  sentSeq = 0;
  /**
   * In a cluster: the room's presence number when this connection joined. A
   * leave event numbered at or below it is about an earlier membership.
   */
  presence = 0;
  /** In a cluster: the results of this node's messages, handled in the order sent. */
  pending: Promise<void> = Promise.resolve();
  /** When the relay next decides whether the node needs a ping (clock ms). */
  nextCheck: number;
  /** A frame went to the node since its last keep-alive check. */
  sent = false;
  /** When the node's connection went (clock ms); undefined while it has one. */
  detachedAt: number | undefined;
  #tokens: number;
  #refilled: number;

  /** A node joined to `room` at time `now`, allowed `rate` messages per second. */
  constructor(
    readonly room: Room,
    readonly nickname: string,
    readonly role: RelayRole,
    readonly token: string,
    public sink: Sink,
    readonly rate: number,
    now: number,
  ) {
    this.lastHeard = this.nextCheck = this.#refilled = now;
    this.#tokens = rate * 2;
  }

  /** The node's connection is gone at `now`: what it misses waits in the room's history. */
  detach(now: number): void {
    this.sink = DETACHED;
    this.detachedAt = now;
  }

  /** The node is back on `sink` at `now`; returns the sink it replaces. */
  attach(sink: Sink, now: number): Sink {
    const old = this.sink;
    this.sink = sink;
    this.detachedAt = undefined;
    this.lastHeard = now;
    return old;
  }

  /** Token bucket: `rate` per second, bursts of twice that. */
  takeToken(now: number): boolean {
    this.#tokens = Math.min(
      this.rate * 2,
      this.#tokens + (now - this.#refilled) * this.rate / 1000,
    );
    this.#refilled = now;
    if (this.#tokens < 1) return false;
    this.#tokens--;
    return true;
  }

  /** The node as the others see it. */
  get public(): RelayMember {
    return { nickname: this.nickname, role: this.role };
  }

  /**
   * Whether this node hears messages from `speaker`: agents and bridges hear
   * only each other, so a bridge serves many agents that never see each other.
   */
  hears(speaker: { role: RelayRole }): boolean {
    return roleHears(this.role, speaker.role);
  }
}

/** Whether a node of role `listener` hears one of role `speaker` (agents and bridges hear only each other). */
export function roleHears(listener: RelayRole, speaker: RelayRole): boolean {
  if (speaker === "agent") return listener === "bridge";
  if (listener === "agent") return speaker === "bridge";
  return true;
}

/**
 * What arrives for a room in a cluster while a node is joining it: a
 * message, or a presence frame numbered by the room's presence counter.
 */
export type Arrival =
  | { entry: HistoryEntry }
  | { presence: number; nickname: string; data: string };

/** A nickname kept for the node that left it, with what the relay knew of that node. */
export interface Reservation {
  /** The join token that reclaims it. */
  token: string;
  /** The node's claim, which reclaims it too (a restarted process has no token). */
  claim?: string;
  /** Until when (clock ms). */
  until: number;
  /** The node's {@linkcode Member.lastSeq}, so its resent messages stay duplicates. */
  lastSeq: number;
}

/** The nodes that joined one session id, and the nicknames kept for those that left. */
export class Room {
  /** Joined nodes by nickname. */
  readonly members: Map<string, Member> = new Map();
  /** Nicknames of nodes that left, kept for their join token until the time given. */
  readonly reserved: Map<string, Reservation> = new Map();
  /** The messages delivered in the room, for nodes back from a blip (in memory only). */
  readonly history: History;
  /**
   * In a cluster: what arrives for the room while nodes are joining it,
   * kept for each of them until its welcome is out.
   */
  readonly joining: Set<Arrival[]> = new Set();
  /**
   * Until when (clock ms) messages nobody here hears wait in the history: a
   * node came back from an earlier life of the room, and its other members
   * may be on their way too (Hub's `rejoinGrace`).
   */
  rejoinUntil = 0;

  /**
   * A room named by the session id `id`, keeping `history` of its messages
   * (within `budget`, shared with the relay's other rooms), made at
   * `createdAt` (clock ms).
   */
  constructor(
    readonly id: string,
    history: HistoryLimits,
    readonly createdAt = 0,
    budget?: HistoryBudget,
  ) {
    this.history = new History(history, budget);
  }

  /** Whether `name` is held (by a member, or reserved) for the node with `token`. */
  givenTo(name: string, token: string | undefined, now: number): boolean {
    if (token === undefined) return false;
    const holder = this.members.get(name);
    if (holder) return secretsEqual(holder.token, token);
    const reservation = this.reserved.get(name);
    return reservation !== undefined && reservation.until >= now &&
      secretsEqual(reservation.token, token);
  }

  /**
   * `wanted`, or `wanted(1)`, `wanted(2)`, ...: the first nickname neither
   * taken nor reserved for someone else than the holder of `token` or of
   * `claim`.
   */
  freeName(
    wanted: string,
    token: string | undefined,
    now: number,
    claim?: string,
  ): string {
    const free = (name: string) => {
      if (this.members.has(name)) return false;
      const reservation = this.reserved.get(name);
      if (!reservation || reservation.until < now) return true;
      return (token !== undefined && secretsEqual(reservation.token, token)) ||
        (claim !== undefined && reservation.claim !== undefined &&
          secretsEqual(reservation.claim, claim));
    };
    if (free(wanted)) return wanted;
    for (let i = 1;; i++) {
      const name = `${wanted}(${i})`;
      if (free(name)) return name;
    }
  }

  /** The other members, as the node `except` sees them. */
  snapshot(except: Member): RelayMember[] {
    return [...this.members.values()].filter((m) => m !== except).map((m) => m.public);
  }
}
