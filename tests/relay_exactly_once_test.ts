/**
 * Relay messages as immortal as the streams (issue #12): numbered messages
 * both ways through links that are reset, a node away longer than the
 * history, and a relay killed and restarted mid-exchange. Faults fire by
 * bytes forwarded or by messages received, never by a timer.
 */

import assert from "node:assert/strict";
import { type RelayEvent, RelayNode, type RelayNodeOptions } from "../mod.ts";
import { spawnCli } from "./_cli_process.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { freePort, within } from "./_helpers.ts";
import { recordEvents, startRelay } from "./_relay.ts";

const CLI = new URL("../cli/relay.ts", import.meta.url).pathname;
const COUNT = 400;
/** Sends a flush at this interval: the exchange runs in rounds, so faults land between them too. */
const ROUND = 20;

/** Sends `1`..`count` from `node` (broadcast), a round at a time, until the relay has them all. */
async function sendNumbered(node: RelayNode, count: number, from = 1): Promise<void> {
  for (let i = from; i <= count; i++) {
    node.send(String(i));
    if (i % ROUND === 0) await node.flush();
  }
  await node.flush();
}

/** The numbers a recorder received, in order. */
function numbers(texts: string[]): number[] {
  return texts.map(Number).filter((n) => Number.isInteger(n));
}

/**
 * x through a fault proxy and y straight to `relay`, joined to one session,
 * each with its event record; closed (proxy too) when disposed.
 */
async function pairBehindProxy(
  relay: { addr: Deno.NetAddr; url: string },
  options: Omit<RelayNodeOptions, "nickname">,
) {
  const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
  const x = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
    ...options,
    nickname: "x",
  });
  const y = await RelayNode.connect(relay.url, { ...options, nickname: "y" });
  const atX = recordEvents(x);
  const atY = recordEvents(y);
  await atX.until(() => x.members.some((m) => m.nickname === "y"), "y joining");
  return {
    proxy,
    x,
    y,
    atX,
    atY,
    async [Symbol.asyncDispose]() {
      await x.close();
      await y.close();
      await proxy.close();
    },
  };
}

/** Joins and leaves that name `nickname`: a blip must not show. */
function presence(events: RelayEvent[], nickname: string): RelayEvent[] {
  return events.filter((e) => (e.type === "join" || e.type === "leave") && e.nickname === nickname);
}

for (const transport of ["websocket", "http"] as const) {
  Deno.test(`relay (${transport}): ${COUNT} numbered messages each way while x's link is reset again and again: none lost, none twice, in order; nobody hears x leave`, async () => {
    // The grace is wide on purpose: this test is about resets, not about how
    // fast a busy machine reconnects.
    await using relay = startRelay({ rate: 100_000, keepAlive: 1000, fadeAfter: 60_000 });
    await using pair = await pairBehindProxy(relay, {
      session: "s",
      transport,
      backoff: { initial: 10, max: 100 },
      retries: 50,
    });
    const { proxy, x, y, atX, atY } = pair;
    // A reset each time another 1,500 bytes went up from x: every few rounds.
    using cutter = proxy.cutEvery({
      bytes: 1500,
      max: 12,
      when: () => x.state === "connected",
    });
    await within(
      60_000,
      "sending",
      Promise.all([sendNumbered(x, COUNT), sendNumbered(y, COUNT)]),
    );
    const expected = Array.from({ length: COUNT }, (_, i) => i + 1);
    await atY.until(() => numbers(atY.texts).length >= COUNT, "y receiving all");
    await atX.until(() => numbers(atX.texts).length >= COUNT, "x receiving all");
    const resets = cutter.stop();
    assert.ok(resets >= 3, `only ${resets} resets hit x's link`);
    assert.deepEqual(numbers(atY.texts), expected);
    assert.deepEqual(numbers(atX.texts), expected);
    assert.deepEqual(presence(atY.events, "x"), [], "y heard x leave or join");
    assert.ok(!atX.events.some((e) => e.type === "missed" || e.type === "error"));
    assert.ok(relay.relay.stats.replayed + relay.relay.stats.duplicates > 0, "no fault mattered");
  });
}

