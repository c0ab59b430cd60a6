import assert from "node:assert/strict";
import { ChunkQueue } from "./_chunk_queue.ts";

Deno.test("ChunkQueue: first in, first out; the ends can be replaced; a queue that never empties lets go of what it handed out", async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "run with --v8-flags=--expose-gc (deno task test does)");
  const queue = new ChunkQueue();
  assert.equal(queue.length, 0);
  assert.equal(queue.last, undefined);
  queue.push(new Uint8Array([1, 2, 3]));
  queue.push(new Uint8Array([4]));
  queue.first = queue.first.subarray(1); // a partial take
  queue.last = new Uint8Array([4, 5]); // filled further
  assert.deepEqual([queue.length, [...queue.first], [...queue.last]], [2, [2, 3], [4, 5]]);
  queue.shift();
  assert.deepEqual([...queue.first], [4, 5]);
  // One chunk always behind: 1,000 pushed and taken, the queue never empty.
  const taken: WeakRef<Uint8Array>[] = [];
  for (let i = 0; i < 1000; i++) {
    queue.push(new Uint8Array(1024).fill(i & 0xff));
    taken.push(new WeakRef(queue.first));
    queue.shift();
  }
  assert.equal(queue.length, 1);
  assert.equal(queue.first[0], 999 & 0xff);
  await new Promise((resolve) => setTimeout(resolve, 0)); // weak references hold for the turn
  gc();
  const alive = taken.filter((ref) => ref.deref() !== undefined).length;
  assert.ok(alive <= 1, `${alive} of 1,000 chunks taken still held`);
});
