/**
 * What `RelayNode.connect` refuses before it dials: settings it acts on
 * itself, each named with its value; and a relay it may not reach for lack
 * of a permission, said as a `RelayConnectError` like every other failure
 * to reach it.
 */

import assert from "node:assert/strict";
import { configure, reset } from "@logtape/logtape";
import { Relay, RelayConnectError, RelayNode, type RelayNodeOptions } from "../mod.ts";
import { renderRecord, waitUntil, within, withLogs } from "./_helpers.ts";
import { recordEvents, startRelay } from "./_relay.ts";

Deno.test("RelayNode.connect refuses bad settings by name, before it dials", async () => {
  // Anything dialed here is counted (and cut): none may be.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let dialed = 0;
  const accepting = (async () => {
    for await (const conn of listener) {
      dialed++;
      conn.close();
    }
  })();
  const url = `http://127.0.0.1:${listener.addr.port}`;
  const cases: [Record<string, unknown>, typeof TypeError | typeof RangeError, RegExp][] = [
    [
      { transport: "carrier-pigeon" },
      TypeError,
      /^transport must be "auto", "websocket" or "http", got "carrier-pigeon" \(a string\)$/,
    ],
    [{ maxUnacked: 0 }, RangeError, /^maxUnacked must be an integer >= 1, got 0$/],
    [{ maxUnacked: 1.5 }, RangeError, /^maxUnacked must be an integer >= 1, got 1\.5$/],
    [{ connectTimeout: -1 }, RangeError, /^connectTimeout must be a number >= 1, got -1$/],
    [
      { connectTimeout: "100" },
      TypeError,
      /^connectTimeout must be a number >= 1, got "100" \(a string\)$/,
    ],
    [
      { connectTimeout: 1e10 },
      RangeError,
      /^connectTimeout must be at most 2147483647 ms, got 10000000000$/,
    ],
    [{ retries: -1 }, RangeError, /^retries must be an integer >= 0, got -1$/],
    [{ retries: "3" }, TypeError, /^retries must be an integer >= 0, got "3" \(a string\)$/],
    [{ backoff: { initial: -5 } }, RangeError, /^backoff\.initial must be a number >= 0, got -5$/],
    [
      { backoff: { initial: 500, max: 100 } },
      RangeError,
      /^backoff\.max must be a number >= 500, got 100$/,
    ],
    [{ backoff: "fast" }, TypeError, /^backoff must be an object, got "fast" \(a string\)$/],
    [
      { claim: "too short" },
      TypeError,
      // A secret: never echoed.
      /^claim must be 22-128 characters of A-Z, a-z, 0-9, - and _, got 9 characters$/,
    ],
    [{ maxBufferedEvents: 0 }, RangeError, /^maxBufferedEvents must be an integer >= 1, got 0$/],
  ];
  try {
    for (const [options, expected, message] of cases) {
      const what = JSON.stringify(options);
      // A short timeout and one attempt: a setting let through fails fast, not in 30 s.
      const settings = { session: "s", nickname: "n", connectTimeout: 500, retries: 1, ...options };
      await assert.rejects(
        within(5000, what, RelayNode.connect(url, settings as RelayNodeOptions)),
        (error) => {
          assert.ok(error instanceof expected, `${what}: ${error}`);
          assert.match(error.message, message, what);
          return true;
        },
      );
    }
    assert.equal(dialed, 0, "connections made");
  } finally {
    listener.close();
    await accepting.catch(() => {});
  }
});

Deno.test("RelayNode.connect takes the edge values it allows: no retries, no backoff, one message in flight", async () => {
  await using relay = startRelay();
  await using node = await RelayNode.connect(relay.url, {
    session: "s",
    nickname: "n",
    retries: 0,
    backoff: { initial: 0, max: 0 },
    maxUnacked: 1,
    maxBufferedEvents: 1,
    transport: "auto",
  });
  assert.equal(node.state, "connected");
});