Deno.test("relay: a node away for longer than the history holds is told it missed messages (missed: window), then goes on", async () => {
  await using relay = startRelay({ historyLength: 5, keepAlive: 1000, fadeAfter: 60_000 });
  const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
  const options = { session: "s", backoff: { initial: 10, max: 100 }, retries: 50 };
  await using x = await RelayNode.connect(relay.url, { ...options, nickname: "x" });
  await using y = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
    ...options,
    nickname: "y",
  });
  const atY = recordEvents(y);
  await atY.until(() => y.members.length === 1, "x in y's members");
  // y's link goes down and stays down while x sends more than the history holds.
  proxy.refuseNew(true);
  proxy.reset();
  await atY.until(() => y.state === "disconnected", "y noticing");
  await within(30_000, "sending", sendNumbered(x, 10));
  assert.equal(relay.relay.stats.historyMessages, 5);
  proxy.refuseNew(false);
  await atY.until(() => atY.events.some((e) => e.type === "missed"), "the missed event");
  const missed = atY.events.find((e) => e.type === "missed");
  assert.deepEqual(missed, { type: "missed", reason: "window" });
  // What the history still holds (the last 5) comes with the news; then what follows.
  x.send("after");
  await atY.until(() => atY.texts.includes("after"), "y hearing what follows");
  assert.deepEqual(atY.texts, ["6", "7", "8", "9", "10", "after"]);
  await proxy.close();
});

Deno.test("relay restarted while a node is away: what its sender resends before it is back waits for it (rejoin grace); nothing is lost", async () => {
  // A long grace: the test waits on events, never on the clock.
  const settings = { rejoinGrace: 120_000, keepAlive: 1000, fadeAfter: 60_000 };
  let relay = startRelay(settings);
  const port = relay.addr.port;
  const proxy = await FaultProxy.start({ targetPort: port });
  const options = { session: "s", backoff: { initial: 10, max: 100 } };
  const x = await RelayNode.connect(relay.url, { ...options, nickname: "x" });
  const y = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
    ...options,
    nickname: "y",
  });
  const atX = recordEvents(x);
  const atY = recordEvents(y);
  try {
    await atX.until(() => x.members.length === 1, "y joining");
    await sendNumbered(x, 10);
    await atY.until(() => atY.texts.length === 10, "y hearing the first ten");
    // The relay goes, and y stays away until x has come back and resent.
    proxy.refuseNew(true);
    await relay.shutdown();
    await atX.until(() => x.state === "disconnected", "x noticing");
    for (let i = 11; i <= 20; i++) x.send(String(i));
    x.sendTo("y", "for y");
    relay = startRelay({ ...settings, port });
    await within(30_000, "x's messages taken by the new relay", x.flush());
    assert.deepEqual(x.members, [], "x came back first, alone");
    const refused = atX.events.filter((e) => e.type === "error");
    assert.deepEqual(refused, [], "nothing x resent was refused");
    // y comes back: told the history was lost, then given what waited for it.
    proxy.refuseNew(false);
    await atY.until(() => atY.texts.includes("for y"), "y hearing what waited");
    const expected = [...Array.from({ length: 20 }, (_, i) => String(i + 1)), "for y"];
    assert.deepEqual(atY.texts, expected);
    assert.ok(atY.events.some((e) => e.type === "missed" && e.reason === "epoch"));
    // Once the grace is over a lone sender is told again; here y is back, so it hears it.
    x.send("live");
    await atY.until(() => atY.texts.includes("live"), "y hearing x live");
  } finally {
    await x.close();
    await y.close();
    await proxy.close();
    await relay.shutdown();
  }
});

Deno.test("a node whose suffixed nickname another node holds after a relay restart comes back under the name it wanted, losing nothing", async () => {
  const settings = { rejoinGrace: 120_000, keepAlive: 1000, fadeAfter: 60_000 };
  let relay = startRelay(settings);
  const port = relay.addr.port;
  const proxy = await FaultProxy.start({ targetPort: port });
  const options = { session: "s", backoff: { initial: 10, max: 100 } };
  const first = await RelayNode.connect(relay.url, { ...options, nickname: "x" });
  const second = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
    ...options,
    nickname: "x",
  });
  assert.equal(second.nickname, "x(1)");
  const atSecond = recordEvents(second);
  const others: RelayNode[] = [];
  try {
    await first.close();
    // The relay restarts while `second` is kept away; two other nodes take x and x(1).
    proxy.refuseNew(true);
    await relay.shutdown();
    await atSecond.until(() => second.state === "disconnected", "second noticing");
    second.send("sent while away");
    relay = startRelay({ ...settings, port });
    for (let i = 0; i < 2; i++) {
      others.push(await RelayNode.connect(relay.url, { ...options, nickname: "x" }));
    }
    assert.deepEqual(others.map((node) => node.nickname), ["x", "x(1)"]);
    const heard = recordEvents(others[0]);
    proxy.refuseNew(false);
    await within(30_000, "second's message taken", second.flush());
    assert.equal(second.nickname, "x(2)");
    assert.equal(second.state, "connected");
    await heard.until(() => heard.texts.includes("sent while away"), "x hearing it");
  } finally {
    for (const node of others) await node.close();
    await second.close();
    await proxy.close();
    await relay.shutdown();
  }
});

