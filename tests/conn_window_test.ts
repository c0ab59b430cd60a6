// Flow control: the send window follows the path, and a receiver enforces the
// receive window it announced.
import assert from "node:assert/strict";
import { connect, ImmortalError, listen } from "../mod.ts";
import { encodeFrame, FRAME_HEADER_SIZE } from "../lib/frame/mod.ts";
import { TcpLink } from "../lib/link/mod.ts";
import { FrameReader } from "../lib/conn/_frame_reader.ts";
import { clientOpen } from "../lib/conn/_handshake.ts";
import { delayedPath } from "./_delayed_link.ts";
import { patternHash, receiveAll, sendPattern } from "./_helpers.ts";

const MiB = 1 << 20;

Deno.test("the send window grows to fill a long fat path and stays within its maximum", async () => {
  // 100 ms each way at 40 MB/s: a bandwidth-delay product of 8 MB, twice the
  // 4 MiB the window starts at. A fixed 4 MiB window would reach half the rate.
  const rate = 40e6;
  const { dialer, acceptor } = delayedPath({ delayMs: 100, bytesPerSecond: rate });
  const max = 24 * MiB;
  using listener = listen({ acceptor, maxUnackedBytes: max });
  await using client = await connect({ dialer, maxUnackedBytes: max });
  await using server = await listener.accept();
  const size = 96 * MiB;
  let peakWindow = 0, peakUnacked = 0;
  // Throughput once the window has grown: from a quarter of the bytes to the end.
  let quarterAt = 0;
  const counting = {
    received: 0,
    async read(buffer: Uint8Array) {
      const n = await server.read(buffer);
      if (n !== null) {
        this.received += n;
        if (quarterAt === 0 && this.received >= size / 4) quarterAt = performance.now();
        peakWindow = Math.max(peakWindow, client.stats.windowBytes);
        peakUnacked = Math.max(peakUnacked, client.stats.unackedBytes);
      }
      return n;
    },
  };
  const [sent, got] = await Promise.all([sendPattern(client, 3, size), receiveAll(counting)]);
  const steady = (size * 3 / 4) / ((performance.now() - quarterAt) / 1000);
  assert.equal(got.bytes, size);
  assert.equal(got.sha256, sent);
  assert.ok(peakWindow >= 8e6, `the window reached only ${peakWindow} bytes, under the 8 MB BDP`);
  assert.ok(
    peakWindow <= max && peakUnacked <= max,
    `past the maximum: ${peakWindow}/${peakUnacked}`,
  );
  console.log(
    `${(steady / 1e6).toFixed(1)} MB/s over a ${rate / 1e6} MB/s path ` +
      `(${((steady / rate) * 100).toFixed(0)}%), window peak ${(peakWindow / MiB).toFixed(1)} MiB`,
  );
  // The rate itself is not asserted here: it depends on how much CPU this
  // process gets. What makes a long path full is asserted above (the window
  // grew past the bandwidth-delay product, within its maximum);
  // lib/conn/_send_window_test.ts asserts >= 80% of the rate on simulated
  // time, and BENCHMARKS.md has the measured figures.
  await server.closeWrite();
});

Deno.test("a peer that sends past the receive window it was given is cut off; the queue stays bounded", async () => {
  const cap = 256 * 1024;
  using listener = listen({ hostname: "127.0.0.1", port: 0, maxUnackedBytes: cap });
  // A client that handshakes properly, then ignores flow control.
  const link = new TcpLink(await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }));
  const reader = new FrameReader(link);
  const { peerWindow } = await clientOpen(reader, null, 1 << 20);
  assert.equal(peerWindow, cap, "the server announces its receive window");
  const server = await listener.accept();
  let peakQueued = 0;
  const frame = encodeFrame({ type: "data", data: new Uint8Array(64 * 1024 - FRAME_HEADER_SIZE) });
  let sent = 0;
  try {
    // Bounded: 64 MiB at most, though the cut comes after a few hundred KiB.
    while (sent < 64 * MiB) {
      await link.write(frame);
      sent += frame.length;
      peakQueued = Math.max(peakQueued, server.stats.bufferedBytes);
    }
  } catch {
    // The server hung up on us: that is the point.
  }
  await assert.rejects(
    server.closed,
    (e: unknown) =>
      e instanceof ImmortalError && e.code === "protocol" &&
      /past the receive window of 262144 bytes/.test(e.message),
  );
  assert.ok(server.stats.bufferedBytes <= cap, `queue ${server.stats.bufferedBytes} > ${cap}`);
  assert.ok(peakQueued <= cap, `queue peaked at ${peakQueued}`);
  assert.ok(sent < 64 * MiB, "the flood was never cut off");
  link.close();
});

Deno.test("both ends use the smaller of the two windows", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0, maxUnackedBytes: 64 * 1024 });
  await using client = await connect({ port: listener.addr.port, maxUnackedBytes: 8 * MiB });
  await using server = await listener.accept();
  assert.equal(client.stats.windowBytes, 64 * 1024, "the client honours the server's window");
  assert.equal(server.stats.windowBytes, 64 * 1024, "the server's own maximum bounds it");
  // Data still flows, in many windows' worth, with the bytes intact.
  const [sent, got] = await Promise.all([sendPattern(client, 5, 4 * MiB), receiveAll(server)]);
  assert.equal(got.sha256, sent);
  assert.equal(got.sha256, patternHash(5, 4 * MiB));
  await server.closeWrite();
});
