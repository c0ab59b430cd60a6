/**
 * End-to-end encryption of sessions: what the path sees, a byte changed on
 * the path, links replaced under an encrypted session, and who may refuse
 * what.
 */

import assert from "node:assert/strict";
import {
  connect,
  type ImmortalConn,
  listen,
  RelayNode,
  serveRelay,
  TunnelClient,
  TunnelServer,
} from "../mod.ts";
import { encodeFrame } from "../lib/frame/mod.ts";
import { controlledPath } from "./_controlled_path.ts";
import { type Direction, FaultProxy } from "./_fault_proxy.ts";
import { patternHash, receiveAll, sendPattern, within } from "./_helpers.ts";
import { cutWhile, FAST } from "./_tunnel_helpers.ts";

const encoder = new TextEncoder();
/** A known plaintext, easy to look for: 1 MiB of a repeated sentence. */
const SENTENCE = "the quick brown fox jumps over the lazy immortal dog. ";
const PLAINTEXT = encoder.encode(SENTENCE.repeat(Math.ceil((1 << 20) / SENTENCE.length)));
const NEEDLE = encoder.encode("jumps over the lazy immortal");

/** Whether `needle` occurs in the concatenation of `chunks` (also across chunk boundaries). */
function contains(chunks: Uint8Array[], needle: Uint8Array): boolean {
  const text = new TextDecoder("latin1").decode(
    chunks.reduce((all, c) => {
      const out = new Uint8Array(all.length + c.length);
      out.set(all);
      out.set(c, all.length);
      return out;
    }, new Uint8Array(0)),
  );
  return text.includes(new TextDecoder("latin1").decode(needle));
}

/**
 * Checks that a recorded direction of one link is two handshake frames and
 * then records only: not one frame of the session went out in the clear.
 */
function assertRecordsOnly(chunks: Uint8Array[], what: string): void {
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  const view = new DataView(bytes.buffer);
  let at = 0;
  for (let frame = 0; frame < 2; frame++) {
    assert.ok(bytes[at] >= 0x10 && bytes[at] <= 0x14, `${what}: handshake frame ${frame}`);
    at += 5 + view.getUint32(at + 1);
  }
  let records = 0;
  while (at < bytes.length) {
    const length = view.getUint32(at);
    assert.ok(
      length > 16 && length <= 256 * 1024 + 16,
      `${what}: a record of ${length} bytes at ${at}`,
    );
    at += 4 + length;
    records++;
  }
  assert.equal(at, bytes.length, `${what}: the stream ends inside a record`);
  assert.ok(records > 0, `${what}: no records`);
}

/** Records what a proxy forwards each way. */
function record(proxy: FaultProxy): Record<Direction, Uint8Array[]> {
  const seen: Record<Direction, Uint8Array[]> = { up: [], down: [] };
  proxy.tap = (chunk, direction) => seen[direction].push(Uint8Array.from(chunk));
  return seen;
}

/** Sends PLAINTEXT each way between the two ends and checks it arrived. */
async function exchangePlaintext(client: ImmortalConn, server: ImmortalConn): Promise<void> {
  const reading = [
    receiveExactly(server, PLAINTEXT.length),
    receiveExactly(client, PLAINTEXT.length),
  ];
  await client.write(PLAINTEXT);
  await server.write(PLAINTEXT);
  for (const got of await Promise.all(reading)) assert.deepEqual(got, PLAINTEXT);
}

async function receiveExactly(conn: ImmortalConn, size: number): Promise<Uint8Array> {
  const out = new Uint8Array(size);
  for (let got = 0; got < size;) {
    const n = await conn.read(out.subarray(got));
    if (n === null) throw new Error(`ended after ${got} bytes`);
    got += n;
  }
  return out;
}

for (const encrypt of [false, true]) {
  Deno.test(`the path sees ${encrypt ? "no" : "the"} plaintext of ${encrypt ? "an encrypted" : "a plain"} session`, async () => {
    using listener = listen({ hostname: "127.0.0.1", port: 0, key: "k", encrypt });
    const proxy = await FaultProxy.start({ targetPort: listener.addr.port });
    try {
      const seen = record(proxy);
      await using client = await connect({ port: proxy.port, key: "k", encrypt });
      await using server = await listener.accept();
      await exchangePlaintext(client, server);
      // The plain session is the control: the same search finds the text there.
      assert.equal(contains(seen.up, NEEDLE), !encrypt, "client to server");
      assert.equal(contains(seen.down, NEEDLE), !encrypt, "server to client");
      if (encrypt) {
        await client.close();
        await server.close();
        assertRecordsOnly(seen.up, "client to server");
        assertRecordsOnly(seen.down, "server to client");
      }
    } finally {
      await proxy.close();
    }
  });
}

