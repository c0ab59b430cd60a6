/**
 * The relay under bad input: clear status codes, and good nodes keep working.
 */

import assert from "node:assert/strict";
import { Relay, RelayNode, RelayRefusedError, SECRET_HEADER } from "../mod.ts";
import { delay, renderRecord, waitUntil, within, withLogs } from "./_helpers.ts";
import { rawStreamNode, recordEvents, startRelay, waitForEvent } from "./_relay.ts";

function hello(fields: Record<string, unknown> = {}) {
  return JSON.stringify({ t: "hello", session: "s", nickname: "n", ...fields });
}

async function post(url: string, body: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { method: "POST", body, headers });
  const text = await res.text();
  return { status: res.status, text };
}

Deno.test("relay: wrong or missing secret → 401 on every transport; the node gets a RelayRefusedError", async () => {
  await using relay = startRelay({ secret: "right" });
  const stream = `${relay.url}/relay/stream`;
  assert.equal((await post(stream, hello(), { [SECRET_HEADER]: "wrong" })).status, 401);
  assert.equal((await post(stream, hello())).status, 401);
  assert.equal((await post(stream, hello({ secret: "wrong" }))).status, 401);
  const ws = await fetch(`${relay.url}/relay/ws`, {
    headers: { upgrade: "websocket", [SECRET_HEADER]: "wrong" },
  });
  await ws.body?.cancel();
  assert.equal(ws.status, 401);
  for (const transport of ["websocket", "http"] as const) {
    await assert.rejects(
      RelayNode.connect(relay.url, { session: "s", nickname: "n", secret: "wrong", transport }),
      (error) => error instanceof RelayRefusedError && error.code === "unauthorized",
    );
  }
  await using good = await RelayNode.connect(relay.url, {
    session: "s",
    nickname: "n",
    secret: "right",
  });
  assert.equal(good.transport, "websocket");
  // The secret in the hello (a browser cannot set headers): an error frame, then close 4401.
  const socket = new WebSocket(`${relay.url.replace("http", "ws")}/relay/ws`);
  const answers: string[] = [];
  const closed = new Promise<number>((resolve) => socket.onclose = (e) => resolve(e.code));
  socket.onmessage = (e) => answers.push(e.data);
  socket.onopen = () => socket.send(hello({ secret: "wrong" }));
  assert.equal(await closed, 4401);
  assert.match(answers.join(), /"code":"unauthorized"/);
  // Each refusal counted once, under its reason: not also as "unauthorized".
  const { refused } = relay.relay.stats;
  assert.deepEqual([refused.secret, refused.unauthorized], [7, undefined]);
});

