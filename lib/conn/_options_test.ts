import assert from "node:assert/strict";
import { resolveOptions } from "./_options.ts";

Deno.test("resolveOptions fills in the documented defaults", () => {
  const options = resolveOptions({});
  assert.deepEqual(options, {
    key: null,
    heartbeatInterval: 1000,
    deadLinkTimeout: 2500,
    resumeTimeout: 120_000,
    encrypt: false,
    maxUnackedBytes: 32 << 20,
    handshakeTimeout: 10_000,
    backoff: { initial: 100, max: 5000, probeInterval: 50 },
  });
  assert.deepEqual(resolveOptions({ key: "k" }).key, new TextEncoder().encode("k"));
});

Deno.test("resolveOptions names the setting it refuses", () => {
  const cases: [Parameters<typeof resolveOptions>[0], RegExp][] = [
    [{ key: "" }, /key must be a non-empty string or Uint8Array/],
    [{ key: new Uint8Array(0) }, /key must be a non-empty/],
    [{ heartbeatInterval: 5 }, /heartbeatInterval must be a number >= 10, got 5/],
    [{ deadLinkTimeout: Number.NaN }, /deadLinkTimeout must be a number >= 10/],
    [{ heartbeatInterval: 1000, deadLinkTimeout: 1000 }, /must be longer than heartbeatInterval/],
    [{ resumeTimeout: 0 }, /resumeTimeout must be a number >= 1, got 0/],
    [{ maxUnackedBytes: 100 }, /maxUnackedBytes must be a number >= 1024, got 100/],
    [{ maxUnackedBytes: 2 ** 32 }, /maxUnackedBytes must be at most 4294967295/],
    [{ handshakeTimeout: Infinity }, /handshakeTimeout must be a number >= 1/],
    [{ backoff: { initial: -1 } }, /backoff.initial must be a number >= 1/],
    [{ backoff: { initial: 500, max: 100 } }, /backoff.max must be a number >= 500, got 100/],
    [{ backoff: { probeInterval: 0 } }, /backoff.probeInterval must be a number >= 1, got 0/],
    // A timer longer than 2^31 - 1 ms fires at once: a 30-day resume timeout
    // gave a session up the moment its link broke.
    [{ resumeTimeout: 30 * 86_400_000 }, /resumeTimeout must be at most 2147483647 ms/],
    [{ handshakeTimeout: 2 ** 31 }, /handshakeTimeout must be at most 2147483647 ms/],
    [
      { heartbeatInterval: 2 ** 31, deadLinkTimeout: 2 ** 32 },
      /heartbeatInterval must be at most 2147483647 ms/,
    ],
    [{ backoff: { max: 2 ** 31 } }, /backoff.max must be at most 2147483647 ms/],
  ];
  for (const [options, message] of cases) {
    assert.throws(() => resolveOptions(options), message, JSON.stringify(options));
  }
});