Deno.test("encrypted session: a byte flipped on the path is caught, the link replaced, and 16 MiB each way arrive intact across 6 flips", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0, key: "k", encrypt: true, ...FAST });
  const proxy = await FaultProxy.start({ targetPort: listener.addr.port });
  try {
    await using client = await connect({ port: proxy.port, key: "k", encrypt: true, ...FAST });
    await using server = await listener.accept();
    const reasons: string[] = [];
    client.addEventListener("reconnecting", (event) => reasons.push(event.reason));
    server.addEventListener("reconnecting", (event) => reasons.push(event.reason));
    const size = 16 << 20;
    // Each flip lands on a live link's records, not in a resume's handshake.
    const live = () => client.state === "connected" && server.state === "connected";
    using up = proxy.cutEvery({
      bytes: 2 << 20,
      max: 3,
      direction: "up",
      when: live,
      fault: () => proxy.corruptNext("up"),
    });
    using down = proxy.cutEvery({
      bytes: 2 << 20,
      max: 3,
      direction: "down",
      when: live,
      fault: () => proxy.corruptNext("down"),
    });
    const [sentUp, gotUp, sentDown, gotDown] = await Promise.all([
      sendPattern(client, 1, size),
      receiveAll(server),
      sendPattern(server, 2, size),
      receiveAll(client),
    ]);
    assert.equal(gotUp.sha256, sentUp);
    assert.equal(sentUp, patternHash(1, size));
    assert.equal(gotDown.sha256, sentDown);
    assert.equal(up.stop() + down.stop(), 6);
    assert.equal(proxy.corrupted, 6, "every fault flipped a byte");
    assert.ok(
      reasons.some((reason) => /changed on the way|record/.test(reason)),
      `the flips were noticed as tampering: ${reasons.join(" | ")}`,
    );
  } finally {
    await proxy.close();
  }
});

Deno.test("encrypted session: 32 MiB each way across 8 link cuts (every link has its own keys)", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0, key: "k", encrypt: true, ...FAST });
  const proxy = await FaultProxy.start({ targetPort: listener.addr.port });
  try {
    await using client = await connect({ port: proxy.port, key: "k", encrypt: true, ...FAST });
    await using server = await listener.accept();
    const size = 32 << 20;
    const cuts = await cutWhile(
      proxy,
      6 << 20,
      4,
      Promise.all([
        sendPattern(client, 3, size).then((sent) => assert.equal(sent, patternHash(3, size))),
        receiveAll(server).then((got) => assert.equal(got.sha256, patternHash(3, size))),
        sendPattern(server, 4, size).then((sent) => assert.equal(sent, patternHash(4, size))),
        receiveAll(client).then((got) => assert.equal(got.sha256, patternHash(4, size))),
      ]),
    );
    assert.ok(cuts.up + cuts.down >= 6, `only ${cuts.up}+${cuts.down} cuts`);
  } finally {
    await proxy.close();
  }
});

Deno.test("a server that takes encrypted sessions only refuses a plain client, saying why", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0, key: "k", encrypt: true });
  await assert.rejects(
    connect({ port: listener.addr.port, key: "k" }),
    /takes encrypted sessions only/,
  );
  // And an encrypting client is welcome at a server that does not insist.
  using relaxed = listen({ hostname: "127.0.0.1", port: 0, key: "k" });
  await using client = await connect({ port: relaxed.addr.port, key: "k", encrypt: true });
  await using server = await relaxed.accept();
  await client.write(encoder.encode("sealed anyway"));
  const buffer = new Uint8Array(64);
  const n = await within(10_000, "the read", server.read(buffer));
  assert.equal(new TextDecoder().decode(buffer.subarray(0, n!)), "sealed anyway");
});

for (const raw of [false, true]) {
  const how = raw ? "connect() and listen() over its raw pipes" : "connectTo() and listen()";
  Deno.test(`through relay pipes (${how}), the relay forwards no plaintext of a session: encrypted by default`, async () => {
    await using relay = serveRelay({ hostname: "127.0.0.1", port: 0, secret: "s", onListen() {} });
    // Both nodes reach the relay through a recording proxy: what the relay gets is what it sees.
    const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
    try {
      const seen = record(proxy);
      const url = `http://127.0.0.1:${proxy.port}`;
      const options = { session: "s", secret: "s" };
      await using lab = await RelayNode.connect(url, { ...options, nickname: "lab" });
      // Encrypted by default through a relay, raw pipes too.
      using listener = raw
        ? listen({ acceptor: lab.pipeAcceptor(), key: "k" })
        : lab.listen({ key: "k" });
      await using laptop = await RelayNode.connect(url, { ...options, nickname: "laptop" });
      await using client = raw
        ? await connect({ dialer: laptop.pipeDialer("lab"), key: "k" })
        : await laptop.connectTo("lab", { key: "k" });
      await using server = await listener.accept();
      await exchangePlaintext(client, server);
      assert.ok(!contains(seen.up, NEEDLE), "the relay received plaintext");
      assert.ok(!contains(seen.down, NEEDLE), "the relay sent plaintext");
      assert.ok(relay.relay.stats.pipes!.bytes >= 2 * PLAINTEXT.length, "it went through the pipe");
    } finally {
      await proxy.close();
    }
  });
}