Deno.test("relay: over-long or control-character nicknames, bad session ids, bad roles → 400", async () => {
  await using relay = startRelay({ maxNicknameLength: 16 });
  const stream = `${relay.url}/relay/stream`;
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ nickname: "x".repeat(17) }, /longer than 16/],
    [{ nickname: "bad\u0007bell" }, /control or bidi characters/],
    [{ nickname: "line\nbreak" }, /control or bidi characters/],
    [{ nickname: "rtl\u202eevil" }, /control or bidi characters/],
    [{ nickname: " padded" }, /spaces/],
    [{ nickname: "" }, /required/],
    // Spoofs: what looks like someone else's nickname, or like nothing.
    [{ nickname: "ad\u200bmin" }, /invisible character \(U\+200B\)/], // zero-width space
    [{ nickname: "max\u200e" }, /invisible character \(U\+200E\)/], // left-to-right mark
    [{ nickname: "max\u200f" }, /invisible character \(U\+200F\)/], // right-to-left mark
    [{ nickname: "ma\u061cx" }, /invisible character \(U\+061C\)/], // Arabic letter mark
    [{ nickname: "\u3164" }, /invisible character \(U\+3164\)/], // Hangul filler
    [{ nickname: "max\u2800" }, /invisible character \(U\+2800\)/], // blank Braille pattern
    [{ nickname: "max\u2060" }, /invisible character \(U\+2060\)/], // word joiner
    // Default-ignorable marks, which render as nothing after a letter.
    [{ nickname: "max\u034f" }, /invisible character \(U\+034F\)/], // combining grapheme joiner
    [{ nickname: "max\ufe00" }, /invisible character \(U\+FE00\)/], // variation selector 1
    [{ nickname: "max\ufe0f" }, /invisible character \(U\+FE0F\)/], // emoji selector, no emoji
    [{ nickname: "max\u17b4" }, /invisible character \(U\+17B4\)/], // Khmer inherent vowel
    [{ nickname: "max\u180b" }, /invisible character \(U\+180B\)/], // Mongolian selector
    [{ nickname: "max\u{e0100}" }, /invisible character \(U\+E0100\)/], // supplement selector
    [{ nickname: "m\u0430x" }, /mixes scripts \(Latin, Cyrillic\)/], // Cyrillic а
    [{ nickname: "\u0440aypal" }, /mixes scripts/], // Cyrillic р
    [{ nickname: "max(1)" }, /may not end in \(n\)/], // the relay's own clash suffix
    [{ nickname: "max(\uff11)" }, /may not end in \(n\)/], // fullwidth digit one
    [{ nickname: "max\uff081\uff09" }, /may not end in \(n\)/], // fullwidth parentheses
    [{ nickname: "max\u207d\u00b9\u207e" }, /may not end in \(n\)/], // superscript ⁽¹⁾
    [{ nickname: "max\ud800" }, /invisible character \(U\+D800\)/], // lone surrogate
    // Any printable session id is accepted (see relay_session_id_test.ts); these are not.
    [{ session: "" }, /session id/],
    [{ session: "bad\u0007bell" }, /session id/],
    [{ session: "zero\u200bwidth" }, /session id/],
    [{ session: "   " }, /session id/],
    [{ session: "x".repeat(65) }, /session id/],
    [{ role: "admin" }, /role/],
  ];
  for (const [fields, message] of cases) {
    const res = await post(stream, hello(fields));
    assert.equal(res.status, 400, JSON.stringify(fields));
    assert.match(JSON.parse(res.text).message, message);
  }
  await assert.rejects(
    RelayNode.connect(relay.url, { session: "s", nickname: "x".repeat(17) }),
    (error) => error instanceof RelayRefusedError && error.code === "bad-request",
  );
  // One script per nickname, except those written together (Japanese, Korean, Chinese with Latin).
  // Emoji as phones type them, with the emoji variation selector, are fine.
  for (
    const nickname of [
      "Max Müller",
      "Привет",
      "漢字かなカナ abc",
      "한국어 Han",
      "max\u2764\ufe0f",
      "1\ufe0f\u20e3",
    ]
  ) {
    await using node = await RelayNode.connect(relay.url, { session: "ok", nickname });
    assert.equal(node.nickname, nickname);
  }
  // 16 characters, counted as characters (not UTF-16 units or bytes), are fine.
  await using ok = await RelayNode.connect(relay.url, { session: "s", nickname: "ü🌍".repeat(8) });
  assert.equal(ok.nickname, "ü🌍".repeat(8));
});

Deno.test("relay: over-long messages, control characters and floods are refused per message; the node stays", async () => {
  await using relay = startRelay({ maxMessageBytes: 1024, rate: 20 });
  for (const transport of ["websocket", "http"] as const) {
    const session = `m-${transport}`;
    await using a = await RelayNode.connect(relay.url, { session, nickname: "a", transport });
    await using b = await RelayNode.connect(relay.url, { session, nickname: "b", transport });
    await waitForEvent(a, "join");
    // Our node refuses an over-long message itself (the welcome says the limit).
    assert.throws(() => a.send("x".repeat(2000)), RangeError);
    a.send("evil\u001b[2J");
    assert.equal((await waitForEvent(a, "error")).code, "bad-message");
    // A client of its own that does not: the relay refuses the frame.
    const flooder = await rawStreamNode(relay.url, session, "flooder");
    const long = await fetch(`${relay.url}/relay/send`, {
      method: "POST",
      headers: { "x-relay-stream": flooder.stream },
      body: JSON.stringify({ t: "msg", text: "x".repeat(2000) }),
    });
    await long.body?.cancel();
    assert.equal((await flooder.nextOf("error")).code, "too-large");
    // Our node paces itself to the relay's rate; a client of its own that
    // does not is what the limit is for: 100 messages in one POST.
    const flood = Array.from({ length: 100 }, (_, i) => ({ t: "msg", text: `flood ${i}` }));
    const sent = await fetch(`${relay.url}/relay/send`, {
      method: "POST",
      headers: { "x-relay-stream": flooder.stream },
      body: JSON.stringify(flood),
    });
    await sent.body?.cancel();
    assert.equal(sent.status, 204);
    assert.equal((await flooder.nextOf("error")).code, "rate-limited");
    await flooder.close();
    const first = await waitForEvent(b, "message");
    assert.equal(first.text, "flood 0", "b got the over-long or control-character message");
  }
  const raw = await fetch(`${relay.url}/relay/stream`, { method: "POST", body: "x".repeat(5000) });
  await raw.body?.cancel();
  assert.equal(raw.status, 413);
});

