// Micro-benchmarks of the per-byte hot paths: frame decoding and the replay ring.
// Run: deno task bench
import { encodeFrame, type Frame, FrameDecoder } from "../lib/frame/mod.ts";
import { ReplayBuffer } from "../lib/conn/_replay_buffer.ts";

const payload = new Uint8Array(256 * 1024).fill(1);
const wire = encodeFrame({ type: "data", data: payload });
const acks = new Uint8Array(13 * 1000);
for (let i = 0; i < 1000; i++) acks.set(encodeFrame({ type: "ack", position: i * 4096 }), i * 13);

Deno.bench("decode one 256 KiB data frame in 64 KiB reads", { group: "decode" }, () => {
  const decoder = new FrameDecoder();
  const out: Frame[] = [];
  for (let off = 0; off < wire.length; off += 65536) {
    decoder.push(wire.subarray(off, off + 65536), out);
  }
});

Deno.bench("decode 1000 ack frames in one read", { group: "decode" }, () => {
  new FrameDecoder().push(acks, []);
});

Deno.bench("replay ring: append + copy out 256 KiB", { group: "replay" }, () => {
  const ring = new ReplayBuffer(4 << 20);
  const scratch = new Uint8Array(payload.length);
  for (let i = 0; i < 8; i++) {
    ring.append(payload);
    ring.copyOut(ring.end - payload.length, scratch, 0, payload.length);
    ring.release(ring.end);
  }
});
