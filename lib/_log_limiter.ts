/**
 * Log lines an attacker cannot multiply. The first event of a kind is logged
 * as it comes; more of the same kind within the interval are only counted,
 * and summarised in one line when the interval ends (or at
 * {@linkcode LogLimiter.flush}): "1843 more in the last 10 s; the last:
 * dropped a link from 127.0.0.5". A refusal that came second is in the log
 * within the interval, not whenever the next one happens to come. A flood of a million refusals costs a line
 * per interval per kind, not a million lines.
 *
 * @module
 */

/** Interval of summaries, ms. */
const INTERVAL_MS = 10_000;
/** Kinds tracked at once; the oldest are summarised and forgotten beyond this. */
const MAX_KINDS = 1024;

/**
 * Writes one log record (a logger call): a LogTape message template, whose
 * `{name}` placeholders name `properties`.
 */
export type WriteRecord = (template: string, properties: Properties) => void;

/** Properties of a record. */
export type Properties = Record<string, unknown>;

/** Starts `fire` after `ms`; returns what cancels it. */
export type SetTimer = (fire: () => void, ms: number) => () => void;

/** A timer that does not keep the process alive: a summary is no reason to stay. */
const unrefTimer: SetTimer = (fire, ms) => {
  const id = setTimeout(fire, ms);
  Deno.unrefTimer(id);
  return () => clearTimeout(id);
};

interface Kind {
  since: number;
  suppressed: number;
  /** The last event's template and properties. */
  template: string;
  properties: Properties;
}

/** @internal */
export class LogLimiter {
  #emit: WriteRecord;
  #clock: () => number;
  #kinds = new Map<string, Kind>();
  #setTimer: SetTimer;
  /** Cancels the timer that writes the summaries due, if one runs. */
  #cancelTimer: (() => void) | null = null;
  /** When that timer fires (clock ms). */
  #timerDue = Infinity;
  #flushed = false;

  /**
   * `emit` writes one record (`(template, properties) => log.warn(template,
   * properties)`): the events' own, and the summaries, whose properties are
   * the last event's plus `summarized` (the count) and `summarySeconds`
   * (names an event's properties may not use). `clock` and `setTimer` are
   * for tests.
   */
  constructor(
    emit: WriteRecord,
    clock: () => number = () => performance.now(),
    setTimer: SetTimer = unrefTimer,
  ) {
    this.#emit = emit;
    this.#clock = clock;
    this.#setTimer = setTimer;
  }

  /**
   * An event of kind `key`, described by a message template (a full
   * sentence) and its properties: values that come from outside (an
   * address, a nickname, an error's message) go in properties, where a brace
   * they hold is printed as it is. Returns whether it was written now.
   */
  event(key: string, template: string, properties: Properties = {}): boolean {
    if ("summarized" in properties || "summarySeconds" in properties) {
      // A summary would say its own value there instead (it did, of a time).
      throw new TypeError("summarized and summarySeconds are the summary's properties");
    }
    const now = this.#clock();
    const kind = this.#kinds.get(key);
    if (kind !== undefined && now - kind.since < INTERVAL_MS) {
      kind.suppressed++;
      kind.template = template;
      kind.properties = properties;
      this.#schedule(kind.since + INTERVAL_MS - now);
      return false;
    }
    if (kind !== undefined) this.#summarise(kind, now);
    this.#kinds.delete(key);
    if (this.#kinds.size >= MAX_KINDS) {
      const [oldestKey, oldest] = this.#kinds.entries().next().value!;
      this.#summarise(oldest, now);
      this.#kinds.delete(oldestKey);
    }
    this.#kinds.set(key, { since: now, suppressed: 0, template, properties });
    this.#emit(template, properties);
    return true;
  }

  /** Writes the summaries still pending, and schedules none after: on close. */
  flush(): void {
    this.#flushed = true;
    this.#cancelTimer?.();
    this.#cancelTimer = null;
    this.#timerDue = Infinity;
    const now = this.#clock();
    for (const kind of this.#kinds.values()) this.#summarise(kind, now);
    this.#kinds.clear();
  }

  /**
   * Writes the summaries due in `ms` then: one timer for every kind, set
   * for the earliest due (a kind whose interval ends sooner moves it up).
   */
  #schedule(ms: number): void {
    if (this.#flushed) return;
    const due = this.#clock() + Math.max(0, ms);
    if (this.#cancelTimer !== null) {
      if (due >= this.#timerDue) return;
      this.#cancelTimer();
    }
    this.#timerDue = due;
    this.#cancelTimer = this.#setTimer(() => {
      this.#cancelTimer = null;
      this.#timerDue = Infinity;
      this.#summariseDue();
    }, Math.max(0, ms));
  }

  /** Summarises and forgets the kinds whose interval is over; waits for the next one due. */
  #summariseDue(): void {
    const now = this.#clock();
    let next = Infinity;
    for (const [key, kind] of this.#kinds) {
      const ends = kind.since + INTERVAL_MS;
      if (ends <= now) {
        this.#summarise(kind, now);
        this.#kinds.delete(key);
      } else if (kind.suppressed > 0) next = Math.min(next, ends);
    }
    if (next !== Infinity) this.#schedule(next - now);
  }

  #summarise(kind: Kind, now: number): void {
    if (kind.suppressed === 0) return;
    const seconds = Math.max(1, Math.round((now - kind.since) / 1000));
    this.#emit(`{summarized} more in the last {summarySeconds} s; the last: ${kind.template}`, {
      ...kind.properties,
      summarized: kind.suppressed,
      summarySeconds: seconds,
    });
  }
}