Deno.test("relay: thousands of junk requests get clear 4xx answers; a good node chats throughout", async () => {
  await using relay = startRelay();
  await using a = await RelayNode.connect(relay.url, { session: "j", nickname: "a" });
  await using b = await RelayNode.connect(relay.url, { session: "j", nickname: "b" });
  await waitForEvent(a, "join");
  const junk: [string, string, RequestInit][] = [
    ["GET", "/nope", {}],
    ["DELETE", "/relay/stream", {}],
    ["POST", "/relay/stream", { body: "not json" }],
    ["POST", "/relay/stream", { body: '{"t":"msg"}' }],
    ["POST", "/relay/stream", { body: "[1,2,3]" }],
    ["POST", "/relay/send", { body: "{}" }],
    ["POST", "/relay/send", { body: "{}", headers: { "x-relay-stream": "forged" } }],
    ["GET", "/relay/ws", {}],
    ["PUT", "/metrics", { body: "x" }],
    ["GET", "/%00%ff", {}],
  ];
  const statuses = new Map<number, number>();
  const TOTAL = 3000;
  let sent = 0;
  const worker = async () => {
    while (sent < TOTAL) {
      const [method, path, init] = junk[sent++ % junk.length];
      const res = await fetch(`${relay.url}${path}`, { method, ...init });
      await res.body?.cancel();
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
    }
  };
  const chat = (async () => {
    for (let i = 0; i < 20; i++) {
      a.send(`still here ${i}`);
      const got = await waitForEvent(b, "message", () => true, 2000);
      assert.equal(got.text, `still here ${i}`);
      await delay(20);
    }
  })();
  await Promise.all([...Array.from({ length: 32 }, worker), chat]);
  const codes = [...statuses.keys()].sort();
  assert.ok(codes.every((c) => c >= 400 && c < 500), `statuses: ${JSON.stringify([...statuses])}`);
  assert.deepEqual(codes, [400, 404, 405, 426]);
  const health = await fetch(`${relay.url}/healthz`);
  assert.deepEqual(await health.json(), { status: "ok", sessions: 1, nodes: 2 });
  // Health checkers that send HEAD get the status without a body.
  const head = await fetch(`${relay.url}/healthz`, { method: "HEAD" });
  assert.deepEqual([head.status, head.headers.get("content-type"), await head.text()], [
    200,
    "application/json",
    "",
  ]);
});

Deno.test("relay: connections that never finish a handshake are cut at the auth deadline; good nodes are unaffected", async () => {
  await using relay = startRelay({ authTimeout: 500 });
  // Silent WebSockets that never send a hello.
  const sockets = Array.from(
    { length: 50 },
    () => new WebSocket(`ws://127.0.0.1:${relay.addr.port}/relay/ws`),
  );
  const closes = sockets.map((ws) =>
    new Promise<number>((resolve) => ws.addEventListener("close", (e) => resolve(e.code)))
  );
  // Raw TCP connections that never send a request at all.
  const raw = await Promise.all(
    Array.from(
      { length: 100 },
      () => Deno.connect({ hostname: "127.0.0.1", port: relay.addr.port }),
    ),
  );
  try {
    await using a = await RelayNode.connect(relay.url, { session: "h", nickname: "a" });
    await using b = await RelayNode.connect(relay.url, { session: "h", nickname: "b" });
    await waitForEvent(a, "join");
    b.send("fine");
    assert.equal((await waitForEvent(a, "message")).text, "fine");
    const codes = await Promise.all(closes);
    assert.ok(codes.every((c) => c === 4408), `close codes: ${[...new Set(codes)]}`);
    assert.equal(relay.relay.stats.refused["auth-timeout"], 50);
  } finally {
    for (const conn of raw) conn.close();
  }
});

