/**
 * A room's message history: the messages the relay delivered, numbered by
 * offset (1, 2, ...), kept so that a node back from a blip gets what it
 * missed. Bounded by count, bytes and age; what falls out is remembered only
 * as "everything up to offset N is gone", which is what tells a node whose
 * position is older that it cannot be recovered.
 *
 * @module
 */

import { base64url } from "../_util.ts";
import type { RelayRole } from "./_protocol.ts";

/** How much history a room keeps. */
export interface HistoryLimits {
  /** Messages. */
  count: number;
  /** Bytes of encoded frames, as held in memory ({@linkcode heldBytes}). */
  bytes: number;
  /** Age, ms (clock time). */
  age: number;
}

/**
 * What the histories of all rooms hold together, and the most they may: a
 * history past it after an append asks `evict` to make room (the relay
 * drops the histories of rooms nobody is in first). Without one, each room
 * alone was bounded, and 10,000 rooms of 4 MiB are 40 GiB.
 */
export interface HistoryBudget {
  /** Bytes held by every history sharing this budget. */
  used: number;
  /** The most they may hold. */
  max: number;
  /** Called when `used` passed `max` after `history` appended. */
  evict(history: History): void;
}

/** Characters past Latin-1: V8 then holds the string in two bytes a character. */
const TWO_BYTE = /[\u0100-\uffff]/;
/** What a dropped message's slot holds until the array is compacted. */
const DROPPED: HistoryEntry = { offset: 0, at: 0, from: "", role: "peer", data: "" };

/**
 * Memory a frame's text takes: one byte a character, or two for text past
 * Latin-1 (CJK, emoji). Counting characters, 4 MiB of Chinese held 8 MiB.
 */
export function heldBytes(data: string): number {
  return TWO_BYTE.test(data) ? 2 * data.length : data.length;
}

/** One delivered message, as every receiver got it. */
export interface HistoryEntry {
  /** Its offset in the room. */
  offset: number;
  /** When it was delivered (clock ms). */
  at: number;
  /** The sender's nickname and role: who may hear it is decided again on replay. */
  from: string;
  /** The sender's role. */
  role: RelayRole;
  /** The one receiver of a directed message. */
  to?: string;
  /** The encoded frame. */
  data: string;
}

/** A room's history. */
export class History {
  /** Names this history; a relay that starts afresh starts a new one. */
  readonly epoch: string = randomEpoch();
  #entries: HistoryEntry[] = [];
  /** Each entry's {@linkcode heldBytes}, beside it. */
  #sizes: number[] = [];
  #head = 0;
  #bytes = 0;
  #budget: HistoryBudget | undefined;
  #offset = 0;
  #forgotten = 0;

  /** A history within `limits`, and `budget` shared with other rooms', if given. */
  constructor(readonly limits: HistoryLimits, budget?: HistoryBudget) {
    this.#budget = budget;
  }

  /** The offset of the latest message (0 before the first). */
  get offset(): number {
    return this.#offset;
  }

  /** The next message's offset. */
  next(): number {
    return this.#offset + 1;
  }

  /** Messages held. */
  get size(): number {
    return this.#entries.length - this.#head;
  }

  /** Bytes held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** When the newest message was delivered, or `null` when none is held. */
  get newest(): number | null {
    return this.size === 0 ? null : this.#entries[this.#entries.length - 1].at;
  }

  /** Keeps `entry` (whose offset is {@linkcode History.next}), dropping the oldest beyond the limits. */
  append(entry: HistoryEntry): void {
    this.#offset = entry.offset;
    const size = heldBytes(entry.data);
    this.#entries.push(entry);
    this.#sizes.push(size);
    this.#bytes += size;
    if (this.#budget) this.#budget.used += size;
    while (this.size > this.limits.count || this.#bytes > this.limits.bytes) this.dropOldest();
    if (this.#budget && this.#budget.used > this.#budget.max) this.#budget.evict(this);
  }

  /** Forgets every message held (what comes next is still numbered on). */
  clear(): void {
    while (this.size > 0) this.dropOldest();
  }

  /** Drops what is older than the age limit. */
  expire(now: number): void {
    while (this.size > 0 && now - this.#entries[this.#head].at > this.limits.age) {
      this.dropOldest();
    }
  }

  /**
   * The messages after `offset`, oldest first; `null` when some of them are
   * no longer held (so a node there cannot be told everything it missed).
   */
  since(offset: number): HistoryEntry[] | null {
    if (offset < this.#forgotten || offset > this.#offset) return null;
    const first = this.#head + (this.size - (this.#offset - offset));
    return this.#entries.slice(first);
  }

  /**
   * The messages held after `offset`, oldest first: for a node that cannot
   * be told everything it missed, what can still be told.
   */
  heldAfter(offset: number): HistoryEntry[] {
    const after = this.#entries.slice(this.#head);
    const first = after.findIndex((entry) => entry.offset > offset);
    return first === -1 ? [] : after.slice(first);
  }

  /** Forgets the oldest message held; only while {@linkcode History.size} > 0. */
  dropOldest(): void {
    const head = this.#head++;
    const size = this.#sizes[head];
    const entry = this.#entries[head];
    // The slot lets go of the message at once: what the budget no longer
    // counts must not stay in memory until the array is next compacted.
    this.#entries[head] = DROPPED;
    this.#bytes -= size;
    if (this.#budget) this.#budget.used -= size;
    this.#forgotten = entry.offset;
    // Dropped slots go in one slice now and then, not one shift each.
    if (this.#head === this.#entries.length) {
      this.#entries = [];
      this.#sizes = [];
      this.#head = 0;
    } else if (this.#head >= 64 && this.#head * 2 >= this.#entries.length) {
      this.#entries = this.#entries.slice(this.#head);
      this.#sizes = this.#sizes.slice(this.#head);
      this.#head = 0;
    }
  }
}

function randomEpoch(): string {
  // 9 bytes: 12 characters, no padding either way.
  return base64url(crypto.getRandomValues(new Uint8Array(9)));
}
