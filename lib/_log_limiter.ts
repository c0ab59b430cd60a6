/**
 * Log lines an attacker cannot multiply. The first event of a kind is logged
 * as it comes; more of the same kind within the interval are only counted,
 * and summarised in one line when the next one comes after the interval, or
 * at {@linkcode LogLimiter.flush} ("1,843 more: dropped a link from
 * 127.0.0.5 in the last 10 s"). A flood of a million refusals costs a line
 * per interval per kind, not a million lines.
 *
 * @module
 */

/** Interval of summaries, ms. */
const INTERVAL_MS = 10_000;
/** Kinds tracked at once; the oldest are summarised and forgotten beyond this. */
const MAX_KINDS = 1024;

interface Kind {
  since: number;
  suppressed: number;
  what: string;
}

/** @internal */
export class LogLimiter {
  #emit: (line: string) => void;
  #clock: () => number;
  #kinds = new Map<string, Kind>();

  /** `emit` writes one line (a logger call); `clock` is for tests. */
  constructor(emit: (line: string) => void, clock: () => number = () => performance.now()) {
    this.#emit = emit;
    this.#clock = clock;
  }

  /**
   * An event of kind `key`, described by `what` (a full sentence for the
   * first line). Returns whether it was written now.
   */
  event(key: string, what: string): boolean {
    const now = this.#clock();
    const kind = this.#kinds.get(key);
    if (kind !== undefined && now - kind.since < INTERVAL_MS) {
      kind.suppressed++;
      kind.what = what;
      return false;
    }
    if (kind !== undefined) this.#summarise(kind, now);
    this.#kinds.delete(key);
    if (this.#kinds.size >= MAX_KINDS) {
      const [oldestKey, oldest] = this.#kinds.entries().next().value!;
      this.#summarise(oldest, now);
      this.#kinds.delete(oldestKey);
    }
    this.#kinds.set(key, { since: now, suppressed: 0, what });
    this.#emit(what);
    return true;
  }

  /** Writes the summaries still pending (on close, say). */
  flush(): void {
    const now = this.#clock();
    for (const kind of this.#kinds.values()) this.#summarise(kind, now);
    this.#kinds.clear();
  }

  #summarise(kind: Kind, now: number): void {
    if (kind.suppressed === 0) return;
    const seconds = Math.max(1, Math.round((now - kind.since) / 1000));
    this.#emit(
      `${
        kind.suppressed.toLocaleString("en-US")
      } more in the last ${seconds} s; the last: ${kind.what}`,
    );
  }
}
