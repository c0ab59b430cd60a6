/**
 * A RelayNode against a relay that misbehaves on purpose: floods of joins
 * and pipe offers, an endless event, a welcome and a close at once, an
 * endless refusal, text meant for a terminal. Each costs the node bounded
 * memory, connections and log lines, and what the relay says reaches logs
 * and errors escaped. And the end-to-end encryption through a relay cannot
 * be turned off.
 */

import assert from "node:assert/strict";
import { connect, ImmortalError, RelayConnectError, RelayNode, RelayRefusedError } from "../mod.ts";
import { MAX_ACCEPTS_IN_FLIGHT } from "../lib/relay/_node_pipes.ts";
import { MAX_MEMBERS, relayFrameBound } from "../lib/relay/_transport.ts";
import { spawnCli } from "./_cli_process.ts";
import { freePort, renderRecord, within, withLogs } from "./_helpers.ts";
import { recordEvents, startRelay, waitForEvent, welcomeAndDrop, welcomeFrame } from "./_relay.ts";

const encoder = new TextEncoder();

/** What joining the relay at `url` once (node `n` of session `s`) fails with. */
function joinFailure(url: string, transport: "websocket" | "http"): Promise<unknown> {
  return RelayNode.connect(url, { session: "s", nickname: "n", transport, retries: 1 })
    .then((node) => node.close(), (error) => error);
}

/**
 * A fake relay over WebSocket: `onHello(socket, n)` runs at the n-th hello
 * (1-based) and does what the test's relay does; `frames` holds what nodes
 * sent after their hellos. Other requests go to `other`, if given.
 */
function fakeRelay(
  onHello: (socket: WebSocket, n: number) => void,
  other?: (req: Request) => Response | Promise<Response>,
) {
  let hellos = 0;
  const frames: Record<string, unknown>[] = [];
  const sockets = new Set<WebSocket>();
  const heard = new Set<() => void>();
  const progress = () => {
    for (const wake of heard) wake();
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname !== "/relay/ws") {
      return other?.(req) ?? new Response("not here", { status: 404 });
    }
    const { socket, response } = Deno.upgradeWebSocket(req);
    sockets.add(socket);
    socket.onclose = () => sockets.delete(socket);
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.t === "hello") onHello(socket, ++hellos);
      else frames.push(frame);
      progress();
    };
    return response;
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    frames,
    get hellos() {
      return hellos;
    },
    /** Wakes `until`: `other` calls it on what it counts. */
    progress,
    /** Resolves once `condition` holds, checked at each frame a node sends and each `progress()`. */
    async until(condition: () => boolean): Promise<void> {
      while (!condition()) {
        await new Promise<void>((resolve) => {
          const wake = () => {
            heard.delete(wake);
            resolve();
          };
          heard.add(wake);
        });
      }
    },
    async [Symbol.asyncDispose]() {
      for (const socket of sockets) socket.close();
      await server.shutdown();
    },
  };
}

/**
 * Sends `count` frames made by `make(i)` on `socket`, as fast as the socket
 * drains (never more than a few MB queued); stops if the socket closes.
 */
