import assert from "node:assert/strict";
import { ChunkPool } from "./_chunk_pool.ts";
import { INITIAL_WINDOW } from "./_frames.ts";
import { StreamCore, type StreamOwner } from "./_stream_core.ts";

const KiB = 1024;

/** A stream's session, played by the test: its clock is set by hand, frames are counted. */
function fakeOwner(rttMs: number) {
  const clock = { now: 0 };
  const control: Uint8Array[] = [];
  const owner: StreamOwner = {
    maxWindow: 16 << 20,
    chunks: new ChunkPool(),
    sendControl: (frame) => control.push(frame),
    trySendData: () => true,
    sendData: () => Promise.resolve(),
    forget: () => {},
    rttMs: () => rttMs,
    now: () => clock.now,
  };
  return { owner, clock, control };
}

function piece(length: number, value: number): Uint8Array {
  return new Uint8Array(length).fill(value);
}

/** An accepted stream whose window already grew to the most (16 MiB): a reader kept up. */
function grownStream(): StreamCore {
  const { owner } = fakeOwner(1);
  const core = new StreamCore(1, owner, { incoming: true });
  core.accept();
  for (let i = 0; i < 10 && core.window < owner.maxWindow; i++) {
    // Half the window, in frames of at most 256 KiB (MAX_DATA) as they come.
    for (let fed = 0; fed < core.window / 2; fed += 256 * KiB) core.onData(piece(256 * KiB, 0));
    while (core.takeChunk() instanceof Uint8Array);
  }
  assert.equal(core.window, owner.maxWindow);
  return core;
}

Deno.test("StreamCore: pieces that arrive before the reader takes them come out as one chunk", () => {
  const { owner } = fakeOwner(1);
  const core = new StreamCore(1, owner, { incoming: true });
  // A frame cut by the session's frames and reads: the tail of one payload,
  // then the head of the next.
  core.onData(piece(150 * KiB, 1));
  core.onData(piece(9, 2));
  core.onData(piece(90 * KiB, 3));
  const chunk = core.takeChunk();
  assert.ok(chunk instanceof Uint8Array);
  assert.equal(chunk.length, 150 * KiB + 9 + 90 * KiB, "one write out for all three");
  assert.equal(chunk[0], 1);
  assert.equal(chunk[150 * KiB], 2);
  assert.equal(chunk[150 * KiB + 9], 3);
  assert.equal(core.takeChunk(), undefined, "nothing else queued");
});

Deno.test("StreamCore: a chunk handed out is never written into again", () => {
  const { owner } = fakeOwner(1);
  const core = new StreamCore(1, owner, { incoming: true });
  core.onData(piece(20 * KiB, 1));
  const out = core.takeChunk() as Uint8Array;
  const copy = out.slice();
  core.onData(piece(20 * KiB, 2));
  assert.deepEqual(out, copy, "the chunk being written out is unchanged");
  const next = core.takeChunk() as Uint8Array;
  assert.notEqual(next.buffer, out.buffer);
  assert.ok(next.every((b) => b === 2));
});

Deno.test("StreamCore: a queue nobody reads holds at most its bytes plus one buffer", () => {
  const core = grownStream();
  // Pieces of every size, small ones among them, some cut by a buffer's end.
  const sizes = [16 * KiB, 250 * KiB, 129 * KiB, 128 * KiB, 1, 16 * KiB, 255 * KiB, 7, 3 * KiB];
  let queued = 0;
  const buffers = new Set<ArrayBufferLike>();
  for (let i = 0; i < 40; i++) {
    const bytes = piece(sizes[i % sizes.length], i & 0xff);
    core.onData(bytes);
    queued += bytes.length;
  }
  for (let chunk; (chunk = core.takeChunk()) instanceof Uint8Array;) buffers.add(chunk.buffer);
  let held = 0;
  for (const buffer of buffers) held += buffer.byteLength;
  assert.ok(held <= queued + 256 * KiB, `${held} bytes held for ${queued} queued`);
  assert.ok(buffers.size > 3, "the pieces did fill several buffers");
});

Deno.test("StreamCore: a window read through faster than a millisecond or two grows, even on a sub-millisecond RTT", () => {
  // The session measured 0.05 ms (loopback): the window is judged against 1 ms.
  const { owner, clock, control } = fakeOwner(0.05);
  const core = new StreamCore(1, owner, { incoming: true });
  core.accept();
  control.length = 0;
  clock.now = 1.5; // read through half the window 1.5 ms after it was granted
  core.onData(piece(INITIAL_WINDOW / 2, 1));
  core.takeChunk();
  assert.equal(core.window, 2 * INITIAL_WINDOW);
  assert.equal(control.length, 1, "one credit frame");
  // A window read through slowly stays as it is.
  clock.now = 100;
  core.onData(piece(INITIAL_WINDOW, 2));
  core.takeChunk();
  assert.equal(core.window, 2 * INITIAL_WINDOW);
});

