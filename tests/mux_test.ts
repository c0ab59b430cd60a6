// Many streams over one ImmortalConn: independent flow control, half-close,
// refusal and reset per stream.
import assert from "node:assert/strict";
import { connect, ImmortalError, listen } from "../mod.ts";
import { MuxSession, type MuxStream } from "../lib/mux/mod.ts";
import { encodeFrame, FrameType, GREETING, INITIAL_WINDOW } from "../lib/mux/_frames.ts";
import { concat } from "../lib/_util.ts";
import { muxPair } from "./_mux_pair.ts";
import {
  patternHash,
  receiveAll,
  renderRecord,
  sendPattern,
  waitUntil,
  within,
  withLogs,
} from "./_helpers.ts";

const MiB = 1 << 20;

/** Everything a stream sends until its end, as text. */
function readText(stream: MuxStream): Promise<string> {
  return new Response(stream.readable).text();
}

/** A client and a server session over a real loopback ImmortalConn. */
const pair = muxPair;

/** Moves `size` bytes client -> server on a new stream; returns MB/s. */
async function move(s: { client: MuxSession; server: MuxSession }, size: number, seed: number) {
  const stream = s.client.open();
  const accepted = s.server.accept();
  const started = performance.now();
  const sending = sendPattern(stream, seed, size).then(async (hash) => {
    await stream.closeWrite();
    return hash;
  });
  const incoming = await accepted;
  const got = await receiveAll(incoming);
  await incoming.closeWrite();
  const seconds = (performance.now() - started) / 1000;
  assert.equal(got.sha256, await sending);
  assert.equal(await stream.read(new Uint8Array(1)), null);
  return size / MiB / seconds;
}

Deno.test("a stream nobody reads holds only its window; another stream keeps its full speed", async () => {
  await using s = await pair();
  const SIZE = 64 * MiB;
  // Alone first, then beside a stalled stream, three times each: the best of
  // each compares the two cases on the same machine at the same time, and a
  // round slowed by something else on the machine does not count.
  const alone: number[] = [];
  const beside: number[] = [];
  const stalled = s.client.open();
  const stalledWriting = stalled.write(new Uint8Array(4 * MiB)).catch(() => {});
  const stalledIncoming = await s.server.accept(); // never read
  for (let round = 0; round < 3; round++) {
    alone.push(await move(s, SIZE, 10 + round));
  }
  // The stalled stream's writer is still blocked on credit: nothing moved past its window.
  for (let round = 0; round < 3; round++) {
    beside.push(await move(s, SIZE, 20 + round));
    assert.ok(
      stalledIncoming.bufferedBytes <= INITIAL_WINDOW,
      `the stalled stream buffers ${stalledIncoming.bufferedBytes} bytes`,
    );
  }
  assert.equal(stalledIncoming.bufferedBytes, INITIAL_WINDOW, "its window is full, no more");
  const best = (xs: number[]) => Math.max(...xs);
  assert.ok(
    best(beside) >= 0.8 * best(alone),
    `beside a stalled stream ${best(beside).toFixed(0)} MB/s, alone ${best(alone).toFixed(0)} MB/s`,
  );
  stalled.close();
  await stalledWriting;
});

Deno.test("half-close is per stream: each direction ends on its own, other streams unaffected", async () => {
  await using s = await pair();
  const a = s.client.open();
  const b = s.client.open();
  const [sa, sb] = [await s.server.accept(), await s.server.accept()];
  // a: the client finishes first; the server still sends 3 MiB after that.
  await a.write(new TextEncoder().encode("request"));
  await a.closeWrite();
  assert.equal(await readText(sa), "request");
  const replying = sendPattern(sa, 5, 3 * MiB).then(() => sa.closeWrite());
  // b keeps going both ways meanwhile.
  await b.write(new TextEncoder().encode("still here"));
  const buffer = new Uint8Array(64);
  const n = await sb.read(buffer);
  assert.equal(new TextDecoder().decode(buffer.subarray(0, n!)), "still here");
  const reply = await receiveAll(a);
  await replying;
  assert.equal(reply.sha256, patternHash(5, 3 * MiB));
  await Promise.all([a.closed, sa.closed]);
  // b is untouched by a's end.
  await sb.write(new TextEncoder().encode("and you"));
  const m = await b.read(buffer);
  assert.equal(new TextDecoder().decode(buffer.subarray(0, m!)), "and you");
  assert.equal(s.client.streams, 1);
});

