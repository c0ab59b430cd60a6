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
  /** Bytes of encoded frames. */
  bytes: number;
  /** Age, ms (clock time). */
  age: number;
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
  #head = 0;
  #bytes = 0;
  #offset = 0;
  #forgotten = 0;

  /** A history within `limits`. */
  constructor(readonly limits: HistoryLimits) {}

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
    this.#entries.push(entry);
    this.#bytes += entry.data.length;
    while (this.size > this.limits.count || this.#bytes > this.limits.bytes) this.#dropOldest();
  }

  /** Drops what is older than the age limit. */
  expire(now: number): void {
    while (this.size > 0 && now - this.#entries[this.#head].at > this.limits.age) {
      this.#dropOldest();
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

  #dropOldest(): void {
    const entry = this.#entries[this.#head++];
    this.#bytes -= entry.data.length;
    this.#forgotten = entry.offset;
    // Dropped entries go in one slice now and then, not one shift each.
    if (this.#head > 1024 && this.#head * 2 > this.#entries.length) {
      this.#entries = this.#entries.slice(this.#head);
      this.#head = 0;
    }
  }
}

function randomEpoch(): string {
  // 9 bytes: 12 characters, no padding either way.
  return base64url(crypto.getRandomValues(new Uint8Array(9)));
}