/** A WebSocket node that joins, then never reads again (its TCP buffers fill up). */
async function stalledNode(port: number, nickname: string): Promise<Deno.TcpConn> {
  const conn = await upgradedConn(port);
  await conn.write(textFrame(hello({ session: "slow", nickname })));
  return conn;
}

/** A raw connection upgraded to a WebSocket at the relay's `/relay/ws`. */
async function upgradedConn(port: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const request = `GET /relay/ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;
  await conn.write(new TextEncoder().encode(request));
  const head = new Uint8Array(4096);
  const n = (await conn.read(head)) ?? 0;
  assert.match(new TextDecoder().decode(head.subarray(0, n)), /^HTTP\/1.1 101/);
  return conn;
}

/** A client's WebSocket text frame: FIN, masked (with an all-zero key, which leaves it as is). */
function textFrame(text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  return new Uint8Array([
    0x81,
    0x80 | 126,
    payload.length >> 8,
    payload.length & 255,
    0,
    0,
    0,
    0,
    ...payload,
  ]);
}

for (const overflow of ["disconnect", "drop"] as const) {
  Deno.test(`relay: a node that stops reading hits its bounded queue (overflow "${overflow}"); the others get everything`, async () => {
    // The queue holds a burst (3 × 60 KB) for a node that reads, not 24 MB for one that does not.
    await using relay = startRelay({ overflow, maxQueueBytes: 256 * 1024, rate: 100_000 });
    await using fast = await RelayNode.connect(relay.url, { session: "slow", nickname: "fast" });
    const stalled = await stalledNode(relay.addr.port, "stalled");
    try {
      await waitForEvent(fast, "join", (e) => e.nickname === "stalled");
      await using sender = await RelayNode.connect(relay.url, {
        session: "slow",
        nickname: "sender",
      });
      const big = "x".repeat(60_000);
      const COUNT = 402; // 24 MB: far beyond what the kernel buffers for the stalled socket
      // Paced in rounds the fast node keeps up with: only the stalled node falls behind.
      const events = fast.events[Symbol.asyncIterator]();
      await within(
        30_000,
        "paced rounds",
        (async () => {
          for (let got = 0; got < COUNT;) {
            for (let i = got; i < got + 3; i++) sender.send(`${i} ${big}`);
            for (const end = got + 3; got < end;) {
              const { value: event } = await events.next();
              if (event.type !== "message") continue;
              assert.ok(
                event.text.startsWith(`${got} `),
                "the fast node lost or reordered a message",
              );
              got++;
            }
          }
        })(),
      );
      const stats = relay.relay.stats;
      if (overflow === "disconnect") {
        assert.equal(stats.slowDisconnects, 1);
        assert.equal(stats.dropped, 0);
        // The others are told the slow node is gone.
        assert.equal(
          (await waitForEvent(sender, "leave", (e) => e.nickname === "stalled")).reason,
          "gone",
        );
        assert.ok(
          !sender.members.some((m) => m.nickname === "stalled"),
          "the stalled node is still listed",
        );
      } else {
        assert.equal(stats.slowDisconnects, 0);
        assert.ok(stats.dropped > 0, "nothing was dropped");
        assert.ok(sender.members.some((m) => m.nickname === "stalled"));
      }
      const metrics = await (await fetch(`${relay.url}/metrics`)).text();
      assert.match(
        metrics,
        overflow === "drop"
          ? /immortal_relay_dropped_total [1-9]/
          : /immortal_relay_slow_disconnects_total 1/,
      );
    } finally {
      stalled.close();
    }
  });
}

Deno.test("relay numbers are not public: /metrics and the counts on / and /healthz need the metrics token", async () => {
  const get = (relay: { url: string }, path: string, bearer?: string) =>
    fetch(`${relay.url}${path}`, {
      headers: bearer ? { authorization: `Bearer ${bearer}` } : {},
    });
  {
    await using relay = startRelay({ secret: "s3cret", metricsToken: "m3trics" });
    await using _node = await RelayNode.connect(relay.url, {
      session: "private",
      nickname: "n",
      secret: "s3cret",
    });
    for (const bearer of [undefined, "wrong", "s3cret"]) {
      const res = await get(relay, "/metrics", bearer);
      assert.equal(res.status, 401, `bearer ${bearer}`);
      const text = await res.text();
      assert.doesNotMatch(text, /immortal_relay_messages_total/);
      // It names what works here: with a metrics token, the secret does not.
      assert.match(text, /the metrics need the metrics token: Authorization: Bearer TOKEN/);
    }
    const ok = await get(relay, "/metrics", "m3trics");
    assert.equal(ok.status, 200);
    // The scheme's name in any case (RFC 7235).
    const lower = await fetch(`${relay.url}/metrics`, {
      headers: { authorization: "bearer m3trics" },
    });
    assert.equal(lower.status, 200);
    await lower.body?.cancel();
    assert.match(await ok.text(), /immortal_relay_nodes 1/);
    assert.deepEqual(await (await get(relay, "/healthz")).json(), { status: "ok" });
    assert.deepEqual(await (await get(relay, "/healthz", "m3trics")).json(), {
      status: "ok",
      sessions: 1,
      nodes: 1,
    });
    const page = await (await get(relay, "/")).text();
    assert.doesNotMatch(page, /session\(s\)/);
    assert.match(await (await get(relay, "/", "m3trics")).text(), /1 session\(s\), 1 node\(s\)/);
  }
  {
    // Without a metrics token, the relay secret opens them.
    await using relay = startRelay({ secret: "s3cret" });
    const refused = await get(relay, "/metrics");
    assert.equal(refused.status, 401);
    assert.match(await refused.text(), /the metrics need the relay secret/);
    const ok = await get(relay, "/metrics", "s3cret");
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
  }
  {
    // An open relay hides nothing: anyone may join it anyway.
    await using relay = startRelay({});
    const ok = await get(relay, "/metrics");
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
  }
});

Deno.test("relay: a hello or frame that is not valid UTF-8 is refused, not decoded into U+FFFD", async () => {
  await using relay = startRelay({});
  const hello = new TextEncoder().encode('{"t":"hello","session":"s","nickname":"ma#"}');
  hello[hello.indexOf(0x23)] = 0xff; // a byte that is never UTF-8 where the # was
  const res = await fetch(`${relay.url}/relay/stream`, { method: "POST", body: hello });
  assert.equal(res.status, 400);
  const refusal = await res.json();
  assert.equal(refusal.error, "bad-hello");
  assert.match(refusal.message, /not valid UTF-8/);
});

Deno.test("relay settings: a bad option is a RangeError naming it, before anything listens", () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ keepAlive: 1e10 }, /keepAlive must be at most 2147483647 ms, got 10000000000/],
    [{ authTimeout: 0 }, /authTimeout must be a positive number, got 0/],
    [{ historyAge: 3e9 }, /historyAge must be at most 2147483647 ms/],
    [{ idleTimeout: 2 ** 31 }, /idleTimeout must be at most 2147483647 ms/],
    [{ maxNodesPerSession: -1 }, /maxNodesPerSession must be a positive number/],
    // Under a hello's size, every join would be refused as too large.
    [{ maxMessageBytes: 10 }, /maxMessageBytes must be at least 512, got 10/],
    [{ redis: "localhost:6379" }, /redis must be a URL like .* \(redis: or rediss:\)/],
    [{ redis: "redis://127.0.0.1:6379/abc" }, /redis.s path must be a database number/],
    // Bursts of twice the rate under one message: nothing would ever be taken.
    [{ rate: 0.4 }, /rate must be at least 0.5 messages a second, got 0.4/],
  ];
  for (const [options, message] of cases) {
    assert.throws(() => startRelay(options), (error) => {
      assert.ok(error instanceof RangeError, String(error));
      assert.match(error.message, message);
      return true;
    });
  }
  // Not a list of addresses: a TypeError naming it.
  assert.throws(
    () => startRelay({ trustedProxies: "10.0.0.2" as unknown as string[] }),
    /TypeError: trustedProxies must be an array of IP addresses, got "10\.0\.0\.2"/,
  );
});

Deno.test("a relay logs nodes refused for a wrong or missing secret, with where they come from, a line per interval however many", async () => {
  await withLogs(async (records) => {
    await using relay = startRelay({ secret: "right" });
    for (const transport of ["websocket", "http"] as const) {
      for (const secret of ["wrong", "wrong again", undefined]) {
        await assert.rejects(
          RelayNode.connect(relay.url, { session: "s", nickname: "n", secret, transport }),
          RelayRefusedError,
        );
      }
    }
    await relay.shutdown();
    const lines = records.map(renderRecord);
    const first = lines.filter((line) => line.startsWith("Refused a node"));
    assert.match(first[0], /^Refused a node from 127\.0\.0\.1:\d+: wrong relay secret$/);
    // Every refusal is in the log: a line of its own or counted in a summary
    // (the first of each interval gets a line; how many do depends on time).
    const summarised = lines.flatMap((line) => {
      const counted = /^(\d+) more in the last \d+ s; the last: Refused a node/.exec(line);
      return counted ? [Number(counted[1])] : [];
    });
    assert.equal(first.length + summarised.reduce((a, b) => a + b, 0), 6, lines.join("\n"));
    assert.ok(first.length < 6, "a flood does not get a line each");
  });
});

Deno.test("relay HTTP: two requests in one write, then a third once they are answered: three answers, in order, each once", async () => {
  await using relay = startRelay();
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: relay.addr.port });
  const request = (path: string, close = false) =>
    `GET ${path} HTTP/1.1\r\nhost: x\r\n${close ? "connection: close\r\n" : ""}\r\n`;
  const encoder = new TextEncoder();
  await conn.write(encoder.encode(request("/healthz") + request("/nope")));
  let text = "";
  const statuses = () => [...text.matchAll(/^HTTP\/1\.1 (\d{3}) /gm)].map((m) => Number(m[1]));
  const buffer = new Uint8Array(65536);
  const decoder = new TextDecoder();
  // Both answered (the relay is now waiting for the next request on this connection).
  const ends = () => text.split("\r\n0\r\n\r\n").length - 1; // chunked bodies' last chunks
  while (ends() < 2) {
    const n = await within(10_000, "the first two answers", conn.read(buffer));
    if (n === null) break;
    text += decoder.decode(buffer.subarray(0, n));
  }
  await conn.write(encoder.encode(request("/relay/stream", true)));
  for (;;) {
    const n = await within(10_000, "the third answer", conn.read(buffer));
    if (n === null) break;
    text += decoder.decode(buffer.subarray(0, n));
  }
  assert.deepEqual(statuses(), [200, 404, 405], text);
});

Deno.test("a relay mounted in Deno.serve answers a broken WebSocket handshake with a 400, not a 500", async () => {
  await using relay = new Relay();
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) => relay.handle(req, info),
  );
  for (const path of ["/relay/ws", "/relay/pipe"]) {
    // An upgrade without its Sec-WebSocket-Key: Deno's upgrade throws on it.
    const answer = await fetch(`http://127.0.0.1:${server.addr.port}${path}`, {
      headers: {
        upgrade: "websocket",
        connection: "upgrade",
        "x-relay-session": "s",
        "x-relay-nickname": "n",
        "x-relay-token": "t",
      },
    });
    const text = await answer.text();
    // A node's WebSocket is refused for the handshake; a pipe before that, for the unknown node.
    assert.equal(answer.status, path === "/relay/ws" ? 400 : 401, `${path}: ${text}`);
  }
});

