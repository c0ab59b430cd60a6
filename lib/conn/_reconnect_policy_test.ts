import assert from "node:assert/strict";
import {
  FLAP_BACKOFF_MAX_MS,
  RACE_INTERVAL_MAX_MS,
  ReconnectPolicy,
  SHORT_LIVED_MS,
} from "./_reconnect_policy.ts";

const BACKOFF = { initial: 100, max: 5000, probeInterval: 50 };
/** No jitter: the factor is exactly 0.5, so every delay is known. */
const noJitter = () => 0;

Deno.test("a link that worked and broke is redialed at once", () => {
  const policy = new ReconnectPolicy(BACKOFF, noJitter);
  assert.equal(policy.linkLost(true), 0);
  assert.equal(policy.failures, 0);
});

Deno.test("refused attempts grow the backoff exponentially up to the cap", () => {
  const policy = new ReconnectPolicy(BACKOFF, noJitter);
  const delays = Array.from({ length: 9 }, () => policy.attemptFailed(true, 0));
  assert.deepEqual(delays, [50, 100, 200, 400, 800, 1600, 2500, 2500, 2500]);
  assert.equal(policy.failures, 9);
});

Deno.test("a link that carries data resets the backoff; the next loss redials at once", () => {
  const policy = new ReconnectPolicy(BACKOFF, noJitter);
  for (let i = 0; i < 6; i++) policy.attemptFailed(true, 0);
  policy.linkProven();
  assert.equal(policy.failures, 0);
  assert.equal(policy.linkLost(true), 0);
  assert.equal(policy.attemptFailed(true, 0), 50, "the backoff starts over");
});

Deno.test("a link that dies before it carries anything counts as a failure", () => {
  const policy = new ReconnectPolicy(BACKOFF, noJitter);
  policy.attemptFailed(true, 0);
  policy.attemptFailed(true, 0);
  // The handshake succeeded, but the link died before any frame: no reset.
  assert.equal(policy.linkLost(false), 200);
  assert.equal(policy.failures, 3);
});

Deno.test("unanswered attempts are probed at the probe interval and never grow the backoff", () => {
  const policy = new ReconnectPolicy(BACKOFF, noJitter);
  for (let i = 0; i < 100; i++) assert.equal(policy.attemptFailed(false, 0), 25);
  assert.equal(policy.failures, 0);
  assert.equal(policy.raceAfter(0), 50);
  // On a 100 ms path an attempt gets four round trips before it is raced.
  assert.equal(policy.raceAfter(100), 400);
  assert.equal(policy.attemptFailed(false, 100), 200);
});

Deno.test("jitter stays within [0.5, 1) of the ceiling", () => {
  const high = new ReconnectPolicy(BACKOFF, () => 0.999999);
  for (let i = 1; i <= 8; i++) {
    const ceiling = Math.min(5000, 100 * 2 ** (i - 1));
    const delay = high.attemptFailed(true, 0);
    assert.ok(delay >= ceiling / 2 && delay < ceiling, `failure ${i}: ${delay}`);
  }
});

Deno.test("links that work but each die at once (a path that cuts every connection) back off after two", () => {
  const policy = new ReconnectPolicy(BACKOFF, noJitter);
  const short = SHORT_LIVED_MS - 1;
  const delays = Array.from({ length: 5 }, () => {
    policy.linkProven();
    return policy.linkLost(true, short);
  });
  assert.deepEqual(delays, [0, 0, 50, 100, 200]);
  // And never more than a second apart: each of them worked.
  for (let i = 0; i < 10; i++) policy.linkLost(true, short);
  assert.equal(policy.linkLost(true, short), FLAP_BACKOFF_MAX_MS / 2, "a second, jittered");
  // One link that lasts puts it all behind: the next loss redials at once again.
  policy.linkProven();
  assert.equal(policy.linkLost(true, SHORT_LIVED_MS), 0);
  assert.equal(policy.linkLost(true, short), 0);
  // Resets a second apart (issue #9's load) are never slowed.
  for (let i = 0; i < 10; i++) assert.equal(policy.linkLost(true, 1000), 0);
});

Deno.test("races slow down as a dial loop lasts: a tenth of its length, up to a second", () => {
  const policy = new ReconnectPolicy(BACKOFF, noJitter);
  assert.equal(policy.raceAfter(0, 0), 50, "the probe interval at first");
  assert.equal(policy.raceAfter(0, 400), 50);
  assert.equal(policy.raceAfter(0, 3000), 300, "300 ms into a 3 s outage");
  assert.equal(policy.raceAfter(0, 60_000), RACE_INTERVAL_MAX_MS);
  assert.equal(policy.raceAfter(40, 0), 160, "four round trips on a long path");
});
