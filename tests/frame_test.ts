import assert from "node:assert/strict";
import {
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameDecoderStream,
  FrameEncoderStream,
  FrameError,
  PROTOCOL_VERSION,
} from "../lib/frame/mod.ts";

// Small deterministic PRNG so a failure can be replayed from its seed.
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function bytes(random: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = random() * 256;
  return out;
}

function sampleFrames(random: () => number): Frame[] {
  return [
    { type: "data", data: bytes(random, 1 + Math.floor(random() * 3000)) },
    { type: "ack", position: Math.floor(random() * 2 ** 52) },
    { type: "ping", stamp: random() * 1e6 },
    { type: "pong", stamp: random() * 1e6 },
    { type: "fin", position: 123456789 },
    { type: "close", reason: "gone — ünïcødé" },
    { type: "bye" },
    {
      type: "hello",
      version: PROTOCOL_VERSION,
      nonce: bytes(random, 16),
      window: 1 << 20,
      publicKey: bytes(random, 32),
    },
    {
      type: "hello",
      version: PROTOCOL_VERSION,
      nonce: bytes(random, 16),
      window: 0xffff_ffff,
      resume: { sessionId: bytes(random, 16), received: 42 },
    },
    { type: "challenge", nonce: bytes(random, 32) },
    { type: "proof", mac: bytes(random, 32) },
    { type: "proof", mac: new Uint8Array(0) },
    {
      type: "accept",
      created: { sessionId: bytes(random, 16), publicKey: bytes(random, 32) },
      window: 32 << 20,
      mac: bytes(random, 32),
    },
    { type: "accept", received: 7, window: 1024, mac: bytes(random, 32) },
    { type: "reject", code: "auth", reason: "no" },
  ];
}

/** Merges adjacent data frames: the decoder may split them, which must not matter. */
function normalize(frames: Frame[]): Frame[] {
  const out: Frame[] = [];
  for (const frame of frames) {
    const last = out.at(-1);
    if (frame.type === "data" && last?.type === "data") {
      const merged = new Uint8Array(last.data.length + frame.data.length);
      merged.set(last.data);
      merged.set(frame.data, last.data.length);
      out[out.length - 1] = { type: "data", data: merged };
    } else {
      out.push(
        frame.type === "data" ? { type: "data", data: frame.data.slice() } : structuredClone(frame),
      );
    }
  }
  return out;
}

Deno.test("frames round-trip through any chunking", () => {
  const random = rng(1);
  for (let round = 0; round < 200; round++) {
    const frames = sampleFrames(random);
    const wire = frames.map(encodeFrame);
    const all = new Uint8Array(wire.reduce((n, w) => n + w.length, 0));
    let off = 0;
    for (const w of wire) {
      all.set(w, off);
      off += w.length;
    }
    const decoder = new FrameDecoder();
    const out: Frame[] = [];
    for (let i = 0; i < all.length;) {
      const n = 1 + Math.floor(random() * 700);
      // Copy each chunk: frames may be views into it.
      decoder.push(all.slice(i, i + n), out);
      i += n;
    }
    assert.equal(decoder.partial, false);
    // Separate data frames were adjacent only to non-data frames here.
    assert.deepEqual(normalize(out), normalize(frames));
  }
});

Deno.test("frame codec as TransformStreams", async () => {
  const frames = sampleFrames(rng(2));
  const decoded = await Array.fromAsync(
    ReadableStream.from(frames).pipeThrough(new FrameEncoderStream()).pipeThrough(
      new FrameDecoderStream(),
    ),
  );
  assert.deepEqual(normalize(decoded), normalize(frames));

  const truncated = encodeFrame({ type: "ack", position: 1 }).subarray(0, 7);
  await assert.rejects(
    Array.fromAsync(ReadableStream.from([truncated]).pipeThrough(new FrameDecoderStream())),
    FrameError,
  );
});

Deno.test("oversized frames are refused from the header alone, before any allocation", () => {
  const decoder = new FrameDecoder({ maxFrameSize: 4096 });
  // A data frame claiming 4 GiB: must throw on the 5-byte header, allocating nothing.
  assert.throws(() => decoder.push(new Uint8Array([0x01, 0xff, 0xff, 0xff, 0xff]), []), FrameError);
  // The decoder stays poisoned.
  assert.throws(() => decoder.push(encodeFrame({ type: "bye" }), []), FrameError);
  // Control frames have their own small limits.
  assert.throws(() => new FrameDecoder().push(new Uint8Array([0x02, 0, 0, 0, 9]), []), FrameError);
  assert.throws(() => new FrameDecoder({ maxFrameSize: 2 ** 21 }), RangeError);
});

Deno.test("decoder fuzz: 120,000 random and mutated inputs raise only FrameError", () => {
  const random = rng(0xdecade);
  const MAX = 4096;
  const valid = sampleFrames(random).map(encodeFrame);
  let frameErrors = 0;
  let decodedFrames = 0;
  const started = performance.now();
  // Bounded in count; the time check turns a hang into a failure, not a stuck suite.
  for (let i = 0; i < 120_000; i++) {
    let input: Uint8Array;
    const kind = i % 4;
    if (kind === 0) {
      input = bytes(random, Math.floor(random() * 64));
    } else {
      const base = valid[Math.floor(random() * valid.length)];
      input = base.slice();
      const flips = 1 + Math.floor(random() * 4);
      for (let f = 0; f < flips; f++) input[Math.floor(random() * input.length)] = random() * 256;
      if (kind === 2) input = input.subarray(0, Math.floor(random() * input.length));
      if (kind === 3) {
        // Bad length fields: huge, zero, off by one.
        const view = new DataView(input.buffer);
        const choices = [0xffffffff, 0, MAX + 1, view.getUint32(1) + 1, view.getUint32(1) - 1];
        view.setUint32(1, choices[Math.floor(random() * choices.length)] >>> 0);
      }
    }
    const decoder = new FrameDecoder({ maxFrameSize: MAX });
    const out: Frame[] = [];
    try {
      for (let off = 0; off < input.length;) {
        const n = 1 + Math.floor(random() * 16);
        decoder.push(input.subarray(off, off + n), out);
        off += n;
      }
      decodedFrames += out.length;
      for (const frame of out) {
        if (frame.type === "data") assert.ok(frame.data.length <= MAX);
      }
    } catch (error) {
      if (!(error instanceof FrameError)) {
        throw new Error(`input #${i} raised ${error} instead of a FrameError: ${input}`);
      }
      frameErrors++;
    }
    if (i % 10_000 === 0) {
      assert.ok(performance.now() - started < 60_000, "fuzz loop too slow: hang?");
    }
  }
  // The corpus really exercised both paths.
  assert.ok(frameErrors > 30_000, `only ${frameErrors} inputs were rejected`);
  assert.ok(decodedFrames > 10_000, `only ${decodedFrames} frames decoded`);
});