Deno.test("a closed Relay mounted in Deno.serve takes no node back: its nodes cannot rejoin (one on HTTP streaming held the server's shutdown open for ever), and /healthz says 503", async () => {
  const relay = new Relay();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) => relay.handle(req, info),
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  await using node = await RelayNode.connect(url, {
    session: "s",
    nickname: "n",
    transport: "http",
    backoff: { initial: 1, max: 5 },
  });
  const events = recordEvents(node);
  relay.close();
  // Told why (the first), it tries again at once, and is refused (the second).
  const shuttingDown = () =>
    events.events.filter((e) =>
      e.type === "state" && e.state === "disconnected" && /shutting down/.test(e.reason ?? "")
    ).length;
  await events.until(() => shuttingDown() >= 2, "a rejoin refused");
  await within(30_000, "the server's shutdown", server.shutdown());
  assert.equal(node.state === "connected", false);
  // A new node, or a health check, on a closed relay mounted in another server.
  const again = new Relay();
  again.close();
  const answer = again.handle(new Request("http://relay/healthz"));
  assert.equal((answer as Response).status, 503);
  assert.equal((await (answer as Response).json()).error, "unavailable");
});

Deno.test("a relay with an empty TLS certificate refuses to start, rather than serve plain HTTP", () => {
  assert.throws(
    () => startRelay({ cert: "", key: "" }),
    (error) => error instanceof TypeError && /the TLS certificate is missing/.test(error.message),
  );
});

