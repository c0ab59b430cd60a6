// What goes on the wire per write: acks ride on data (a request/response
// stream sends no ack frame of its own), and bulk data goes in large frames.
import assert from "node:assert/strict";
import { connect, listen } from "../mod.ts";
import { type Frame, FrameDecoder } from "../lib/frame/mod.ts";
import { type Link, tcpDialer } from "../lib/link/mod.ts";
import { delay, waitUntil } from "./_helpers.ts";

/** Each `write` the client's link made, as the frames it carried. */
function recordingDialer(port: number, writes: Frame[][]) {
  const dial = tcpDialer({ port });
  return async (signal: AbortSignal): Promise<Link> => {
    const link = await dial(signal);
    const decoder = new FrameDecoder();
    return {
      get localAddr() {
        return link.localAddr;
      },
      get remoteAddr() {
        return link.remoteAddr;
      },
      read: (buffer) => link.read(buffer),
      write(data) {
        const frames: Frame[] = [];
        decoder.push(data, frames);
        writes.push(frames);
        return link.write(data);
      },
      close: () => link.close(),
    };
  };
}

/**
 * Heartbeats far apart: no heartbeat tick falls inside a test, so every ack
 * counted is one the send loop chose to send for its own sake.
 */
const QUIET = { heartbeatInterval: 60_000, deadLinkTimeout: 120_000 };

/** A connected client, whose link writes go into `writes`, and its server: heartbeats far apart. */
async function quietPair(writes: Frame[][]) {
  const listener = listen({ hostname: "127.0.0.1", port: 0, ...QUIET });
  const client = await connect({ dialer: recordingDialer(listener.addr.port, writes), ...QUIET });
  const server = await listener.accept();
  listener.close();
  return {
    client,
    server,
    async [Symbol.asyncDispose]() {
      await client[Symbol.asyncDispose]();
      await server[Symbol.asyncDispose]();
    },
  };
}

Deno.test("on a request/response stream every ack rides on the next request: no lone ack frame wakes the peer", async () => {
  const writes: Frame[][] = [];
  await using pair = await quietPair(writes);
  const { client, server } = pair;
  const echo = (async () => {
    const buffer = new Uint8Array(1024);
    for (let n; (n = await server.read(buffer)) !== null;) {
      await server.write(buffer.subarray(0, n));
    }
    await server.closeWrite();
  })();
  // A failed assertion closes both ends: the echo's pending read then rejects.
  echo.catch(() => {});
  const reply = new Uint8Array(64);
  const ROUNDS = 20;
  const before = writes.length;
  for (let i = 0; i < ROUNDS; i++) {
    await client.write(new TextEncoder().encode(`request ${i}`));
    assert.ok((await client.read(reply))! > 0);
    // An interactive user's think time: long enough for any delayed-ack
    // timer to fire before the next request.
    await delay(15);
  }
  const exchange = writes.slice(before);
  const lone = exchange.filter((frames) => frames.every((frame) => frame.type === "ack"));
  assert.equal(lone.length, 0, `${lone.length} writes carried nothing but an ack`);
  const acksOnData = exchange.filter((frames) =>
    frames.some((frame) => frame.type === "ack") && frames.some((frame) => frame.type === "data")
  );
  assert.ok(acksOnData.length >= ROUNDS - 1, `only ${acksOnData.length} requests carried an ack`);
  await client.closeWrite();
  assert.equal(await client.read(reply), null);
  await echo;
});

Deno.test("bytes no data rides back on are still acked (on a heartbeat tick, or a ping or pong)", async () => {
  // Ticks every 50 ms; the server never sends data an ack could ride on.
  const timing = { heartbeatInterval: 200, deadLinkTimeout: 1000 };
  using listener = listen({ hostname: "127.0.0.1", port: 0, ...timing });
  await using client = await connect({ port: listener.addr.port, ...timing });
  await using server = await listener.accept();
  await client.write(new Uint8Array(100));
  assert.equal(await server.read(new Uint8Array(100)), 100);
  await waitUntil(() => client.stats.unackedBytes === 0, "the ack", 10_000);
});

Deno.test("bulk data goes out in frames of up to 1 MiB: one header write per MiB, not per 256 KiB", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const writes: Frame[][] = [];
  await using client = await connect({ dialer: recordingDialer(listener.addr.port, writes) });
  await using server = await listener.accept();
  const size = 4 << 20;
  // Appended to the replay ring at once (the window is 4 MiB), so the send
  // loop finds it all there and cuts it into the largest frames it may.
  const writing = client.write(new Uint8Array(size));
  const buffer = new Uint8Array(1 << 20);
  let received = 0;
  while (received < size) received += (await server.read(buffer))!;
  await writing;
  const pieces = writes.flat().filter((frame) => frame.type === "data");
  const largest = Math.max(...pieces.map((frame) => frame.type === "data" ? frame.data.length : 0));
  assert.equal(largest, 1 << 20);
});

Deno.test("a bulk receiver acks once per quarter of the window consumed, not once per read", async () => {
  const writes: Frame[][] = [];
  await using pair = await quietPair(writes);
  const { client, server } = pair;
  const size = 32 << 20;
  const sending = (async () => {
    const chunk = new Uint8Array(256 * 1024);
    for (let sent = 0; sent < size; sent += chunk.length) await server.write(chunk);
  })();
  // Small reads: hundreds of them, each consuming a little.
  const buffer = new Uint8Array(16 * 1024);
  let received = 0;
  let reads = 0;
  while (received < size) {
    received += (await client.read(buffer))!;
    reads++;
  }
  await sending;
  const acks = writes.flat().filter((frame) => frame.type === "ack").length;
  // The threshold is a quarter of the 4 MiB window floor: 1 MiB.
  assert.ok(acks <= size / (1 << 20) + 4, `${acks} acks for ${reads} reads of ${size} bytes`);
  assert.ok(acks >= size / (4 << 20), `${acks} acks: too few to keep the sender going`);
});