Deno.test("a refused stream fails alone, with the acceptor's reason", async () => {
  await using s = await pair();
  const serving = (async () => {
    for await (const stream of s.server) {
      const what = new TextDecoder().decode(stream.meta);
      if (what === "nope") stream.refuse("target unreachable: connection refused");
      else await stream.write(stream.meta).then(() => stream.closeWrite());
    }
  })();
  const streams = ["one", "nope", "two"].map((m) => s.client.open(new TextEncoder().encode(m)));
  await Promise.all(streams.map((stream) => stream.closeWrite().catch(() => {})));
  const [one, nope, two] = streams;
  await assert.rejects(nope.accepted, /stream refused: target unreachable: connection refused/);
  await assert.rejects(nope.read(new Uint8Array(1)), ImmortalError);
  assert.equal(await readText(one), "one");
  assert.equal(await readText(two), "two");
  await Promise.all([one.accepted, two.accepted]);
  s.client.close();
  await serving.catch(() => {});
});

Deno.test("close resets the peer's stream with a reason; the session goes on", async () => {
  await using s = await pair();
  const a = s.client.open();
  const sa = await s.server.accept();
  const pending = sa.read(new Uint8Array(8));
  a.close();
  await assert.rejects(pending, /the peer reset the stream: closed by the application/);
  await assert.rejects(sa.closed, ImmortalError);
  await a.closed; // a local close is clean
  assert.equal(await move(s, MiB, 1) > 0, true, "the session still carries streams");
});

Deno.test("using: a stream disposed midway resets the peer's; one that ended both ways is left as it was", async () => {
  await using s = await pair();
  {
    using a = s.client.open();
    const sa = await s.server.accept();
    await a.write(new TextEncoder().encode("ping"));
    await a.closeWrite();
    assert.equal(await readText(sa), "ping");
    await sa.write(new TextEncoder().encode("pong"));
    await sa.closeWrite();
    assert.equal(await readText(a), "pong");
    await Promise.all([a.closed, sa.closed]);
  } // a disposed here: it had ended, so no reset reaches sa
  {
    const pending = (async () => {
      using b = s.client.open();
      await b.write(new TextEncoder().encode("x"));
    })(); // b disposed mid-stream: the server's stream is reset
    const sb = await s.server.accept();
    await pending;
    await assert.rejects(receiveAll(sb), /the peer reset the stream: closed by the application/);
  }
  assert.equal(s.client.streams, 0);
  assert.ok(await move(s, MiB, 2) > 0, "the session still carries streams");
});

Deno.test("a peer that sends past a stream's window is cut off (protocol error), memory bounded", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const raw = await connect({ port: listener.addr.port });
  const server = new MuxSession(await listener.accept(), { role: "server" });
  // A hand-made client: opens stream 1 and sends twice the window at once.
  await raw.write(GREETING);
  await raw.write(encodeFrame(FrameType.open, 1));
  const chunk = new Uint8Array(128 * 1024);
  for (let i = 0; i < 2 * INITIAL_WINDOW / chunk.length; i++) {
    await raw.write(encodeFrame(FrameType.data, 1, chunk));
  }
  const stream = await server.accept();
  await assert.rejects(server.closed, /bytes past the window granted/);
  assert.ok(stream.bufferedBytes <= INITIAL_WINDOW, `${stream.bufferedBytes} bytes buffered`);
  // The peer is told what it did wrong, not that an application closed.
  await assert.rejects(
    raw.closed,
    (e: unknown) =>
      e instanceof ImmortalError && e.code === "aborted" &&
      /protocol error: .*bytes past the window granted/.test(e.message),
  );
});

