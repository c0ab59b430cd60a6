import assert from "node:assert/strict";
import { MIN_POST_BYTES, PostSizing } from "./_post_sizing.ts";

Deno.test("PostSizing: a POST that did not get through halves the size, down to a floor; full POSTs answered in a run double it back", () => {
  const sizing = new PostSizing(1 << 20);
  assert.equal(sizing.failed(1 << 20, false), 512 << 10);
  // A POST that was smaller than the size: half of it, a power of two.
  assert.equal(sizing.failed(300_000, false), 128 << 10);
  for (let i = 0; i < 10; i++) sizing.failed(MIN_POST_BYTES, false);
  assert.equal(sizing.bytes, MIN_POST_BYTES);
  // Small POSTs say nothing of large ones; 16 full ones in a row double it.
  for (let i = 0; i < 100; i++) sizing.answered(100);
  assert.equal(sizing.bytes, MIN_POST_BYTES);
  for (let i = 0; i < 15; i++) sizing.answered(MIN_POST_BYTES);
  assert.equal(sizing.bytes, MIN_POST_BYTES);
  sizing.answered(MIN_POST_BYTES);
  assert.equal(sizing.bytes, 2 * MIN_POST_BYTES);
  // Never past the largest.
  for (let i = 0; i < 1000; i++) sizing.answered(sizing.bytes);
  assert.equal(sizing.bytes, 1 << 20);
});

Deno.test("PostSizing: never back to a size a proxy refused as too large (its setting, not a passing fault)", () => {
  const sizing = new PostSizing(1 << 20);
  sizing.failed(1 << 20, true);
  assert.equal(sizing.failed(512 << 10, true), 256 << 10);
  for (let i = 0; i < 1000; i++) sizing.answered(sizing.bytes);
  assert.equal(sizing.bytes, 256 << 10);
});
