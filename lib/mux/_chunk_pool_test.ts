import assert from "node:assert/strict";
import { ChunkPool } from "./_chunk_pool.ts";

const KiB = 1024;

Deno.test("ChunkPool: large pieces land in reused 256 KiB buffers", () => {
  const pool = new ChunkPool();
  const piece = new Uint8Array(40_000).fill(7);
  const first = pool.copy(piece);
  assert.deepEqual(first, piece);
  assert.equal(first.buffer.byteLength, 256 * KiB);
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

Deno.test("ChunkPool: a piece goes in behind a chunk with room, in place; not behind a full one", () => {
  const pool = new ChunkPool();
  const first = pool.copy(new Uint8Array(200 * KiB).fill(1));
  const grown = pool.append(first, new Uint8Array([2, 3, 4]));
  assert.ok(grown !== null);
  assert.equal(grown.buffer, first.buffer, "no new buffer");
  assert.equal(grown.length, 200 * KiB + 3);
  assert.deepEqual([...grown.subarray(200 * KiB - 1)], [1, 2, 3, 4]);
  assert.equal(pool.append(grown, new Uint8Array(56 * KiB)), null, "one byte too many");
  // A plain copy has no room behind it.
  assert.equal(pool.append(pool.copy(new Uint8Array(10)), new Uint8Array(1)), null);
  // The rest of a split chunk still grows in place, behind its own end.
  const rest = grown.subarray(100 * KiB);
  const restGrown = pool.append(rest, new Uint8Array([5]));
  assert.ok(restGrown !== null);
  assert.equal(restGrown.byteOffset, 100 * KiB);
  assert.equal(restGrown[restGrown.length - 1], 5);
});