Deno.test("a peer that does not speak the protocol is told apart at its first bytes", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const raw = await connect({ port: listener.addr.port });
  const server = new MuxSession(await listener.accept(), { role: "server" });
  await raw.write(new Uint8Array([0x01])); // the old per-connection tunnel's first byte
  await assert.rejects(server.closed, /does not speak stream multiplexing/);
  await assert.rejects(raw.closed, /protocol error: the peer does not speak stream multiplexing/);
});

Deno.test("a write followed at once by closeWrite goes out whole, then the end", async () => {
  await using s = await pair();
  const stream = s.client.open();
  const size = 600 * 1024; // more than the first window: the write waits for credit
  const writing = stream.write(new Uint8Array(size).fill(3));
  const closing = stream.closeWrite();
  const incoming = await s.server.accept();
  const got = await receiveAll(incoming);
  await Promise.all([writing, closing]);
  assert.equal(got.bytes, size);
  await assert.rejects(stream.write(new Uint8Array(1)), /writable side was closed/);
});

Deno.test("closeWrite again answers what the first one did: a FIN the peer's reset stopped fails every time", async () => {
  await using s = await pair();
  const stream = s.client.open();
  // Past the first window: the write, then the FIN behind it, wait for credit.
  const writing = stream.write(new Uint8Array(600 * 1024));
  const outcome = (p: Promise<void>) => p.then(() => "sent", (e: Error) => e.message);
  const first = outcome(stream.closeWrite());
  const second = outcome(stream.closeWrite());
  (await s.server.accept()).close(); // the peer resets: no FIN goes out
  await writing.catch(() => {});
  const failed = await first;
  assert.notEqual(failed, "sent");
  assert.equal(await second, failed);
  assert.equal(await outcome(stream.closeWrite()), failed, "after the reset");
});

/**
 * A client session whose peer is a bare ImmortalConn that does not read: no
 * acks, the session window (4 MiB) fills, and the multiplexer's writer
 * waits inside a write (24 writes of 256 KiB, on as many streams).
 */
async function writerStuck() {
  const listener = listen({ hostname: "127.0.0.1", port: 0 });
  const client = new MuxSession(await connect({ port: listener.addr.port }), { role: "client" });
  const peer = await listener.accept();
  listener.close();
  const writes = Array.from({ length: 24 }, () => client.open().write(new Uint8Array(256 * 1024)));
  await waitUntil(() => client.conn.stats.unackedBytes >= 4 * MiB - 64 * 1024, "window full");
  return { client, peer, writes };
}

Deno.test("closing a session settles writes stuck behind a full session window", async () => {
  const { client, peer: silent, writes } = await writerStuck();
  client.close();
  const settled = await within(10_000, "writes settled", Promise.allSettled(writes));
  assert.ok(settled.some((r) => r.status === "rejected"), "the stuck writes were rejected");
  await client.closed;
  silent.close();
  await silent.closed.catch(() => {});
});

Deno.test("control frames queued by the ten thousand while the writer waits (streams opened and closed during an outage) go out, and the session goes on", async () => {
  const { client, peer, writes } = await writerStuck();
  // OPEN and RESET each: 140,000 control frames behind the blocked write.
  for (let i = 0; i < 70_000; i++) client.open().close();
  let ended: unknown = null;
  client.closed.catch((error) => ended = error);
  const reading = receiveAll(peer); // the link is back: the peer reads again
  await within(60_000, "the writes behind the control frames", Promise.all(writes));
  const after = client.open();
  await within(60_000, "a write after them", after.write(new Uint8Array(10)));
  assert.equal(ended, null, `the session ended: ${ended}`);
  client.close();
  await client.closed;
  peer.close();
  await reading.catch(() => {});
});