Deno.test({
  name:
    "RelayNode.connect without net permission for the relay rejects with a RelayConnectError that says so, at once",
  // Meaningful only under the suite's --allow-net list, which leaves 127.0.0.200 out.
  ignore: Deno.permissions.querySync({ name: "net", host: "127.0.0.200:8" }).state === "granted",
}, async () => {
  for (const transport of ["auto", "websocket", "http"] as const) {
    const error = await within(
      5000,
      transport,
      RelayNode.connect("http://127.0.0.200:8", { session: "s", nickname: "n", transport }),
    ).then(
      () => assert.fail(`${transport}: joined`),
      (error: unknown) => error,
    );
    assert.ok(error instanceof RelayConnectError, `${transport}: ${error}`);
    assert.equal(error.code, "unreachable");
    assert.match(
      error.message,
      /^no permission to connect to 127\.0\.0\.200:8: Requires net access to "127\.0\.0\.200:8"/,
    );
    assert.ok(error.cause instanceof Deno.errors.NotCapable, `${transport}: ${error.cause}`);
  }
});

Deno.test("RelayNode.send: a message the relay would refuse as too large is refused at once, before it is numbered (it waited unacknowledged, and flush for ever); text must be text", async () => {
  for (const transport of ["websocket", "http"] as const) {
    await using relay = startRelay({ maxMessageBytes: 1000 });
    await using node = await RelayNode.connect(relay.url, {
      session: "s",
      nickname: "n",
      transport,
    });
    await using _peer = await RelayNode.connect(relay.url, { session: "s", nickname: "p" });
    assert.throws(
      () => node.send("x".repeat(2000)),
      (e: unknown) =>
        e instanceof RangeError &&
        /^the message is \d+ bytes as a frame; the relay takes at most 1000$/.test(e.message),
    );
    // 200 characters, but 1,200 bytes as JSON escapes them: measured as sent.
    assert.throws(() => node.send("\u0001".repeat(200)), RangeError);
    assert.throws(() => node.sendNumbers(Array(60).fill(-1.2345678901234567e-300)), RangeError);
    assert.equal(node.unacked, 0);
    const seq = node.send("fits");
    assert.equal(seq, 1, "the refused one took no number");
    await within(30_000, "flush", node.flush());
    for (const wrong of [undefined, {}, 42]) {
      assert.throws(
        () => node.send(wrong as unknown as string),
        /a message's text must be a string, got /,
      );
      assert.throws(
        () => node.sendTo("p", wrong as unknown as string),
        /a message's text must be a string/,
      );
    }
  }
});

Deno.test("RelayNode: a slow events reader loses the oldest past maxBufferedEvents, counted in droppedEvents and said once in the log, not in silence", async () => {
  await using relay = startRelay();
  await using reader = await RelayNode.connect(relay.url, {
    session: "s",
    nickname: "slow",
    maxBufferedEvents: 5,
  });
  await using sender = await RelayNode.connect(relay.url, { session: "s", nickname: "fast" });
  const logged = await withLogs(async (records) => {
    for (let i = 0; i < 20; i++) sender.send(`m${i}`);
    await within(30_000, "the relay taking them", sender.flush());
    // 23 events for the reader: its state (connected), the members of its
    // welcome, fast's join, and the 20 messages; it keeps the last 5. Waiting
    // for all 18 to be dropped is waiting for m19 to be in.
    await waitUntil(() => reader.droppedEvents === 18, "the reader's buffer overflowing");
    return records;
  });
  const texts: string[] = [];
  for await (const event of reader.events) {
    if (event.type === "message") texts.push(event.text);
    if (texts.at(-1) === "m19") break;
  }
  assert.deepEqual(texts, ["m15", "m16", "m17", "m18", "m19"]);
  assert.equal(reader.droppedEvents, 18);
  const warnings = logged.filter((r) =>
    /events reader is more than 5 events behind/.test(renderRecord(r))
  );
  assert.equal(warnings.length, 1, "said once");
});

