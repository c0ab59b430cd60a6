import assert from "node:assert/strict";
import { connect, listen } from "../mod.ts";
import { controlledPath } from "./_controlled_path.ts";
import { delay, waitUntil } from "./_helpers.ts";

/** Byte at stream position `i`: changes every byte and every 8 KiB, so a misplaced range shows. */
const patternAt = (i: number) => (i * 7 + (i >> 13)) & 255;

async function sendPatterned(conn: { write(b: Uint8Array): Promise<number> }, total: number) {
  const chunk = new Uint8Array(100_000);
  for (let pos = 0; pos < total;) {
    const n = Math.min(chunk.length, total - pos);
    for (let i = 0; i < n; i++) chunk[i] = patternAt(pos + i);
    await conn.write(chunk.subarray(0, n));
    pos += n;
  }
}

/**
 * Received payloads wait in the queue as views into the link's read buffers.
 * A reader slower than the link, reading in odd sizes, makes the queue hold
 * views while the link keeps reading: every byte must still be the one sent,
 * through `read` and through `readable`.
 */
for (const via of ["read", "readable"] as const) {
  Deno.test(`queued payloads are never overwritten by later link reads (${via})`, async () => {
    const TOTAL = 48 << 20;
    using listener = listen({ hostname: "127.0.0.1", port: 0 });
    const client = await connect({ port: listener.addr.port });
    const server = await listener.accept();
    const sending = sendPatterned(client, TOTAL).then(() => client.closeWrite());
    let pos = 0;
    const check = (bytes: Uint8Array) => {
      for (let i = 0; i < bytes.length; i++) {
        if (bytes[i] !== patternAt(pos + i)) {
          assert.fail(`wrong byte at stream position ${pos + i}`);
        }
      }
      pos += bytes.length;
    };
    // Yielding to the timers now and then lets the link get ahead of the reader.
    if (via === "read") {
      const buffer = new Uint8Array(70_001);
      for (let reads = 1;; reads++) {
        const n = await server.read(buffer);
        if (n === null) break;
        check(buffer.subarray(0, n));
        if (reads % 50 === 0) await delay(1);
      }
    } else {
      const kept: Uint8Array[] = [];
      let reads = 0;
      for await (const chunk of server.readable) {
        // Chunks handed out must stay intact after later reads too.
        kept.push(chunk);
        if (kept.length > 8) check(kept.shift()!);
        if (++reads % 50 === 0) await delay(1);
      }
      for (const chunk of kept) check(chunk);
    }
    assert.equal(pos, TOTAL);
    await sending;
    await server.closeWrite();
    assert.equal(await client.read(new Uint8Array(1)), null);
    await Promise.all([client.closed, server.closed]);
  });
}

Deno.test("small frames received while nobody reads are queued together, not one chunk each: a read then takes them all", async () => {
  const path = controlledPath();
  using listener = listen({ acceptor: path.acceptor });
  const client = await connect({ dialer: path.dialer });
  const server = await listener.accept();
  // 100 one-byte data frames, each written alone (the next waits for the last to go).
  const up = path.links[0].up;
  for (let i = 0; i < 100; i++) {
    const wrote = new Promise<void>((resolve) => up.onWrite = () => resolve());
    await client.write(new Uint8Array([i]));
    await wrote;
  }
  await waitUntil(() => server.stats.bufferedBytes === 100, "all received, none read");
  const buffer = new Uint8Array(64 * 1024);
  const n = await server.read(buffer);
  assert.equal(n, 100, "one read, every byte");
  assert.deepEqual(buffer.subarray(0, 100), Uint8Array.from({ length: 100 }, (_, i) => i));
  client.close();
  await Promise.allSettled([client.closed, server.closed]);
});

Deno.test("a small chunk `readable` hands out is its own: it pins no buffer of other pieces", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const client = await connect({ port: listener.addr.port });
  const server = await listener.accept();
  await client.write(new Uint8Array([1, 2, 3]));
  const reader = server.readable.getReader();
  const { value } = await reader.read();
  assert.deepEqual(value, new Uint8Array([1, 2, 3]));
  assert.equal(value!.buffer.byteLength, 3, "a 3-byte chunk pinned a larger buffer");
  reader.releaseLock();
  client.close();
  await Promise.allSettled([client.closed, server.closed]);
});
