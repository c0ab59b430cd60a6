import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import { BusyReads } from "./_busy_reads.ts";

Deno.test("a loop whose reads are always ready lets the event loop turn: a timer set before it runs while it goes on", async () => {
  const busy = new BusyReads();
  let fired = false;
  setTimeout(() => fired = true, 0);
  const started = performance.now();
  let reads = 0;
  // Bounded: without turns, the timer waits for the loop's end (10 s, or 10 million reads).
  while (!fired && reads < 10_000_000 && performance.now() - started < 10_000) {
    await Promise.resolve(); // a read whose bytes were there: no turn of the event loop
    reads++;
    if (busy.due()) await busy.turn();
  }
  assert.ok(fired, `the timer waited for all ${reads} reads`);
});

Deno.test("a loop that reads now and then never waits for a turn of its own", async () => {
  let now = 0;
  const busy = new BusyReads(() => now);
  for (let i = 0; i < 5; i++) {
    assert.equal(busy.due(), false); // sets its watch
    // Waits for its next bytes: a turn of the event loop, in which the
    // watch's immediate runs (before this one, set after it). A timer here
    // could fire first on a busy machine, before the check phase ran.
    await new Promise((resolve) => setImmediate(resolve));
    now += 1000;
  }
});