Deno.test("RelayNode: a relay down for many attempts is said once and summarised, not a line per attempt and transport; its return says how long it took and how many attempts", async () => {
  // Shut down in the middle; disposed of too, should an assertion fail before.
  await using relay = startRelay();
  const port = relay.addr.port;
  await withLogs(async (records) => {
    await using node = await RelayNode.connect(relay.url, {
      session: "s",
      nickname: "n",
      backoff: { initial: 1, max: 5 },
    });
    const events = recordEvents(node);
    const failedAttempts = () =>
      events.events.filter((e) => e.type === "state" && e.state === "disconnected").length - 1;
    const down = performance.now();
    await relay.shutdown();
    await events.until(() => failedAttempts() >= 8, "eight failed attempts");
    await using _back = startRelay({ port });
    const lines = () => records.filter((r) => r.level !== "debug").map(renderRecord);
    await waitUntil(() => lines().some((l) => l.startsWith("Relay link back")), "the link back");
    const elapsed = performance.now() - down;
    // Every transport's failure is there, at debug level only.
    assert.ok(records.some((r) => r.level === "debug" && /transport failed/.test(renderRecord(r))));
    assert.deepEqual(lines().filter((l) => /transport failed/.test(l)), []);
    // The first attempt's line, then at most a summary per 10 s.
    const said = lines().filter((l) => /Relay link not back yet: /.test(l));
    assert.ok(said.length >= 1 && said.length <= 2 + Math.floor(elapsed / 10_000), said.join("\n"));
    assert.match(said[0], /^Relay link not back yet: .*127\.0\.0\.1:\d+.*; trying again$/);
    const back = lines().find((l) => l.startsWith("Relay link back"))!;
    const attempts = Number(/and (\d+) attempts$/.exec(back)?.[1]);
    assert.ok(attempts >= 9, back);
    assert.match(back, /^Relay link back as n via websocket after \d+\.\d s and \d+ attempts$/);
  });
});

Deno.test("RelayNode.events: two readers at once share the events, neither waits for ever (a second reader took the first one's place, and the first waited for ever)", async () => {
  await using relay = startRelay();
  await using node = await RelayNode.connect(relay.url, { session: "s", nickname: "n" });
  await using other = await RelayNode.connect(relay.url, { session: "s", nickname: "o" });
  const iterators = [0, 1].map(() => node.events[Symbol.asyncIterator]());
  const heard: string[] = [];
  const reading = iterators.map(async (iterator) => {
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      if (next.value.type === "message") heard.push(next.value.text);
    }
  });
  for (let i = 0; i < 10; i++) other.send(`m${i}`);
  await within(30_000, "other's messages flushed", other.flush());
  await waitUntil(() => heard.length === 10, "all ten read, by one reader or the other");
  await node.close();
  await within(30_000, "both readers ending", Promise.all(reading));
  assert.deepEqual([...heard].sort(), Array.from({ length: 10 }, (_, i) => `m${i}`).sort());
});

Deno.test("RelayNode.connect aborted just as the welcome came (late): rejects with the signal's reason, the node closed and its HTTP client let go once (a second close threw BadResource instead)", async () => {
  // A relay whose WebSocket endpoint is away: the node falls back to HTTP
  // streaming, and says so (info) between that welcome and connect's return.
  const relay = new Relay();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) =>
      new URL(req.url).pathname === "/relay/ws"
        ? new Response("no WebSockets here", { status: 404 })
        : relay.handle(req, info),
  );
  const abort = new AbortController();
  const reason = new Error("given up");
  // That line is the moment: the transport is open, the welcome in, connect
  // not yet returned. Aborted there, synchronously, connect takes the late path.
  let aborted = 0;
  await configure({
    reset: true,
    sinks: {
      abort: (record) => {
        if (
          record.level === "info" &&
          /transport failed: [^]*; using http$/.test(renderRecord(record))
        ) {
          aborted++;
          abort.abort(reason);
        }
      },
    },
    loggers: [
      { category: ["immortal", "relay", "node"], lowestLevel: "info", sinks: ["abort"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
    ],
  });
  try {
    const connecting = RelayNode.connect(`http://127.0.0.1:${server.addr.port}`, {
      session: "s",
      nickname: "late",
      // Only a proxy or CA certificates give the node an HTTP client of its own.
      caCerts: [],
      retries: 1,
      signal: abort.signal,
    });
    await assert.rejects(
      within(30_000, "connect", connecting),
      (error) => {
        assert.equal(error, reason, `rejected with ${error}`);
        return true;
      },
    );
    assert.equal(aborted, 1, "aborted once, after the welcome over HTTP streaming");
    // The node joined, then left: the relay counted the join and holds no member.
    assert.equal(relay.stats.joins, 1);
    await waitUntil(() => relay.stats.nodes === 0, "the node gone from the relay");
  } finally {
    await reset();
    relay.close();
    await server.shutdown();
  }
});
