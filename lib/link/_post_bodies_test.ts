// What an HTTP-streaming link has to POST: every byte once, in order, in
// bodies of at most the limit, and a busy link reusing one buffer.

import assert from "node:assert/strict";
import { PostBodies } from "./_post_bodies.ts";

Deno.test("PostBodies: writes of any size come out in order, in bodies of at most the limit", () => {
  const max = 64 * 1024;
  const bodies = new PostBodies(max);
  const written: number[] = [];
  let next = 0;
  // Sizes from a byte to several bodies' worth, as a session writes frames and payloads.
  for (const size of [1, 13, 5, 70_000, 300, 64 * 1024, 2, 200_000, 9]) {
    const data = Uint8Array.from({ length: size }, () => next++ % 251);
    bodies.append(data);
    for (const byte of data) written.push(byte);
  }
  assert.equal(bodies.size, written.length);
  const out: number[] = [];
  for (let body; (body = bodies.shift()) !== null;) {
    assert.ok(body.length > 0 && body.length <= max, `a body of ${body.length}`);
    for (const byte of body) out.push(byte);
  }
  assert.equal(bodies.size, 0);
  assert.deepEqual(out, written);
});

Deno.test("PostBodies: a full body's buffer, given back once POSTed, takes the next writes", () => {
  const max = 64 * 1024;
  const bodies = new PostBodies(max);
  bodies.append(new Uint8Array(max).fill(1));
  const first = bodies.shift()!;
  assert.equal(first.length, max);
  bodies.recycle(first);
  bodies.append(new Uint8Array(100).fill(2));
  const second = bodies.shift()!;
  assert.equal(second.buffer, first.buffer, "no new buffer for a busy link");
  assert.deepEqual([...second], new Array(100).fill(2));
  // A body in a buffer of its own size is not kept: a quiet link holds little.
  bodies.append(new Uint8Array(10));
  const small = bodies.shift()!;
  assert.notEqual(small.buffer, first.buffer, "the spare was taken by the second body");
  assert.ok(small.buffer.byteLength < max);
  bodies.recycle(small);
  bodies.recycle(second);
  bodies.append(new Uint8Array(10));
  assert.equal(bodies.shift()!.buffer, first.buffer, "only the full-size buffer is kept");
});
