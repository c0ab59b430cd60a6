import assert from "node:assert/strict";
import { ReplayBuffer } from "./_replay_buffer.ts";

/** Bytes `[from, from + n)` of a known pattern, so any misplaced byte shows. */
function bytes(from: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (from + i) * 7 % 251;
  return out;
}

/** Asserts that `got` holds the pattern from `from` on (a loop: deepEqual is slow on MiBs). */
function assertPattern(got: Uint8Array, from: number): void {
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== (from + i) * 7 % 251) assert.fail(`byte at position ${from + i} is wrong`);
  }
}

function read(buffer: ReplayBuffer, position: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  buffer.copyOut(position, out, 0, length);
  return out;
}

Deno.test("ReplayBuffer takes only what fits under its capacity and frees on release", () => {
  const buffer = new ReplayBuffer(1000);
  assert.equal(buffer.append(bytes(0, 600)), 600);
  assert.equal(buffer.append(bytes(600, 600)), 400, "only 400 bytes fit");
  assert.equal(buffer.free, 0);
  assert.equal(buffer.append(bytes(1000, 1)), 0, "a full buffer takes nothing");
  buffer.release(300);
  assert.equal(buffer.start, 300);
  assert.equal(buffer.free, 300);
  assert.equal(buffer.append(bytes(1000, 500)), 300);
  assert.equal(buffer.end, 1300);
  assert.deepEqual(read(buffer, 300, 1000), bytes(300, 1000));
});

Deno.test("ReplayBuffer keeps absolute positions across wrap-around and growth", () => {
  // Capacity above the initial ring size, so the ring grows while wrapped.
  const buffer = new ReplayBuffer(256 * 1024);
  let written = 0;
  let released = 0;
  for (let round = 0; round < 200; round++) {
    const n = 1 + (round * 7919) % 40_000;
    written += buffer.append(bytes(written, n).subarray(0, Math.min(n, buffer.free)));
    // Release a varying share, so the held range slides around the ring.
    released = Math.min(written, released + ((round * 104_729) % 30_000));
    buffer.release(released);
    assert.equal(buffer.start, released);
    assert.equal(buffer.end, written);
    const held = written - released;
    assertPattern(read(buffer, released, held), released);
  }
  assert.ok(written > 1_000_000, `the test moved only ${written} bytes`);
});

Deno.test("ReplayBuffer refuses to copy out bytes it no longer (or never) held", () => {
  const buffer = new ReplayBuffer(4096);
  buffer.append(bytes(0, 100));
  buffer.release(50);
  assert.throws(() => read(buffer, 40, 20), RangeError);
  assert.throws(() => read(buffer, 90, 20), RangeError);
  // Releasing beyond the end stops at the end.
  buffer.release(1_000);
  assert.equal(buffer.start, 100);
});

Deno.test("ReplayBuffer views are copy-free and stop where the ring wraps", () => {
  const buffer = new ReplayBuffer(64 * 1024);
  buffer.append(bytes(0, 60 * 1024));
  buffer.release(50 * 1024);
  buffer.append(bytes(60 * 1024, 20 * 1024)); // wraps: the ring is 64 KiB
  const first = buffer.view(50 * 1024, 1 << 20);
  assert.equal(first.length, 14 * 1024, "the view ends at the wrap");
  assertPattern(first, 50 * 1024);
  const rest = buffer.view(64 * 1024, 1 << 20);
  assert.equal(rest.length, 16 * 1024);
  assertPattern(rest, 64 * 1024);
  assert.equal(buffer.view(70 * 1024, 100).length, 100, "maxLength bounds the view");
  assert.throws(() => buffer.view(80 * 1024, 1), RangeError, "nothing held at the end");
});
