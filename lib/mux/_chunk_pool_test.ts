import assert from "node:assert/strict";
import { ChunkPool } from "./_chunk_pool.ts";

const KiB = 1024;

Deno.test("ChunkPool: large pieces land in reused 256 KiB buffers", () => {
  const pool = new ChunkPool();
  const piece = new Uint8Array(40_000).fill(7);
  const first = pool.copy(piece, null);
  assert.deepEqual(first, piece);
  assert.equal(first.buffer.byteLength, 256 * KiB);
  pool.release(first);
  const second = pool.copy(new Uint8Array(50_000).fill(9), null);
  assert.equal(second.buffer, first.buffer, "the released buffer is reused");
  assert.ok(second.every((b) => b === 9));
});

Deno.test("ChunkPool: pieces of 4-16 KiB behind a chunk are plain copies, and parts of chunks are never taken back", () => {
  const pool = new ChunkPool();
  const small = pool.copy(new Uint8Array(5000), new Uint8Array(10));
  assert.equal(small.buffer.byteLength, 5000);
  const big = pool.copy(new Uint8Array(100_000), null);
  pool.release(big.subarray(50_000)); // still in use by whoever holds the first half
  pool.release(small);
  const next = pool.copy(new Uint8Array(100_000), null);
  assert.notEqual(next.buffer, big.buffer, "a part given back does not free the buffer");
});

Deno.test("ChunkPool: a piece goes in behind a chunk as far as it has room, in place", () => {
  const pool = new ChunkPool();
  const first = pool.copy(new Uint8Array(200 * KiB).fill(1), null);
  const grown = pool.extend(first, new Uint8Array([2, 3, 4]));
  assert.equal(grown.buffer, first.buffer, "no new buffer");
  assert.equal(grown.length, 200 * KiB + 3);
  assert.deepEqual([...grown.subarray(200 * KiB - 1)], [1, 2, 3, 4]);
  const filled = pool.extend(grown, new Uint8Array(60 * KiB).fill(5));
  assert.equal(filled.length, 256 * KiB, "filled up; the caller copies the rest");
  assert.equal(filled[256 * KiB - 1], 5);
  assert.equal(pool.extend(filled, new Uint8Array(1)), filled, "no room: unchanged");
  // A plain copy has no room behind it.
  const plain = pool.copy(new Uint8Array(5000), filled.subarray(0, 1));
  assert.equal(plain.buffer.byteLength, 5000);
  assert.equal(pool.extend(plain, new Uint8Array(1)), plain);
  // The rest of a split chunk still grows in place, behind its own end.
  const rest = grown.subarray(100 * KiB);
  const restGrown = pool.extend(rest, new Uint8Array([6]));
  assert.equal(restGrown.byteOffset, 100 * KiB);
  assert.equal(restGrown[restGrown.length - 1], 6);
});

Deno.test("ChunkPool: a small piece is pooled when it follows a full chunk (a busy stream)", () => {
  const pool = new ChunkPool();
  const piece = new Uint8Array(100).fill(3);
  const full = pool.extend(pool.copy(new Uint8Array(200 * KiB), null), new Uint8Array(56 * KiB));
  assert.equal(full.length, 256 * KiB);
  const partial = full.subarray(0, 200 * KiB); // no room behind it: a chunk read into
  assert.equal(
    pool.copy(piece, new Uint8Array(10)).buffer.byteLength,
    4 * KiB,
    "behind a plain copy: a small buffer, for the pieces behind it",
  );
  assert.equal(
    pool.copy(piece, partial).buffer.byteLength,
    4 * KiB,
    "behind a pooled chunk that is not full: a small buffer",
  );
  const busy = pool.copy(piece, full);
  assert.equal(busy.buffer.byteLength, 256 * KiB, "busy: room for what follows");
  assert.deepEqual(busy, piece);
  pool.release(busy);
  assert.equal(
    pool.copy(new Uint8Array(20 * KiB), null).buffer,
    busy.buffer,
    "given back whole",
  );
});

Deno.test("ChunkPool: a message that starts an empty queue goes into a small buffer, reused once written out", () => {
  const pool = new ChunkPool();
  const request = pool.copy(new Uint8Array([1, 2, 3]), null);
  assert.deepEqual([...request], [1, 2, 3]);
  assert.equal(request.buffer.byteLength, 4 * KiB);
  // The next piece, before the reader took the first, goes in behind it.
  const grown = pool.extend(request, new Uint8Array([4]));
  assert.equal(grown.buffer, request.buffer);
  pool.release(grown);
  const reply = pool.copy(new Uint8Array([9]), null);
  assert.equal(reply.buffer, request.buffer, "no new ArrayBuffer for the next message");
  assert.equal(reply[0], 9);
  assert.equal(
    pool.copy(new Uint8Array(5000), null).buffer.byteLength,
    5000,
    "over 4 KiB: exact",
  );
});
