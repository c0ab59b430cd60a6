import assert from "node:assert/strict";
import { SourceBuckets } from "./_source_buckets.ts";

Deno.test("SourceBuckets: a burst, then the rate, per source; other sources unaffected", () => {
  let now = 0;
  const buckets = new SourceBuckets(10, 20, 100, () => now);
  let granted = 0;
  for (let i = 0; i < 100; i++) if (buckets.take("10.0.0.1")) granted++;
  assert.equal(granted, 20, "the burst");
  assert.ok(buckets.take("10.0.0.2"), "another source has its own bucket");
  now += 500; // half a second: 5 more tokens
  granted = 0;
  for (let i = 0; i < 100; i++) if (buckets.take("10.0.0.1")) granted++;
  assert.equal(granted, 5);
  now += 60_000; // a long pause refills to the burst, not beyond
  granted = 0;
  for (let i = 0; i < 100; i++) if (buckets.take("10.0.0.1")) granted++;
  assert.equal(granted, 20);
});

Deno.test("SourceBuckets: the table stays within maxSources, forgetting the least recently seen", () => {
  const now = 0;
  const buckets = new SourceBuckets(1, 1, 3, () => now);
  assert.ok(buckets.take("a"));
  assert.ok(buckets.take("b"));
  assert.ok(!buckets.take("a"), "a spent its token");
  assert.ok(buckets.take("c"));
  assert.ok(buckets.take("d"), "b, the stalest, is forgotten to make room");
  assert.equal(buckets.size, 3);
  assert.ok(buckets.take("b"), "b is new again");
  assert.ok(!buckets.take("d"), "d is still tracked");
});
