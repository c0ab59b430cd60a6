// A queue's chunks handed over as they were pushed (the relay passes POST
// bodies on without copying them), or copied into a reader's buffer.

import assert from "node:assert/strict";
import { ByteQueue } from "./_byte_queue.ts";

Deno.test("ByteQueue.take hands over the chunks pushed, not copies, at most `max` bytes at once", async () => {
  const queue = new ByteQueue();
  const first = new Uint8Array([1, 2, 3, 4, 5]);
  const second = new Uint8Array([6, 7]);
  queue.push(first);
  queue.push(second);
  const part = await queue.take(3);
  assert.equal(part!.buffer, first.buffer, "a view of the chunk pushed");
  assert.deepEqual([...part!], [1, 2, 3]);
  assert.equal(queue.size, 4);
  assert.deepEqual([...(await queue.take(100))!], [4, 5], "the rest of the first chunk only");
  assert.equal(await queue.take(100), second, "a whole chunk is the chunk itself");
  const buffer = new Uint8Array(8);
  queue.push(new Uint8Array([9, 9, 9]));
  assert.equal(await queue.read(buffer), 3, "read copies into the reader's buffer");
  assert.deepEqual([...buffer.subarray(0, 3)], [9, 9, 9]);
  queue.end();
  assert.equal(await queue.take(100), null);
});
