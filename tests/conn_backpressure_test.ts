import assert from "node:assert/strict";
import { connect, listen } from "../mod.ts";
import { delay, patternHash, sendPattern, waitUntil } from "./_helpers.ts";
import { createHash } from "node:crypto";

Deno.test("slow reader: the writer is held back at the unacked cap; memory does not grow with bytes written", async () => {
  const CAP = 1 << 20;
  const TOTAL = 128 << 20;
  using listener = listen({ hostname: "127.0.0.1", port: 0, maxUnackedBytes: CAP });
  const client = await connect({
    port: listener.addr.port,
    maxUnackedBytes: CAP,
  });
  const server = await listener.accept();
  const sending = sendPattern(client, 11, TOTAL);

  // Phase 1: nobody reads. The writer must stall at the cap, not buffer more. It
  // is stalled once the whole window is buffered at the receiver: with nothing
  // read, nothing is acked, so nothing more can be written (no event tells
  // "buffered", hence a bounded poll).
  await waitUntil(() => server.stats.bufferedBytes >= CAP, "the receiver buffering a full window");
  assert.ok(
    client.stats.bytesWritten <= CAP,
    `writer got ${client.stats.bytesWritten} bytes past a ${CAP} cap`,
  );
  assert.ok(client.stats.bytesWritten >= CAP / 2, "writer did fill its window");
  assert.ok(server.stats.bufferedBytes <= CAP, `receiver buffered ${server.stats.bufferedBytes}`);
  // The link is alive the whole time even though nobody reads (heartbeats get through).
  assert.equal(client.state, "connected");

  // Phase 2: a reader slower than the writer. Sample live memory (after a full
  // GC, so garbage does not count) and the bounds throughout.
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "run with --v8-flags=--expose-gc (deno task test does)");
  const live = () => {
    // Two passes: the first may leave ArrayBuffer backing stores for the second.
    gc();
    gc();
    const m = Deno.memoryUsage();
    return m.heapUsed + m.external;
  };
  const baseline = live();
  let peak = baseline;
  const hash = createHash("sha256");
  const buffer = new Uint8Array(64 * 1024);
  let received = 0;
  for (let reads = 0;; reads++) {
    const n = await server.read(buffer);
    if (n === null) break;
    hash.update(buffer.subarray(0, n));
    received += n;
    if (reads % 64 === 0) await delay(1);
    if (reads % 256 === 0) {
      peak = Math.max(peak, live());

      assert.ok(client.stats.unackedBytes <= CAP);
      assert.ok(server.stats.bufferedBytes <= CAP);
    }
  }
  assert.equal(received, TOTAL);
  assert.equal(hash.digest("hex"), await sending);
  assert.equal(patternHash(11, TOTAL), await sending);
  // 128 MiB went through a 1 MiB window: live memory must not follow the amount written.
  const growth = peak - baseline;
  assert.ok(
    growth < 8 << 20,
    `live memory grew by ${(growth / 2 ** 20).toFixed(1)} MiB while 128 MiB were written`,
  );
  await Promise.all([server.closeWrite(), client.closeWrite().catch(() => {})]);
  client.close();
  server.close();
  await Promise.allSettled([client.closed, server.closed]);
});