Deno.test("a node paces itself to a relay that takes less than one message a second", async () => {
  await using relay = startRelay({ rate: 0.5 });
  await using x = await RelayNode.connect(relay.url, { session: "slow", nickname: "x" });
  await using y = await RelayNode.connect(relay.url, { session: "slow", nickname: "y" });
  await waitForEvent(x, "join");
  x.send("one");
  x.send("two");
  await within(30_000, "both taken, one at a time", x.flush());
  assert.equal((await waitForEvent(y, "message")).text, "one");
  assert.equal((await waitForEvent(y, "message")).text, "two");
});

Deno.test("relay pipes: a pipe request whose dialer gave up (closed its connection) is dropped at once, not held until the pairing timeout", async () => {
  await using relay = startRelay({ authTimeout: 60_000 });
  // A node that is offered pipes and never answers them.
  const b = await rawStreamNode(relay.url, "p", "b");
  await using a = await RelayNode.connect(relay.url, { session: "p", nickname: "a" });
  const connections = () => relay.relay.stats.connections!.connections;
  try {
    const baseline = connections();
    for (let i = 0; i < 3; i++) {
      const abort = new AbortController();
      const dialing = a.pipeDialer("b")(abort.signal);
      dialing.catch(() => {});
      await within(10_000, "the offer", b.nextOf("pipe"));
      abort.abort();
      await assert.rejects(dialing);
    }
    // Each request's connection is let go now, not after the minute the relay waits for b.
    await waitUntil(() => connections() <= baseline, "the pipe requests let go", 20_000);
    assert.equal(relay.relay.stats.refused["pipe-timeout"] ?? 0, 0);
  } finally {
    await b.close();
  }
});