Deno.test("StreamCore: a busy stream's pieces fill whole 256 KiB chunks, whatever their cut", () => {
  const core = grownStream();
  // Frames of 256 KiB cut into three pieces at offsets that drift.
  const cuts = [[200 * KiB, 9, 56 * KiB - 9], [100, 256 * KiB - 200, 100]];
  let queued = 0;
  for (let i = 0; i < 6; i++) {
    for (const size of cuts[i % 2]) {
      core.onData(piece(size, i));
      queued += size;
    }
  }
  const lengths: number[] = [];
  for (let chunk; (chunk = core.takeChunk()) instanceof Uint8Array;) lengths.push(chunk.length);
  assert.equal(lengths.reduce((a, b) => a + b), queued);
  assert.deepEqual(lengths, Array(6).fill(256 * KiB), "no small write in between");
});

Deno.test("StreamCore: a read cut short leaves the rest queued; a piece behind it extends the rest, and only whole chunks go back", async () => {
  const { owner } = fakeOwner(1);
  const released: Uint8Array[] = [];
  const release = owner.chunks.release.bind(owner.chunks);
  owner.chunks.release = (chunk) => {
    released.push(chunk);
    release(chunk);
  };
  const core = new StreamCore(1, owner, { incoming: true });
  core.onData(piece(30 * KiB, 1));
  const buffer = new Uint8Array(10 * KiB);
  assert.equal(await core.read(buffer), 10 * KiB);
  assert.ok(buffer.every((b) => b === 1));
  assert.equal(released.length, 0, "the chunk's rest is still queued");
  core.onData(piece(5, 2)); // extends the queued rest, behind its own end
  const big = new Uint8Array(64 * KiB);
  assert.equal(await core.read(big), 20 * KiB + 5);
  assert.ok(big.subarray(0, 20 * KiB).every((b) => b === 1));
  assert.deepEqual([...big.subarray(20 * KiB, 20 * KiB + 5)], [2, 2, 2, 2, 2]);
  assert.equal(
    released.length,
    0,
    "a rest (not at offset 0) never goes back: its front may be in use",
  );
  core.onData(piece(100, 3));
  assert.equal(await core.read(big), 100);
  assert.equal(released.length, 1, "a whole chunk read at once goes back");
});

Deno.test("StreamCore: a queue that never empties (its reader one chunk behind) lets go of each chunk it hands out", async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "run with --v8-flags=--expose-gc (deno task test does)");
  const core = grownStream();
  core.onData(piece(256 * KiB, 0));
  core.onData(piece(256 * KiB, 0)); // two chunks ahead of the reader, for good
  const taken: WeakRef<Uint8Array>[] = [];
  for (let i = 0; i < 200; i++) {
    core.onData(piece(256 * KiB, 1));
    const chunk = core.takeChunk();
    assert.ok(chunk instanceof Uint8Array);
    taken.push(new WeakRef(chunk)); // the application keeps none of them
  }
  assert.equal(core.buffered, 2 * 256 * KiB);
  // A turn later (weak references hold their targets for the turn), after a full collection.
  await new Promise((resolve) => setTimeout(resolve, 0));
  gc();
  const alive = taken.filter((ref) => ref.deref() !== undefined).length;
  assert.ok(alive <= 2, `${alive} of 200 chunks handed out still held by the queue`);
});

Deno.test("StreamCore: a peer's one-byte frames fill 4 KiB chunks, not a chunk each", () => {
  const { owner } = fakeOwner(1);
  const core = new StreamCore(1, owner, { incoming: true });
  core.accept();
  for (let i = 0; i < INITIAL_WINDOW; i++) core.onData(piece(1, i & 0xff));
  let chunks = 0;
  let bytes = 0;
  for (let chunk; (chunk = core.takeChunk()) instanceof Uint8Array;) {
    chunks++;
    for (let i = 0; i < chunk.length; i++) {
      if (chunk[i] !== ((bytes + i) & 0xff)) assert.fail(`byte ${bytes + i}`);
    }
    bytes += chunk.length;
  }
  assert.equal(bytes, INITIAL_WINDOW);
  // Before, 262,144 chunks of one byte: about 200 bytes of memory per byte.
  assert.ok(chunks <= INITIAL_WINDOW / (4 * KiB) + 1, `${chunks} chunks`);
});