Deno.test("a stream the peer resets before it was accepted leaves the queue: a peer that opens and resets on and on holds nothing", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const client = new MuxSession(await connect({ port: listener.addr.port }), {
    role: "client",
    maxStreams: 16,
  });
  const raw = await listener.accept(); // a server that opens streams, by hand
  await raw.write(GREETING);
  let id = 2;
  for (let batch = 0; batch < 10; batch++) {
    const frames: Uint8Array[] = [];
    for (let i = 0; i < 500; i++, id += 2) {
      frames.push(encodeFrame(FrameType.open, id), encodeFrame(FrameType.reset, id));
    }
    await raw.write(concat(...frames));
  }
  await raw.write(encodeFrame(FrameType.open, id)); // one that stays
  await raw.flush(); // read by the client: every frame handled
  assert.equal(client.streams, 1);
  const first = await client.accept();
  assert.equal(first.id, id, "the first stream handed out is the one not reset");
  client.close();
  raw.close();
  await Promise.allSettled([client.closed, raw.closed]);
});

/**
 * A server session whose peer is a bare session with a 1 KiB window that
 * sent `opens` OPENs and reads nothing; `accepts` takes each stream the
 * server accepts, if given.
 */
async function openedAtOnce(opens: number, accepts?: (stream: MuxStream) => void) {
  const listener = listen({ hostname: "127.0.0.1", port: 0 });
  const raw = await connect({ port: listener.addr.port, maxUnackedBytes: 1024 });
  raw.closed.catch(() => {}); // cut off, maybe: what the test looks at is the server's side
  const server = new MuxSession(await listener.accept(), { role: "server" });
  listener.close();
  const accepting = accepts &&
    (async () => {
      for await (const stream of server) accepts(stream);
    })().catch(() => {});
  const frames: Uint8Array[] = [GREETING];
  for (let i = 0, id = 1; i < opens; i++, id += 2) frames.push(encodeFrame(FrameType.open, id));
  // Not awaited: a session cut off for them fails the write.
  const written = raw.write(concat(...frames)).catch((error) => error);
  return { raw, server, accepting, written };
}

Deno.test("a peer that opens stream after stream without reading the refusals (every one refused, by the application) is cut off once 4,096 wait", async () => {
  const { raw, server, accepting } = await openedAtOnce(5000, (stream) => stream.refuse("no"));
  const error = await within(30_000, "the session's end", server.closed.then(() => null, (e) => e));
  assert.match(String(error), /keeps opening streams without reading our answers/);
  raw.close();
  await Promise.allSettled([raw.closed, accepting]);
});

Deno.test("a peer that opens, lets the application accept, and resets, stream after stream, without reading the answers, is cut off; live streams accepted behind a full window are not", async () => {
  // Opened, accepted, then reset: each ACCEPT is left queued for a stream that is gone.
  const flood = await openedAtOnce(0, (stream) => stream.accept());
  await flood.written;
  const error = await within(
    60_000,
    "the flood's end",
    (async () => {
      for (let round = 0, id = 1; round < 6; round++) {
        const opens: Uint8Array[] = [];
        const resets: Uint8Array[] = [];
        for (let i = 0; i < 1000; i++, id += 2) {
          opens.push(encodeFrame(FrameType.open, id));
          resets.push(encodeFrame(FrameType.reset, id));
        }
        await flood.raw.write(concat(...opens));
        await flood.raw.flush(); // handled, and accepted
        await flood.raw.write(concat(...resets));
        await flood.raw.flush();
      }
      return await flood.server.closed.then(() => null, (e) => e);
    })().catch((e) => e),
  );
  assert.match(String(error), /keeps opening streams without reading our answers/);
  flood.raw.close();
  await Promise.allSettled([flood.raw.closed, flood.accepting]);

  // 5,000 streams opened and accepted, none reset, by a peer whose window is full: no cut-off.
  const live = await openedAtOnce(5000, (stream) => stream.accept());
  await live.written;
  await live.raw.flush(); // every OPEN handled: 5,000 ACCEPTs wait behind a 1 KiB window
  assert.equal(live.server.streams, 5000);
  let ended: unknown = null;
  live.server.closed.catch((e) => ended = e);
  await live.raw.write(encodeFrame(FrameType.open, 10_001)); // one more
  await live.raw.flush();
  assert.equal(live.server.streams, 5001);
  assert.equal(ended, null);
  live.server.close();
  live.raw.close();
  await Promise.allSettled([live.raw.closed, live.server.closed, live.accepting]);
});

