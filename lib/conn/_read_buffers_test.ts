import assert from "node:assert/strict";
import { ReadBuffers } from "./_read_buffers.ts";

const SIZE = 1024;

Deno.test("ReadBuffers: a buffer with queued views is replaced, then reused once they are consumed", () => {
  const buffers = new ReadBuffers(SIZE, 2);
  const first = new Uint8Array(SIZE);
  const a = first.subarray(0, 10);
  const b = first.subarray(10, 20);
  assert.ok(buffers.hold(a, 0));
  assert.ok(buffers.hold(b, 10));
  assert.ok(buffers.lent(a) && buffers.lent(first));
  const second = buffers.replace(first);
  assert.notEqual(second.buffer, first.buffer, "the link reads into another buffer");
  buffers.drop(a);
  assert.ok(buffers.lent(first), "one view is still queued");
  buffers.drop(b);
  assert.ok(!buffers.lent(first));
  assert.equal(buffers.replace(second).buffer, first.buffer, "the consumed buffer comes back");
});

Deno.test("ReadBuffers: a buffer the link still reads into is not handed out twice", () => {
  const buffers = new ReadBuffers(SIZE, 2);
  const current = new Uint8Array(SIZE);
  assert.ok(buffers.hold(current.subarray(0, 5), 0));
  // Consumed before the link read again: the link keeps it, it is not free.
  buffers.drop(current.subarray(0, 5));
  const other = new Uint8Array(SIZE);
  assert.notEqual(buffers.replace(other).buffer, current.buffer);
});

Deno.test("ReadBuffers: views that were never lent are ignored", () => {
  const buffers = new ReadBuffers(SIZE, 2);
  buffers.drop(new Uint8Array(4));
  assert.equal(buffers.held, 0);
});

Deno.test("ReadBuffers: tiny frames cannot pin a buffer each (past the minimum, lending follows queued bytes)", () => {
  const buffers = new ReadBuffers(SIZE, 4);
  let queued = 0;
  let lent = 0;
  for (let i = 0; i < 100; i++) {
    // One byte per buffer: the worst a peer can do.
    if (buffers.hold(new Uint8Array(SIZE).subarray(0, 1), queued)) lent++;
    queued++;
  }
  assert.equal(lent, 6, "4 buffers, plus 2 for the (under one buffer's worth of) queued bytes");
  assert.equal(buffers.held, 6);
  // Whole buffers of queued bytes may be lent two buffers each.
  assert.ok(buffers.hold(new Uint8Array(SIZE), 10 * SIZE));
});

Deno.test("ReadBuffers: trim frees what sat unused since the last trim", () => {
  const buffers = new ReadBuffers(SIZE, 8);
  const free: Uint8Array<ArrayBuffer>[] = [];
  // Lend three buffers, retire them, consume them: three free buffers.
  let current = new Uint8Array(SIZE);
  for (let i = 0; i < 3; i++) {
    const view = current.subarray(0, 1);
    buffers.hold(view, 0);
    free.push(current);
    current = buffers.replace(current);
  }
  for (const buffer of free) buffers.drop(buffer.subarray(0, 1));
  buffers.trim(); // starts the first interval
  const reused = buffers.replace(current); // one of the three is used again
  assert.ok(free.some((buffer) => buffer.buffer === reused.buffer));
  buffers.trim(); // the other two sat unused: gone
  const fresh = buffers.replace(reused);
  assert.ok(!free.some((buffer) => buffer.buffer === fresh.buffer), "nothing was kept");
});
