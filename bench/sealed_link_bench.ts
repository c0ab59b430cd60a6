// A sealed link's own cost per byte (PROTOCOL.md 1.21), without sockets: a
// session's 1 MiB data frame sealed into records, and records opened into a
// 256 KiB read buffer, over an in-memory link. What is not the cipher here
// is ours to cut.
//
//   deno bench bench/sealed_link_bench.ts
import { createCipheriv } from "node:crypto";
import type { Link } from "../lib/link/mod.ts";
import { SealedLink } from "../lib/conn/_sealed_link.ts";

const FRAME = new Uint8Array(1 << 20).fill(7);
const KEYS = { send: new Uint8Array(32).fill(1), receive: new Uint8Array(32).fill(1) };
/** Two handshake frames (type 0x10, empty): what a sealed link lets through in the clear. */
const HANDSHAKE = [new Uint8Array([0x10, 0, 0, 0, 0]), new Uint8Array([0x10, 0, 0, 0, 0])];

/** A link that drops what is written (or keeps it, to be read back). */
class MemoryLink implements Link {
  readonly localAddr = undefined;
  readonly remoteAddr = undefined;
  kept: Uint8Array[] | null;
  #reading: Uint8Array = new Uint8Array(0);
  #source: (() => Uint8Array) | null;

  constructor(options: { keep?: boolean; source?: () => Uint8Array } = {}) {
    this.kept = options.keep ? [] : null;
    this.#source = options.source ?? null;
  }

  write(data: Uint8Array): Promise<void> {
    this.kept?.push(data.slice());
    return Promise.resolve();
  }

  read(buffer: Uint8Array): Promise<number | null> {
    if (this.#reading.length === 0) this.#reading = this.#source!();
    const n = Math.min(buffer.length, this.#reading.length);
    buffer.set(this.#reading.subarray(0, n));
    this.#reading = this.#reading.subarray(n);
    return Promise.resolve(n);
  }

  close(): void {}
}

async function sealedWriter(inner: Link): Promise<SealedLink> {
  const link = new SealedLink(inner);
  for (const frame of HANDSHAKE) await link.write(frame);
  link.seal(KEYS);
  return link;
}

const writer = await sealedWriter(new MemoryLink());

Deno.bench("seal a 1 MiB frame (4 records)", { group: "seal", baseline: true }, async () => {
  await writer.write(FRAME);
});

Deno.bench("ChaCha20-Poly1305 alone, 4 x 256 KiB", { group: "seal" }, () => {
  for (let i = 0; i < 4; i++) {
    const cipher = createCipheriv("chacha20-poly1305", KEYS.send, new Uint8Array(12), {
      authTagLength: 16,
    });
    cipher.update(FRAME.subarray(i << 18, (i + 1) << 18));
    cipher.final();
    cipher.getAuthTag();
  }
});

// The records of many frames, sealed once, read back in a loop by a link
// whose counter goes on: each round opens the next frame's records.
const FRAMES = 128;
const capture = new MemoryLink({ keep: true });
const sealer = await sealedWriter(capture);
for (let i = 0; i < FRAMES; i++) await sealer.write(FRAME);
const records = capture.kept!.slice(HANDSHAKE.length);
let next = 0;
const opener = new SealedLink(
  new MemoryLink({
    source: () => next < HANDSHAKE.length ? HANDSHAKE[next++] : records[(next++ - 2) % FRAMES],
  }),
);
const buffer = new Uint8Array(256 * 1024);
for (let i = 0; i < HANDSHAKE.length; i++) {
  for (let left = HANDSHAKE[i].length; left > 0;) left -= (await opener.read(buffer))!;
}
opener.seal(KEYS);
let opened = 0;

Deno.bench("open a 1 MiB frame's records into a 256 KiB buffer", {
  group: "open",
  // Every round opens records it has not opened before: no more rounds than were sealed.
  n: 100,
  warmup: 10,
}, async () => {
  // One frame's worth, whatever the round before left half read.
  for (let got = 0; got < FRAME.length;) got += (await opener.read(buffer))!;
  opened++;
  if (opened === FRAMES) throw new Error("ran past the sealed frames: raise FRAMES");
});