Deno.test("sessions over a relay's raw pipes need a key (the relay could stand in the middle of an unkeyed exchange); encrypt: false is plaintext, asked for", async () => {
  await using relay = serveRelay({ hostname: "127.0.0.1", port: 0, onListen() {} });
  const url = `http://127.0.0.1:${relay.addr.port}`;
  await using lab = await RelayNode.connect(url, { session: "s", nickname: "lab" });
  await using laptop = await RelayNode.connect(url, { session: "s", nickname: "laptop" });
  const needsKey = (error: Error) =>
    error instanceof TypeError &&
    /through a relay needs a key.*generateKey\(\)/.test(error.message);
  await assert.rejects(connect({ dialer: laptop.pipeDialer("lab") }), needsKey);
  assert.throws(() => listen({ acceptor: lab.pipeAcceptor() }), needsKey);
  assert.throws(() => new TunnelClient({ dialer: laptop.pipeDialer("lab") }), needsKey);
  assert.throws(
    () =>
      new TunnelServer({
        acceptor: lab.pipeAcceptor(),
        target: { hostname: "127.0.0.1", port: 1 },
      }),
    needsKey,
  );
  // Plaintext only when asked: both ends say so, and still need the key.
  using listener = listen({ acceptor: lab.pipeAcceptor(), key: "k", encrypt: false });
  await using client = await connect({
    dialer: laptop.pipeDialer("lab"),
    key: "k",
    encrypt: false,
  });
  await using server = await listener.accept();
  await client.write(encoder.encode("plain, as asked"));
  const buffer = new Uint8Array(64);
  const n = await server.read(buffer);
  assert.equal(new TextDecoder().decode(buffer.subarray(0, n!)), "plain, as asked");
});

/**
 * A path on which resume links `forged` (by index) get, in place of the
 * server's first frame, a reject the path made up: the server's word
 * that it lost the session, or that the proof failed, which nothing
 * authenticates.
 */
function forgingPath(forged: (index: number) => boolean, code: "unknown-session" | "auth") {
  return controlledPath((link) => {
    if (link.index === 0 || !forged(link.index)) return;
    const write = link.server.write.bind(link.server);
    let first = true;
    link.server.write = (_data) => {
      if (!first) return Promise.resolve();
      first = false;
      return write(encodeFrame({ type: "reject", code, reason: "forged by the path" }));
    };
  });
}

/** A sealed, keyed session on a {@linkcode forgingPath}, both ends. */
async function forgedSession(
  forged: (index: number) => boolean,
  code: "unknown-session" | "auth",
) {
  const path = forgingPath(forged, code);
  const listener = listen({ acceptor: path.acceptor, key: "k", encrypt: true });
  const client = await connect({
    dialer: path.dialer,
    key: "k",
    encrypt: true,
    backoff: { initial: 5, max: 50 },
  });
  return { path, listener, client, server: await listener.accept() };
}

Deno.test("encrypted session: a reject forged on the path during a resume costs another resume, not the session; one the server keeps saying is believed", async () => {
  for (const code of ["unknown-session", "auth"] as const) {
    // The first resume's first two answers are forged; the links after them are clean.
    let forgeries = 0;
    const { path, listener, client, server } = await forgedSession(() => ++forgeries <= 2, code);
    try {
      await client.write(encoder.encode("before;"));
      path.links[0].cut();
      // Written while the link is down: bytes in flight across the forgeries.
      await client.write(encoder.encode("during"));
      await client.closeWrite();
      const got = await within(10_000, code, new Response(server.readable).text());
      assert.equal(got, "before;during", code);
      // (A dial raced beside a slow handshake may add a link: at least these.)
      assert.ok(path.links.length >= 4, `${code}: two forged answers, then the resume`);
      await server.close();
    } finally {
      client.close();
      listener.close();
      await Promise.allSettled([client.closed, server.closed]);
    }
  }
  // The same answer three times in one resume: the server lost the session, the client gives up.
  // Every answer forged: the third is believed, however many dials raced.
  const { path, listener, client, server } = await forgedSession(() => true, "unknown-session");
  try {
    path.links[0].cut();
    const ended = await within(10_000, "believed", client.closed.then(() => null, (e) => e));
    assert.equal(ended?.code, "unknown-session", String(ended));
    assert.ok(path.links.length >= 4, "believed on the third answer");
  } finally {
    client.close();
    server.close();
    listener.close();
    await Promise.allSettled([client.closed, server.closed]);
  }
});
