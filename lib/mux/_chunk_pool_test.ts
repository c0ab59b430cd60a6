import assert from "node:assert/strict";
import { ChunkPool } from "./_chunk_pool.ts";

Deno.test("ChunkPool: large pieces land in reused buffers at most twice their size", () => {
  const pool = new ChunkPool();
  const piece = new Uint8Array(40_000).fill(7);
  const first = pool.copy(piece);
  assert.deepEqual(first, piece);
  assert.equal(first.buffer.byteLength, 64 * 1024, "the next power of two");
  pool.release(first);
  const second = pool.copy(new Uint8Array(50_000).fill(9));
  assert.equal(second.buffer, first.buffer, "the released buffer is reused");
  assert.ok(second.every((b) => b === 9));
});

Deno.test("ChunkPool: small pieces are plain copies, and parts of chunks are never taken back", () => {
  const pool = new ChunkPool();
  const small = pool.copy(new Uint8Array(100));
  assert.equal(small.buffer.byteLength, 100);
  const big = pool.copy(new Uint8Array(100_000));
  pool.release(big.subarray(50_000)); // still in use by whoever holds the first half
  pool.release(small);
  const next = pool.copy(new Uint8Array(100_000));
  assert.notEqual(next.buffer, big.buffer, "a part given back does not free the buffer");
});
