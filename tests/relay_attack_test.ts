/**
 * The relay under attack, from outside and without the secret: strict HTTP
 * and WebSocket framing, connections that never send a request, a flood from
 * one address, and running out of descriptors.
 */

import assert from "node:assert/strict";
import { RelayNode } from "../mod.ts";
import { spawnCli } from "./_cli_process.ts";
import { freePort, renderRecord, waitUntil, within, withLogs } from "./_helpers.ts";
import { startRelay, waitForEvent } from "./_relay.ts";
import { slowloris } from "./_slowloris.ts";

const encoder = new TextEncoder();
const CLI = new URL("../cli/relay.ts", import.meta.url).pathname;

/** Sends `bytes` on a new connection and reads until the relay closes it. */
async function exchange(port: number, bytes: Uint8Array | string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(typeof bytes === "string" ? encoder.encode(bytes) : bytes);
  return await within(
    10_000,
    "the relay closing the connection",
    new Response(conn.readable).text(),
  );
}

/** Status codes of every response in `text`, in order. */
function statuses(text: string): number[] {
  return [...text.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((m) => Number(m[1]));
}

Deno.test("relay HTTP: pipelined, chunked and HTTP/1.0 requests work; smuggling-prone and oversized ones are refused", async () => {
  await using relay = startRelay({ secret: "s3cret" });
  const { port } = relay.addr;
  // Requests in one write, a chunked body in the middle one: answers in order; the refused
  // chunked body (a length not known before it is read) ends the connection, and says so.
  const pipelined = await exchange(
    port,
    "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n" +
      "POST /relay/send HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n" +
      "x-relay-stream: nope\r\n\r\n2\r\n{}\r\n0\r\n\r\n" +
      "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
  );
  assert.deepEqual(statuses(pipelined), [200, 404], pipelined);
  assert.match(pipelined, /no-such-stream/);
  assert.match(pipelined, /\r\nconnection: close\r\n/);
  // A body of declared length is read past: the connection goes on.
  const declared = await exchange(
    port,
    "POST /relay/send HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nx-relay-stream: nope\r\n\r\n{}" +
      "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
  );
  assert.deepEqual(statuses(declared), [404, 200], declared);
  // HTTP/1.0 gets its answer and the end of the connection.
  const old = await exchange(port, "GET /healthz HTTP/1.0\r\n\r\n");
  assert.deepEqual(statuses(old), [200]);
  assert.match(old, /"status":"ok"/);

  const refused: [string, number][] = [
    // Both framings: which one a proxy in front of us believed is anyone's guess.
    [
      "POST /relay/send HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      400,
    ],
    ["POST /relay/send HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400],
    ["GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400], // space before the colon
    ["GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n", 400], // obsolete line folding
    ["GET / HTTP/1.1\r\n\r\n", 400], // no Host
    ["GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505],
    ["POST /relay/send HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501],
    [`GET / HTTP/1.1\r\nHost: a\r\nX: ${"a".repeat(20_000)}\r\n\r\n`, 431],
  ];
  for (const [request, status] of refused) {
    const answer = await exchange(port, request);
    assert.deepEqual(
      statuses(answer),
      [status],
      `${JSON.stringify(request.slice(0, 60))}: ${answer}`,
    );
  }
  assert.equal(relay.relay.stats.connections?.badRequests, refused.length);
});

Deno.test("relay HTTP: a refused request's small body is read past; one declared too large to read past ends the connection at once", async () => {
  await using relay = startRelay({ secret: "s3cret" });
  const { port } = relay.addr;
  const refusal = "POST /relay/send HTTP/1.1\r\nHost: a\r\nx-relay-stream: nope\r\n";
  const small = await exchange(
    port,
    `${refusal}Content-Length: 2\r\n\r\n{}GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`,
  );
  assert.deepEqual(statuses(small), [404, 200], small);
  // 10 MB declared, none sent: answered, and closed without waiting for the body.
  const large = await exchange(port, `${refusal}Content-Length: 10000000\r\n\r\n`);
  assert.deepEqual(statuses(large), [404], large);
});

/** A WebSocket opened by hand; returns the connection after the 101. */
async function rawWebSocket(port: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode(
    "GET /relay/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  ));
  let head = "";
  const buffer = new Uint8Array(1);
  while (!head.endsWith("\r\n\r\n")) {
    // Byte by byte, so nothing after the head is read here.
    if ((await conn.read(buffer)) === null) throw new Error(`closed during the handshake: ${head}`);
    head += String.fromCharCode(buffer[0]);
  }
  assert.match(head, /^HTTP\/1\.1 101 /);
  // RFC 6455 1.3's example key and its answer.
  assert.match(head, /sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/i);
  return conn;
}

/** A client frame: `first` is the FIN/RSV/opcode byte; masked unless `mask` is null. */
function clientFrame(first: number, payload: Uint8Array, mask: number[] | null = [1, 2, 3, 4]) {
  const head = [first, (mask ? 0x80 : 0) | payload.length, ...(mask ?? [])];
  const body = payload.map((b, i) => mask ? b ^ mask[i & 3] : b);
  return new Uint8Array([...head, ...body]);
}

/** Reads to the end; returns the close code of the close frame the relay sent last. */
async function closeCodeOf(conn: Deno.TcpConn): Promise<number> {
  const bytes = new Uint8Array(
    await within(10_000, "the close", new Response(conn.readable).bytes()),
  );
  // Frames from the server are unmasked; find the close frame (0x88).
  for (let i = 0; i < bytes.length;) {
    const length = bytes[i + 1] & 0x7f;
    const start = i + (length === 126 ? 4 : 2);
    const size = length === 126 ? (bytes[i + 2] << 8) | bytes[i + 3] : length;
    if (bytes[i] === 0x88) return (bytes[start] << 8) | bytes[start + 1];
    i = start + size;
  }
  throw new Error(`no close frame in ${bytes.length} bytes`);
}

Deno.test("relay WebSocket: unmasked frames, reserved bits and invalid UTF-8 end the connection (1002, 1002, 1007); a fragmented hello joins", async () => {
  await using relay = startRelay();
  const { port } = relay.addr;
  const hello = encoder.encode(JSON.stringify({ t: "hello", session: "s", nickname: "raw" }));

  const unmasked = await rawWebSocket(port);
  await unmasked.write(clientFrame(0x81, hello, null));
  assert.equal(await closeCodeOf(unmasked), 1002);

  const reserved = await rawWebSocket(port);
  await reserved.write(clientFrame(0x81 | 0x40, hello)); // RSV1: compression nobody agreed to
  assert.equal(await closeCodeOf(reserved), 1002);

  const badText = await rawWebSocket(port);
  await badText.write(clientFrame(0x81, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])));
  assert.equal(await closeCodeOf(badText), 1007);

  // A hello in two fragments is one message: the relay welcomes the node.
  const fragmented = await rawWebSocket(port);
  await fragmented.write(clientFrame(0x01, hello.subarray(0, 10)));
  await fragmented.write(clientFrame(0x80, hello.subarray(10)));
  const reply = new Uint8Array(4096);
  const n = await within(10_000, "the welcome", fragmented.read(reply));
  assert.match(new TextDecoder().decode(reply.subarray(0, n ?? 0)), /"t":"welcome"/);
  await fragmented.write(clientFrame(0x88, new Uint8Array([0x03, 0xe8]))); // close, 1000
  assert.equal(await closeCodeOf(fragmented), 1000);
});

Deno.test("relay: connections that send no complete request head are closed at the header timeout, and counted", async () => {
  await using relay = startRelay({ headerTimeout: 200 });
  const { port } = relay.addr;
  const silent = await Deno.connect({ hostname: "127.0.0.1", port });
  const partial = await Deno.connect({ hostname: "127.0.0.1", port });
  await partial.write(encoder.encode("GET / HTTP/1.1\r\nHost: a\r\n"));
  // The relay ends both: reading them reaches the end.
  await within(10_000, "silent closed", new Response(silent.readable).arrayBuffer());
  await within(10_000, "partial closed", new Response(partial.readable).arrayBuffer());
  assert.equal(relay.relay.stats.connections?.timedOut, 2);
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  assert.match(metrics, /^immortal_relay_connections_timed_out_total 2$/m);
});

Deno.test("relay: 2,000 slowloris sockets from 127.0.0.2 do not keep nodes from 127.0.0.1 out; the flood evicts itself and the log stays short", async () => {
  const started = performance.now();
  await withLogs(async (records) => {
    await using relay = startRelay({ maxUnjoined: 64 });
    const attack = slowloris(relay.addr.port, {
      localAddress: "127.0.0.2",
      count: 2000,
      reconnects: 3,
      payload: encoder.encode("GET / HTTP/1.1\r\nHost: a\r\n"),
    });
    try {
      await waitUntil(
        () => (relay.relay.stats.connections?.evicted ?? 0) > 100,
        "the relay evicting attack connections",
      );
      const options = { session: "under-attack" };
      await using a = await within(
        20_000,
        "node a joining",
        RelayNode.connect(relay.url, { ...options, nickname: "a" }),
      );
      await using b = await within(
        20_000,
        "node b joining",
        RelayNode.connect(relay.url, { ...options, nickname: "b", transport: "http" }),
      );
      a.send("through the flood");
      assert.equal((await waitForEvent(b, "message", undefined, 20_000)).text, "through the flood");
      const stats = relay.relay.stats.connections!;
      assert.ok(stats.unjoined <= 64, `${stats.unjoined} unjoined connections`);
      assert.ok(attack.opened > 2000, "the attack was running (sockets came back when evicted)");
    } finally {
      await attack.stop();
    }
    const warnings = records.filter((r) => r.level === "warning").map(renderRecord);
    // One line per kind (eviction, timeout, refusal) per 10 s, not one per
    // eviction; the bound follows how long this run took on this machine.
    const windows = Math.ceil((performance.now() - started) / 10_000) + 1;
    assert.ok(warnings.length <= 3 * windows, warnings.join("\n"));
  });
});

Deno.test("relay CLI under ulimit -n 64: more idle connections than descriptors do not stop it; a node joins during the attack (the idle ones time out) and after it", async () => {
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const relay = spawnCli(
    [`--allow-net=127.0.0.1:${port}`],
    CLI,
    // Past the descriptor limit on purpose: here the limit, not the cap, is what runs out.
    [
      "--open",
      "--hostname",
      "127.0.0.1",
      "--port",
      String(port),
      "--max-unjoined",
      "1000",
      "--header-timeout",
      "500",
    ],
    { wrap: ["prlimit", "--nofile=64:64"] },
  );
  const attacks: ReturnType<typeof slowloris>[] = [];
  const started = performance.now();
  try {
    await relay.waitFor(/Relay listening on/, "the relay starting");
    // Ten addresses, 12 sockets each, each back as soon as it is closed (for 2 minutes' worth).
    for (let i = 0; i < 10; i++) {
      attacks.push(slowloris(port, {
        localAddress: `127.0.0.${2 + i}`,
        count: 12,
        reconnects: 10_000,
        payload: encoder.encode("GET / HTTP/1.1\r\n"),
      }));
    }
    await relay.waitFor(
      /Accepting a connection failed: .*(Too many open files|os error 24)/,
      "EMFILE",
    );
    // During the attack: the header timeout frees descriptors, and the node gets one.
    {
      await using a = await within(
        60_000,
        "a node joining during the attack",
        RelayNode.connect(url, { session: "s", nickname: "during" }),
      );
      assert.equal(a.nickname, "during");
    }
    // The header timeout is what freed descriptors: the attackers see their
    // sockets closed. Which sources got accepted before the node depends on the
    // kernel's backlog order, so it is some of them, not all; and a close
    // reaches the attacker's process on its own schedule, hence the wait.
    await waitUntil(
      () => attacks.some((attack) => attack.closedByServer > 0),
      "the relay closing attack sockets",
    );
    await Promise.all(attacks.splice(0).map((attack) => attack.stop()));
    // After it: everything works.
    await using b = await within(
      30_000,
      "a node joining after the attack",
      RelayNode.connect(url, { session: "s", nickname: "after" }),
    );
    await using c = await RelayNode.connect(url, { session: "s", nickname: "other" });
    b.send("hello after the flood");
    assert.equal((await waitForEvent(c, "message")).text, "hello after the flood");
    // A failing accept is one line per 10 s, not one per try: the bound follows
    // how long this run took, so a slow machine does not fail it.
    const failures = relay.log.match(/Accepting a connection failed/g)?.length ?? 0;
    const windows = Math.ceil((performance.now() - started) / 10_000) + 1;
    assert.ok(failures <= windows, `${failures} lines about failed accepts:\n${relay.log}`);
  } finally {
    await Promise.all(attacks.map((attack) => attack.stop()));
    assert.equal(await relay.stop(), 0, relay.log);
  }
});