Deno.test("a node paces itself to the rate the relay takes: a backlog (sent while away) arrives whole, nothing refused rate-limited", async () => {
  const settings = { rate: 50, keepAlive: 1000, fadeAfter: 60_000 };
  await using relay = startRelay(settings);
  const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
  const options = { session: "s", backoff: { initial: 10, max: 100 } };
  await using y = await RelayNode.connect(relay.url, { ...options, nickname: "y" });
  await using x = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
    ...options,
    nickname: "x",
  });
  const atX = recordEvents(x);
  const atY = recordEvents(y);
  try {
    await atY.until(() => y.members.length === 1, "x joining");
    // Away, x queues three times what the relay's burst (2 x 50) would take at once.
    proxy.refuseNew(true);
    proxy.reset();
    await atX.until(() => x.state === "disconnected", "x noticing");
    for (let i = 1; i <= 300; i++) x.send(String(i));
    proxy.refuseNew(false);
    // And its link is reset three times while it drains the backlog: the relay
    // keeps a member's allowance across its reconnects, so must the node.
    for (const heard of [60, 120, 180]) {
      await atY.until(() => atY.texts.length >= heard, `y hearing ${heard}`);
      proxy.reset();
    }
    await within(60_000, "x's backlog taken", x.flush());
    await atY.until(() => atY.texts.length >= 300, "y hearing all 300");
    assert.deepEqual(numbers(atY.texts), Array.from({ length: 300 }, (_, i) => i + 1));
    const refused = atX.events.filter((e) => e.type === "error");
    assert.deepEqual(refused, [], "nothing refused");
    // flush waits for what was sent before it, not for what is sent after.
    for (let i = 301; i <= 400; i++) x.send(String(i));
    const flushed = x.flush();
    for (let i = 401; i <= 600; i++) x.send(String(i));
    await within(60_000, "the flush of 301-400", flushed);
    assert.ok(x.unacked > 0, "the flush waited for messages sent after it");
  } finally {
    await proxy.close();
  }
});

Deno.test("relay CLI SIGKILLed and restarted while two nodes exchange numbered messages: each arrives once and in order, or its sender hears it went nowhere, or its receiver hears the history was lost", async () => {
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = ["--open", "--hostname", "127.0.0.1", "--port", String(port), "--rate", "100000"];
  const start = async () => {
    const relay = spawnCli([`--allow-net=127.0.0.1:${port}`], CLI, args);
    await relay.waitFor(/Relay listening on/, "the relay starting");
    return relay;
  };
  let relay = await start();
  const options = { session: "s", backoff: { initial: 10, max: 200 }, retries: 50 };
  const x = await RelayNode.connect(url, { ...options, nickname: "x" });
  const y = await RelayNode.connect(url, { ...options, nickname: "y" });
  const atX = recordEvents(x);
  const atY = recordEvents(y);
  try {
    await atX.until(() => x.members.length === 1, "y joining");
    const sending = Promise.all([sendNumbered(x, COUNT), sendNumbered(y, COUNT)]);
    // Killed mid-exchange, when y has heard a quarter of x's messages.
    await atY.until(() => atY.texts.length >= COUNT / 4, "a quarter of the exchange");
    assert.equal(await relay.stop("SIGKILL"), 137);
    relay = await start();
    await within(60_000, "sending", sending);
    // Both back and in the same room: a last message each way closes the exchange.
    await atX.until(() => x.state === "connected" && x.members.length === 1, "x seeing y again");
    await atY.until(() => y.state === "connected" && y.members.length === 1, "y seeing x again");
    x.send("end");
    y.send("end");
    await atX.until(() => atX.texts.includes("end"), "x hearing the end");
    await atY.until(() => atY.texts.includes("end"), "y hearing the end");
    for (const [sender, receiver] of [[atX, atY], [atY, atX]]) {
      const got = numbers(receiver.texts);
      // Once each, in order.
      assert.deepEqual(got, [...got].sort((a, b) => a - b), "out of order");
      assert.equal(new Set(got).size, got.length, "a message arrived twice");
      // Every one that did not arrive is accounted for: its sender heard it
      // went nowhere, or the receiver heard, at that point, that the
      // relay's history was lost.
      const dropped = new Set(
        sender.events.flatMap((e) => e.type === "error" && e.code === "alone" ? [e.seq] : []),
      );
      const stream = receiver.events.filter((e) => e.type === "message" || e.type === "missed");
      for (let n = 1; n <= COUNT; n++) {
        if (got.includes(n) || dropped.has(n)) continue;
        const before = stream.findLastIndex((e) => e.type === "message" && Number(e.text) < n);
        const after = stream.findIndex((e) => e.type === "message" && Number(e.text) > n);
        const between = stream.slice(before + 1, after === -1 ? undefined : after);
        assert.ok(
          between.some((e) => e.type === "missed" && e.reason === "epoch"),
          `message ${n} was lost silently`,
        );
      }
    }
  } finally {
    await x.close();
    await y.close();
    assert.equal(await relay.stop(), 0, relay.log);
  }
});

