/**
 * The send window: how many bytes may be unacknowledged at once. It follows
 * the path like TCP's: it grows toward twice the measured bandwidth-delay
 * product (the fastest recent delivery rate times the shortest recent round
 * trip), never above the most both ends allow, and shrinks back when the
 * rate falls. What the window bounds is what a session may hold: the replay
 * ring grows with it (and is not given back while the session lives).
 *
 * A slow reader does not inflate it: an ack means the peer's *application*
 * consumed the bytes, so a slow reader shows as a low delivery rate, and the
 * window stays at its floor.
 *
 * @module
 */

/** Send points remembered for round-trip samples (older ones are dropped). */
const MAX_POINTS = 64;
/** Delivery-rate samples span at least this long, so one ack burst is not a rate. */
const MIN_RATE_INTERVAL_MS = 10;
/** The fastest of this many recent rate samples counts. */
const RATE_SAMPLES = 8;
/** The shortest round trip is forgotten after this long (the path may have changed). */
const MIN_RTT_LIFETIME_MS = 10_000;

/** Adaptive limit on unacknowledged bytes; see the module doc. */
export class SendWindow {
  #floor: number;
  #max: number;
  #limit: number;
  #points: { position: number; at: number }[] = [];
  #minRtt = Infinity;
  #minRttAt = 0;
  #rates: number[] = [];
  #rateFrom: { position: number; at: number } | null = null;

  /** A window never below `floor` nor above `max` bytes; it starts at the floor. */
  constructor(floor: number, max: number) {
    this.#max = max;
    this.#floor = Math.min(floor, max);
    this.#limit = this.#floor;
  }

  /** Bytes that may be unacknowledged now. */
  get limit(): number {
    return this.#limit;
  }

  /** The most the peer accepts changed (a new link announced its receive window). */
  setMax(max: number): void {
    this.#max = max;
    this.#floor = Math.min(this.#floor, max);
    this.#limit = Math.min(Math.max(this.#limit, this.#floor), max);
  }

  /** Data up to `position` left for the peer at `now` (ms). */
  sent(position: number, now: number): void {
    const last = this.#points.at(-1);
    if (last && last.position >= position) return;
    if (this.#points.length >= MAX_POINTS) this.#points.shift();
    this.#points.push({ position, at: now });
  }

  /** A link was replaced: send times on the old one say nothing about the new path. */
  reset(): void {
    this.#points.length = 0;
    this.#rateFrom = null;
  }

  /** A round trip measured another way (a ping's pong). */
  rtt(ms: number, now: number): void {
    if (ms < this.#minRtt || now - this.#minRttAt > MIN_RTT_LIFETIME_MS) {
      this.#minRtt = ms;
      this.#minRttAt = now;
    }
  }

  /** The peer consumed everything before `position` (an ack) at `now`. */
  acked(position: number, now: number): void {
    let newest: { position: number; at: number } | undefined;
    while (this.#points.length > 0 && this.#points[0].position <= position) {
      newest = this.#points.shift();
    }
    if (newest) this.rtt(now - newest.at, now);
    if (this.#rateFrom === null) {
      this.#rateFrom = { position, at: now };
      return;
    }
    const elapsed = now - this.#rateFrom.at;
    if (elapsed < Math.max(MIN_RATE_INTERVAL_MS, this.#minRtt === Infinity ? 0 : this.#minRtt)) {
      return;
    }
    this.#rates.push((position - this.#rateFrom.position) / elapsed);
    if (this.#rates.length > RATE_SAMPLES) this.#rates.shift();
    this.#rateFrom = { position, at: now };
    this.#retarget();
  }

  #retarget(): void {
    if (this.#minRtt === Infinity) return;
    const bdp = Math.max(...this.#rates) * this.#minRtt;
    this.#limit = Math.min(this.#max, Math.max(this.#floor, Math.ceil(2 * bdp)));
  }
}