Deno.test("relay: frames a node sent after its refused hello (a ping on its way) are not counted as more refusals", async () => {
  await using relay = startRelay({ secret: "right" });
  using conn = await upgradedConn(relay.addr.port);
  await conn.write(
    new Uint8Array([
      ...textFrame(hello({ session: "s", nickname: "n", secret: "wrong" })),
      ...textFrame(JSON.stringify({ t: "ping" })),
      ...textFrame(JSON.stringify({ t: "msg", text: "x" })),
    ]),
  );
  // The relay closes the connection: read to its end.
  const buffer = new Uint8Array(4096);
  while ((await within(10_000, "the close", conn.read(buffer).catch(() => null))) !== null) {
    // the error frame and the close
  }
  assert.deepEqual(relay.relay.stats.refused, { secret: 1 });
});

Deno.test("relay pipes: a pipe request waiting to be paired when the relay closes is answered 503 unavailable (try again), not full", async () => {
  // Mounted in an app: the relay closes, the server that carries its answers goes on.
  const relay = new Relay({ authTimeout: 60_000 });
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) => relay.handle(req, info),
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  const b = await rawStreamNode(url, "p", "b");
  const a = await rawStreamNode(url, "p", "a");
  try {
    const answer = fetch(`${url}/relay/pipe`, {
      method: "POST",
      headers: {
        "x-relay-session": "p",
        "x-relay-nickname": "a",
        "x-relay-token": a.token,
        "x-relay-pipe": "waiting",
        "x-relay-pipe-to": "b",
        "x-immortal-link": "open",
      },
    });
    await within(10_000, "the offer", b.nextOf("pipe"));
    relay.close();
    const refused = await within(10_000, "the answer", answer);
    assert.equal(refused.status, 503);
    assert.equal((await refused.json()).error, "unavailable");
  } finally {
    relay.close();
    await a.close().catch(() => {});
    await b.close().catch(() => {});
  }
});