async function flood(socket: WebSocket, count: number, make: (i: number) => string) {
  for (let i = 0; i < count && socket.readyState === WebSocket.OPEN;) {
    if (socket.bufferedAmount > 4 << 20) {
      await new Promise((resolve) => setTimeout(resolve, 1));
      continue;
    }
    for (const end = Math.min(count, i + 2000); i < end; i++) socket.send(make(i));
    // Lets the socket write and the node read.
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
}

Deno.test("RelayNode: a relay that floods joins of new nicknames past MAX_MEMBERS is dropped as broken, with its reason logged, and redialed with backoff; the member list stays bounded", async () => {
  const opened: number[] = [];
  const dropped = Promise.withResolvers<void>();
  await using relay = fakeRelay((socket, n) => {
    opened.push(performance.now());
    socket.send(welcomeFrame());
    if (n === 1) {
      socket.onclose = () => dropped.resolve();
      flood(
        socket,
        MAX_MEMBERS + 1,
        (i) => JSON.stringify({ t: "join", nickname: `m${i}`, role: "peer" }),
      );
    }
  });
  await withLogs(async (records) => {
    await using node = await RelayNode.connect(relay.url, {
      session: "s",
      nickname: "n",
      transport: "websocket",
      maxBufferedEvents: 10,
      backoff: { initial: 400, max: 400 },
    });
    const lost = await waitForEvent(
      node,
      "state",
      (event) => event.state === "disconnected",
      60_000,
    );
    assert.match(lost.reason!, new RegExp(`more than ${MAX_MEMBERS} members.*it is broken`));
    assert.ok(node.members.length <= MAX_MEMBERS, `${node.members.length} members`);
    await within(30_000, "the relay's socket closed", dropped.promise);
    await waitForEvent(node, "state", (event) => event.state === "connected", 30_000);
    // The relay's own doing: waited for (jittered to [0.5, 1) of 400 ms), not at once.
    assert.ok(opened[1] - opened[0] >= 200, `redialed after ${opened[1] - opened[0]} ms`);
    assert.equal(node.members.length, 0, "the new welcome's list");
    const lines = records.map(renderRecord);
    assert.ok(
      lines.some((l) => /^Relay link lost: the relay announced more than \d+ members/.test(l)),
      lines.join("\n"),
    );
  });
});

Deno.test("RelayNode: a welcome listing more than MAX_MEMBERS members fails the dial as a broken relay", async () => {
  const members = Array.from(
    { length: MAX_MEMBERS + 1 },
    (_, i) => ({ nickname: `m${i}`, role: "peer" }),
  );
  await using relay = fakeRelay((socket) => socket.send(welcomeFrame({ members })));
  const error = await joinFailure(relay.url, "websocket");
  assert.ok(error instanceof RelayConnectError, String(error));
  assert.equal(error.code, "broken");
  assert.match(error.message, new RegExp(`lists ${MAX_MEMBERS + 1} members, more than the`));
});

Deno.test("RelayNode.listen: a flood of pipe offers takes MAX_ACCEPTS_IN_FLIGHT at once and refuses the rest as busy, said once", async () => {
  const OFFERS = 200;
  // Pipe requests are held, never answered: each stays in flight.
  let dials = 0;
  const released = Promise.withResolvers<void>();
  let relaySocket: WebSocket | undefined;
  await using relay = fakeRelay(
    (socket) => {
      relaySocket = socket;
      socket.send(welcomeFrame());
    },
    async (req) => {
      if (new URL(req.url).pathname !== "/relay/pipe") return new Response(null, { status: 404 });
      dials++;
      relay.progress();
      await released.promise;
      return new Response("gone", { status: 503 });
    },
  );
  try {
    await withLogs(async (records) => {
      await using node = await RelayNode.connect(relay.url, {
        session: "s",
        nickname: "n",
        transport: "websocket",
      });
      using _listener = node.listen({ key: "k" });
      for (let i = 0; i < OFFERS; i++) {
        relaySocket!.send(JSON.stringify({ t: "pipe", id: `p${i}`, from: "evil" }));
      }
      const refused = () => relay.frames.filter((f) => f.t === "pipe-refuse");
      // Every offer answered: a dial, or a refusal.
      const answered = () => dials + refused().length >= OFFERS;
      await within(30_000, "every offer answered", relay.until(answered));
      assert.equal(dials, MAX_ACCEPTS_IN_FLIGHT);
      assert.equal(refused().length, OFFERS - MAX_ACCEPTS_IN_FLIGHT);
      assert.ok(refused().every((f) => f.reason === "busy"), JSON.stringify(refused()[0]));
      const said = records.map(renderRecord).filter((l) => /^Refused a pipe from evil/.test(l));
      assert.equal(said.length, 1, said.join("\n"));
    });
  } finally {
    released.resolve();
  }
});

Deno.test("RelayNode: a relay that welcomes and then closes normally (1000), again and again, is redialed with a growing backoff and a log line per interval", async () => {
  await using relay = welcomeAndDrop(1000, "bye");
  await withLogs(async (records) => {
    const started = performance.now();
    await using _node = await RelayNode.connect(relay.url, {
      session: "s",
      nickname: "n",
      transport: "websocket",
      backoff: { initial: 200, max: 1000 },
    });
    await within(30_000, "the fifth connection", relay.hello(5));
    const elapsed = performance.now() - started;
    // The first at once (a blip), then jittered to [0.5, 1) of 200, 400, 400
    // ms (never longer: the redial must come within the blip grace). Before,
    // every redial went at once: some 300 a second.
    const gaps = relay.gaps();
    assert.ok(gaps[1] >= 100 && gaps[2] >= 200 && gaps[3] >= 200, `gaps ${gaps.map(Math.round)}`);
    // A line, then a summary per 10 s: not a pair per connection.
    const lines = records.map(renderRecord);
    for (const kind of [/^Relay link lost: /, /^Relay link back as /]) {
      const said = lines.filter((l) => kind.test(l));
      assert.ok(said.length <= 2 + Math.floor(elapsed / 10_000), said.join("\n"));
    }
  });
});

Deno.test("RelayNode over HTTP streaming: an endless event fails the stream, the relay taken for broken, before it holds more than a frame's bound", async () => {
  const bound = relayFrameBound(65_536);
  let sent = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname !== "/relay/stream") return new Response(null, { status: 204 });
    const piece = encoder.encode("b".repeat(1 << 20));
    let first = true;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (first) {
          first = false;
          controller.enqueue(
            encoder.encode(`data: ${welcomeFrame({ stream: "st", maxMessageBytes: 65_536 })}\n\n`),
          );
          controller.enqueue(encoder.encode("data: "));
          return;
        }
        // Twice the bound at most: past it, the node must have given up.
        if (sent > 2 * bound) return controller.close();
        sent += piece.length;
        controller.enqueue(piece);
      },
    }, { highWaterMark: 0 });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  });
  try {
    await using node = await RelayNode.connect(`http://127.0.0.1:${server.addr.port}`, {
      session: "s",
      nickname: "n",
      transport: "http",
      retries: 1,
    });
    const lost = await waitForEvent(node, "state", (e) => e.state === "disconnected", 30_000);
    assert.match(lost.reason!, new RegExp(`an event longer than ${bound} bytes`));
  } finally {
    await server.shutdown();
  }
});

