/**
 * A token bucket per source (an IP address, an IPv6 /64): how many
 * handshakes one source may start per second, with bursts. The table is
 * bounded: beyond `maxSources` the least recently seen are forgotten (a
 * forgotten source starts again with a full bucket, which costs an attacker
 * with that many addresses nothing it did not have anyway).
 *
 * @module
 */

interface Bucket {
  tokens: number;
  at: number;
}

/** Token buckets by source. */
export class SourceBuckets {
  #rate: number;
  #burst: number;
  #maxSources: number;
  #clock: () => number;
  #buckets = new Map<string, Bucket>();

  /** `rate` tokens per second per source, at most `burst` saved up. `clock` (ms) is for tests. */
  constructor(
    rate: number,
    burst: number,
    maxSources = 10_000,
    clock: () => number = () => performance.now(),
  ) {
    this.#rate = rate;
    this.#burst = burst;
    this.#maxSources = maxSources;
    this.#clock = clock;
  }

  /** Sources tracked now. */
  get size(): number {
    return this.#buckets.size;
  }

  /** Takes a token for `source`; false when its bucket is empty. */
  take(source: string): boolean {
    const now = this.#clock();
    let bucket = this.#buckets.get(source);
    if (bucket) {
      // Re-inserted: the map's order is least recently seen first.
      this.#buckets.delete(source);
      bucket.tokens = Math.min(this.#burst, bucket.tokens + (now - bucket.at) * this.#rate / 1000);
      bucket.at = now;
    } else {
      bucket = { tokens: this.#burst, at: now };
      if (this.#buckets.size >= this.#maxSources) {
        const [stalest] = this.#buckets.keys();
        this.#buckets.delete(stalest);
      }
    }
    this.#buckets.set(source, bucket);
    if (bucket.tokens < 1) return false;
    bucket.tokens--;
    return true;
  }
}