Deno.test("a node drops what it has already (a replayed offset; the same sender id and seq after a relay restart), resends what was not acknowledged, and says where it is when it reconnects", async () => {
  // A relay scripted frame by frame, so that each case happens for certain.
  const hellos: Record<string, unknown>[] = [];
  const received: Record<string, unknown>[] = [];
  const acked = Promise.withResolvers<void>();
  const welcome = { t: "welcome", session: "s", role: "peer", members: [], keepAlive: 60_000 };
  const msg = (offset: number, seq: number) => ({
    t: "msg",
    from: "x",
    offset,
    id: "node-x",
    seq,
    text: String(seq),
  });
  const scripts = [
    (_socket: WebSocket) => [
      { ...welcome, nickname: "y", token: "t1", epoch: "e1", offset: 0, acked: 0 },
      msg(1, 1),
      msg(1, 1), // the same offset again: a replay it has
      msg(2, 1), // a resend the relay did not catch
      msg(3, 2),
    ],
    (socket: WebSocket) => [
      // A relay that restarted: a new epoch; offsets start again.
      { ...welcome, nickname: "y", token: "t2", epoch: "e2", offset: 0, acked: 0 },
      ...[msg(1, 2), msg(2, 3)],
      () => socket.send(JSON.stringify({ t: "ack", seq: 1 })),
    ],
  ];
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    const script = scripts[hellos.length];
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.t === "hello") {
        hellos.push(frame);
        for (const step of script(socket)) {
          if (typeof step === "function") step();
          else socket.send(JSON.stringify(step));
        }
      } else if (frame.t === "msg") {
        received.push(frame);
        // The first relay takes y's message, then dies before it acknowledges it.
        if (hellos.length === 1) socket.close(1011, "scripted");
        else acked.resolve();
      }
    };
    return response;
  });
  const y = await RelayNode.connect(`http://127.0.0.1:${server.addr.port}`, {
    session: "s",
    nickname: "y",
    transport: "websocket",
    backoff: { initial: 0, max: 10 },
  });
  const atY = recordEvents(y);
  try {
    const seq = y.send("from y");
    await atY.until(() => atY.texts.length >= 3, "y hearing three messages");
    assert.deepEqual(atY.texts, ["1", "2", "3"]);
    assert.ok(atY.events.some((e) => e.type === "missed" && e.reason === "epoch"));
    // Where it was: the last offset it had under the first epoch.
    assert.deepEqual(hellos[1].recover, { epoch: "e1", offset: 3 });
    assert.equal(hellos[0].id, hellos[1].id, "the node's id changed");
    // Its message went to both relays: the first never acknowledged it.
    await within(10_000, "the resend", acked.promise);
    assert.deepEqual(received.map((m) => m.seq), [seq, seq]);
    await within(10_000, "the ack", y.flush());
    assert.equal(y.unacked, 0);
  } finally {
    await y.close();
  }
});

for (const transport of ["websocket", "http"] as const) {
  Deno.test(`relay (${transport}): messages waiting for their ack on a link gone silent make the node reconnect in seconds, not after 3 keep-alives; each arrives once`, async () => {
    // The relay's default keep-alive (10 s): the keep-alive alone would take 30 s to notice.
    await using relay = startRelay({ fadeAfter: 60_000 });
    await using pair = await pairBehindProxy(relay, {
      session: "q",
      transport,
      backoff: { initial: 10, max: 100 },
    });
    const { proxy, x, atX, atY } = pair;
    x.send("1");
    await x.flush(); // acknowledged: the link works
    assert.ok(proxy.blackhole() > 0);
    const silencedAt = atX.events.length;
    x.send("2");
    // Well under the keep-alive's 30 s; the node's own deadline is 2 s of silence.
    await atX.until(
      () => atX.events.slice(silencedAt).some((e) => e.type === "state" && e.state === "connected"),
      "x back on a new link",
      20_000,
    );
    const lost = atX.events.slice(silencedAt).find((e) =>
      e.type === "state" && e.state === "disconnected"
    );
    assert.match(
      lost?.type === "state" ? lost.reason ?? "" : "",
      /unacknowledged, and no answer to a ping/,
    );
    await within(20_000, "x's flush", x.flush());
    await atY.until(() => numbers(atY.texts).length >= 2, "y receiving both");
    assert.deepEqual(numbers(atY.texts), [1, 2]);
  });
}