Deno.test("RelayNode over HTTP streaming: a refusal's body is read up to a bound, not whole", async () => {
  // A refusal that parses only whole: read whole, 16 MiB of reason came with it.
  const huge = `{"error":"unauthorized","message":"${"x".repeat(16 << 20)}"}`;
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response(huge, { status: 403 }),
  );
  try {
    const error = await joinFailure(`http://127.0.0.1:${server.addr.port}`, "http");
    assert.ok(error instanceof RelayConnectError, String(error).slice(0, 200));
    assert.equal(error.code, "not-a-relay");
  } finally {
    await server.shutdown();
  }
});

/** A control character: what escaping leaves none of. */
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f]/;

/** Text meant to drive a terminal and forge a log line. */
const ANSI = "\x1b[2J\x1b[31mred\x1b[0m\r\n2026-01-01T00:00:00.000Z info    Tunnel is up";
const ESCAPED = /^\\u001b\[2J\\u001b\[31mred\\u001b\[0m\\u000d\\u000a2026/;

Deno.test("RelayNode: a relay's text (refusals over both transports, close reasons, nicknames, error frames) comes out escaped", async () => {
  // Refused over WebSocket.
  {
    await using relay = fakeRelay((socket) => {
      socket.send(JSON.stringify({ t: "error", code: "unauthorized", message: ANSI }));
      socket.close(4001, "x");
    });
    const error = await joinFailure(relay.url, "websocket");
    assert.ok(error instanceof RelayRefusedError, String(error));
    assert.match(error.message, ESCAPED);
  }
  // Refused over HTTP streaming.
  {
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => Response.json({ error: "unauthorized", message: ANSI }, { status: 403 }),
    );
    try {
      const error = await joinFailure(`http://127.0.0.1:${server.addr.port}`, "http");
      assert.ok(error instanceof RelayRefusedError, String(error));
      assert.match(error.message, ESCAPED);
    } finally {
      await server.shutdown();
    }
  }
  // Welcomed under a nickname of its making; an error frame; a close reason.
  {
    await using relay = fakeRelay((socket, n) => {
      socket.send(welcomeFrame({ nickname: ANSI, members: [{ nickname: ANSI, role: "peer" }] }));
      if (n > 1) return;
      socket.send(JSON.stringify({ t: "join", nickname: `${ANSI}2`, role: "peer" }));
      socket.send(JSON.stringify({ t: "error", code: "bad-frame", message: ANSI }));
      socket.send(JSON.stringify({ t: "leave", nickname: ANSI, reason: "left" }));
      socket.close(4001, ANSI.slice(0, 60));
    });
    await withLogs(async (records) => {
      await using node = await RelayNode.connect(relay.url, {
        session: "s",
        nickname: "n",
        transport: "websocket",
        backoff: { initial: 1, max: 1 },
      });
      const events = recordEvents(node);
      assert.match(node.nickname, ESCAPED);
      const connected = () =>
        events.events.filter((e) => e.type === "state" && e.state === "connected").length;
      await events.until(() => connected() >= 2, "back");
      const seen = JSON.stringify(events.events);
      for (const event of events.events) {
        const texts = event.type === "join" || event.type === "leave"
          ? [event.nickname]
          : event.type === "error"
          ? [event.message]
          : event.type === "state"
          ? [event.reason ?? ""]
          : event.type === "members"
          ? event.members.map((m) => m.nickname)
          : [];
        for (const text of texts) assert.doesNotMatch(text, CONTROL, seen);
      }
      assert.ok(events.events.some((e) => e.type === "error" && ESCAPED.test(e.message)), seen);
      const lines = records.map(renderRecord);
      assert.ok(lines.some((l) => l.startsWith("Relay link lost: \\u001b[2J")), lines.join("\n"));
      for (const line of lines) assert.doesNotMatch(line, CONTROL);
      await node.close();
      await events.done();
    });
  }
});

Deno.test("RelayNode.connectTo and listen: encryption through a relay is always on; encrypt: false is refused, undefined means on", async () => {
  await using relay = startRelay();
  await using lab = await RelayNode.connect(relay.url, { session: "s", nickname: "lab" });
  await using laptop = await RelayNode.connect(relay.url, { session: "s", nickname: "laptop" });
  const off = { key: "k", encrypt: false } as unknown as { key: string };
  assert.throws(
    () => lab.listen(off),
    (error: Error) =>
      error instanceof TypeError &&
      /^encrypt must be true or left out through a relay, got false \(a boolean\): sessions through a relay are always encrypted end to end/
        .test(error.message),
  );
  await assert.rejects(
    laptop.connectTo("lab", off),
    (error: Error) =>
      error instanceof TypeError &&
      /encrypt must be true or left out through a relay/.test(error.message),
  );
  // `encrypt: undefined`, as an options object forwarded from a setting left out, means on.
  const unset = { key: "k", encrypt: undefined };
  using listener = lab.listen(unset);
  // A client that does not encrypt (it must say so) is refused: the listener
  // takes encrypted sessions only.
  await assert.rejects(
    connect({ dialer: laptop.pipeDialer("lab"), key: "k", encrypt: false }),
    (error: Error) =>
      error instanceof ImmortalError && /encrypted sessions only/.test(error.message),
  );
  // One that leaves it unset is encrypted, which the listener takes.
  await using conn = await laptop.connectTo("lab", unset);
  await using server = await listener.accept();
  await conn.write(encoder.encode("sealed"));
  const buffer = new Uint8Array(16);
  const n = await server.read(buffer);
  assert.equal(new TextDecoder().decode(buffer.subarray(0, n!)), "sealed");
});

Deno.test("tunnel CLI: --encrypt without a key warns once, at start, that the encryption is unauthenticated", async () => {
  const cli = new URL("../cli/tunnel.ts", import.meta.url).pathname;
  const port = freePort();
  const server = freePort();
  const client = spawnCli(
    [`--allow-net=127.0.0.1:${port},127.0.0.1:${server}`],
    cli,
    ["client", String(port), "127.0.0.1", String(server), "--encrypt"],
  );
  try {
    await client.waitFor(/Tunnel client on/, "client start");
    await client.waitFor(
      /warning\s+--encrypt without a key is unauthenticated: an active man in the middle can read and change/,
      "the warning",
    );
  } finally {
    assert.equal(await client.stop(), 0, client.log);
  }
  assert.equal(client.log.match(/--encrypt without a key/g)?.length, 1, client.log);
});