Deno.test("a stream's readable and writable are made when first asked for, and are the same each time after", async () => {
  await using s = await pair();
  const stream = s.client.open();
  assert.equal(stream.readable, stream.readable);
  assert.equal(stream.writable, stream.writable);
  const writer = stream.writable.getWriter();
  await writer.write(new TextEncoder().encode("lazy"));
  await writer.close();
  const incoming = await s.server.accept();
  assert.equal(await readText(incoming), "lazy");
});

Deno.test("streams past maxStreams are refused with the reason; the others go on", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const client = new MuxSession(await connect({ port: listener.addr.port }), { role: "client" });
  const server = new MuxSession(await listener.accept(), { role: "server", maxStreams: 2 });
  const [a, b, c] = [client.open(), client.open(), client.open()];
  await assert.rejects(c.accepted, /stream refused: too many streams/);
  const [sa] = [await server.accept(), await server.accept()];
  sa.accept();
  await a.accepted;
  await a.write(new TextEncoder().encode("ok"));
  assert.equal(new TextDecoder().decode((await sa.readable.getReader().read()).value), "ok");
  b.close();
  client.close();
  server.close();
  await Promise.allSettled([client.closed, server.closed]);
});

Deno.test("a busy stream's window grows; an idle one keeps the first", async () => {
  await using s = await pair();
  await move(s, 64 * MiB, 3);
  const busy = s.client.open();
  const idle = s.client.open();
  await busy.write(new Uint8Array(1));
  await idle.write(new Uint8Array(1));
  const [sb, si] = [await s.server.accept(), await s.server.accept()];
  // Read 32 MiB through `busy` as fast as it comes.
  const sending = sendPattern(busy, 4, 32 * MiB);
  await receiveAll(sb);
  await sending;
  const { coreOf } = await import("../lib/mux/mux_stream.ts");
  assert.ok(coreOf(sb).window > INITIAL_WINDOW, `window ${coreOf(sb).window}`);
  assert.equal(coreOf(si).window, INITIAL_WINDOW);
});

Deno.test("what `readable` hands the application is its own: small messages do not pin pooled buffers", async () => {
  await using s = await pair();
  const stream = s.client.open();
  const incoming = await s.server.accept();
  const reader = incoming.readable.getReader();
  const kept: Uint8Array[] = [];
  for (let i = 0; i < 20; i++) {
    await stream.write(new Uint8Array([i]));
    const { value } = await reader.read();
    assert.deepEqual([...value!], [i]);
    kept.push(value!);
  }
  for (const chunk of kept) {
    assert.ok(
      chunk.buffer.byteLength <= 2,
      `a 1-byte chunk holds ${chunk.buffer.byteLength} bytes`,
    );
  }
  reader.releaseLock();
});

Deno.test("a peer that closes its session (a client exiting) is news for the other side, not a warning", async () => {
  await withLogs(async (records) => {
    await using s = await pair();
    s.client.close();
    await s.server.closed.catch(() => {});
    // Said once, by the session under the streams; the multiplexer adds no line of its own.
    const ended = records.filter((r) =>
      r.level !== "debug" && /ended|aborted by the peer/.test(renderRecord(r))
    );
    assert.deepEqual(
      ended.map((r) => [r.level, renderRecord(r).replace(/Session \S+/, "Session ID")]),
      [["info", "Session ID aborted by the peer: closed by the application"]],
    );
    assert.deepEqual(records.filter((r) => r.level === "warning").map(renderRecord), []);
  });
});
