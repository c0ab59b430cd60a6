/**
 * The old TcpJLib rules, each as a test, over both transports where it matters.
 */

import assert from "node:assert/strict";
import { RelayNode, type RelayTransportKind } from "../mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { recordEvents, startRelay, waitForEvent } from "./_relay.ts";
import { makeTestCerts } from "./_tls.ts";

const TRANSPORTS: RelayTransportKind[] = ["websocket", "http"];

for (const transport of TRANSPORTS) {
  Deno.test(`relay (${transport}): a nickname clash gives max(1), max(2); joins are announced with a member snapshot`, async () => {
    await using relay = startRelay();
    const opts = { session: "lab", nickname: "max", transport };
    await using a = await RelayNode.connect(relay.url, opts);
    await using b = await RelayNode.connect(relay.url, opts);
    await using c = await RelayNode.connect(relay.url, opts);
    assert.deepEqual([a.nickname, b.nickname, c.nickname], ["max", "max(1)", "max(2)"]);
    assert.deepEqual(c.members.map((m) => m.nickname).sort(), ["max", "max(1)"]);
    assert.equal((await waitForEvent(a, "join")).nickname, "max(1)");
    assert.equal((await waitForEvent(a, "join")).nickname, "max(2)");
    // Another session is another namespace.
    await using other = await RelayNode.connect(relay.url, { ...opts, session: "other" });
    assert.equal(other.nickname, "max");
  });

  Deno.test(`relay (${transport}): a message sent while alone is dropped, not buffered; directed messages reach only their target`, async () => {
    await using relay = startRelay();
    await using alone = await RelayNode.connect(relay.url, {
      session: "s",
      nickname: "a",
      transport,
    });
    const seq = alone.send("nobody hears this");
    // Dropped, and its sender told which message went nowhere.
    assert.deepEqual(await waitForEvent(alone, "error"), {
      type: "error",
      code: "alone",
      message: "nobody else in the session hears it: dropped",
      seq,
    });
    const directed = alone.sendTo("nobody", "x");
    const refused = await waitForEvent(alone, "error");
    assert.deepEqual([refused.code, refused.seq], ["no-such-node", directed]);
    await alone.flush();
    await using b = await RelayNode.connect(relay.url, { session: "s", nickname: "b", transport });
    await using c = await RelayNode.connect(relay.url, { session: "s", nickname: "c", transport });
    await waitForEvent(alone, "join", (e) => e.nickname === "c");
    alone.sendTo("c", "only for c");
    alone.send("for everyone");
    const first = await waitForEvent(b, "message");
    assert.equal(
      first.text,
      "for everyone",
      "b heard a message sent before it joined, or a directed one",
    );
    assert.deepEqual(await waitForEvent(c, "message"), {
      type: "message",
      from: "a",
      to: "c",
      text: "only for c",
    });
    assert.equal((await waitForEvent(c, "message")).text, "for everyone");
  });

  Deno.test(`relay (${transport}): each sender's messages arrive in order; UTF-8 text and numbers`, async () => {
    await using relay = startRelay({ rate: 10_000 });
    await using r = await RelayNode.connect(relay.url, { session: "o", nickname: "r", transport });
    await using s1 = await RelayNode.connect(relay.url, {
      session: "o",
      nickname: "s1",
      transport,
    });
    await using s2 = await RelayNode.connect(relay.url, {
      session: "o",
      nickname: "s2",
      transport,
    });
    await waitForEvent(r, "join", (e) => e.nickname === "s2");
    const N = 500;
    for (let i = 0; i < N; i++) {
      s1.send(`${i} grüße 🌍`);
      s2.sendNumbers([i, i * 0.5, -i - 1]);
    }
    const next = { s1: 0, s2: 0 };
    for (const event of await _take(r, 2 * N)) {
      if (event.type === "message") {
        assert.equal(event.text, `${next.s1} grüße 🌍`);
        next.s1++;
      } else if (event.type === "numbers") {
        assert.deepEqual(event.numbers, [next.s2, next.s2 * 0.5, -next.s2 - 1]);
        next.s2++;
      }
    }
    assert.deepEqual(next, { s1: N, s2: N });
  });
}

/** The next `n` message/numbers events of `node`, within 20 s. */
async function _take(node: RelayNode, n: number) {
  const out = [];
  const deadline = Date.now() + 20_000;
  for await (const event of node.events) {
    if (event.type === "message" || event.type === "numbers") out.push(event);
    if (out.length === n) break;
    if (Date.now() > deadline) throw new Error(`only ${out.length} of ${n} messages`);
  }
  return out;
}

Deno.test("relay: a node whose process is killed is announced as gone within 3 s", async () => {
  await using relay = startRelay();
  await using watcher = await RelayNode.connect(relay.url, { session: "k", nickname: "watcher" });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      new URL("./_relay_child.ts", import.meta.url).pathname,
      relay.url,
      "k",
      "victim",
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const out = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assert.match((await out.read()).value ?? "", /joined victim/);
  await waitForEvent(watcher, "join", (e) => e.nickname === "victim");
  const killedAt = performance.now();
  child.kill("SIGKILL");
  await child.status;
  await out.cancel();
  const leave = await waitForEvent(watcher, "leave", (e) => e.nickname === "victim", 3000);
  assert.equal(leave.reason, "gone");
  assert.ok(performance.now() - killedAt < 3000);
});

for (const transport of TRANSPORTS) {
  Deno.test(`relay (${transport}): a black-holed node is announced as gone within 3 s with a 1 s keep-alive, then comes back under its own nickname`, async () => {
    // Silence is found by the keep-alive: 2.5 intervals (25 s with the default 10 s).
    await using relay = startRelay({ keepAlive: 1000 });
    const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
    try {
      await using watcher = await RelayNode.connect(relay.url, {
        session: "b",
        nickname: "watcher",
      });
      await using max = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
        session: "b",
        nickname: "max",
        transport,
        backoff: { initial: 50, max: 200 },
      });
      await waitForEvent(watcher, "join", (e) => e.nickname === "max");
      const silencedAt = performance.now();
      assert.ok(proxy.blackhole() > 0);
      const leave = await waitForEvent(watcher, "leave", (e) => e.nickname === "max", 3000);
      assert.equal(leave.reason, "gone");
      assert.ok(performance.now() - silencedAt < 3000);
      // The node notices the silence too, reconnects, and reclaims "max" (not "max(1)").
      const back = await waitForEvent(watcher, "join", () => true, 10_000);
      assert.equal(back.nickname, "max");
      assert.equal(max.nickname, "max");
      max.send("back again");
      assert.equal((await waitForEvent(watcher, "message")).text, "back again");
    } finally {
      await proxy.close();
    }
  });
}

Deno.test("relay: a bridge serves many agents; agents talk to bridges only", async () => {
  await using relay = startRelay();
  const url = relay.url;
  await using bridge = await RelayNode.connect(url, {
    session: "bb",
    nickname: "bridge",
    role: "bridge",
  });
  await using a1 = await RelayNode.connect(url, {
    session: "bb",
    nickname: "agent",
    role: "agent",
  });
  await using a2 = await RelayNode.connect(url, {
    session: "bb",
    nickname: "agent",
    role: "agent",
  });
  assert.equal(a2.nickname, "agent(1)");
  a1.sendNumbers([3, 4, 5]);
  assert.deepEqual(await waitForEvent(bridge, "numbers"), {
    type: "numbers",
    from: "agent",
    numbers: [3, 4, 5],
  });
  bridge.sendTo("agent(1)", "just you");
  bridge.send("all agents");
  assert.equal((await waitForEvent(a2, "message")).text, "just you");
  assert.equal((await waitForEvent(a2, "message")).text, "all agents");
  const heard = await waitForEvent(a1, "message");
  assert.equal(heard.text, "all agents", "agent heard another agent or a message for someone else");
  a1.sendTo("agent(1)", "psst");
  assert.equal((await waitForEvent(a1, "error")).code, "not-allowed");
});

Deno.test("relay over HTTPS: nodes trust a private CA, on both transports", async () => {
  const certs = await makeTestCerts();
  try {
    await using relay = startRelay({ cert: certs.cert, key: certs.key });
    const url = `https://localhost:${relay.addr.port}`;
    for (const transport of TRANSPORTS) {
      await using a = await RelayNode.connect(url, {
        session: "tls",
        nickname: "a",
        transport,
        caCerts: [certs.caCert],
      });
      await using b = await RelayNode.connect(url, {
        session: "tls",
        nickname: "b",
        transport,
        caCerts: [certs.caCert],
      });
      assert.equal(a.transport, transport);
      await waitForEvent(a, "join");
      b.send(`over ${transport}`);
      assert.equal((await waitForEvent(a, "message")).text, `over ${transport}`);
    }
    await assert.rejects(
      RelayNode.connect(url, {
        session: "tls",
        nickname: "c",
        caCerts: [certs.otherCaCert],
        retries: 1,
      }),
      /certificate|UnknownIssuer|failed/i,
    );
  } finally {
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("relay (http): a node that finds its link dead by its own keep-alive drops it without a bye: the others hear no leave, it keeps its nickname", async () => {
  // The relay's own fade is far: only the node's keep-alive (3 × 200 ms) acts.
  await using relay = startRelay({ keepAlive: 200, fadeAfter: 60_000 });
  const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
  try {
    await using watcher = await RelayNode.connect(relay.url, { session: "k", nickname: "watcher" });
    const heard = recordEvents(watcher);
    await using max = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
      session: "k",
      nickname: "max",
      transport: "http",
      backoff: { initial: 50, max: 200 },
    });
    const states = recordEvents(max);
    await heard.until(() => watcher.members.some((m) => m.nickname === "max"), "max seen");
    assert.ok(proxy.blackhole() > 0);
    await states.until(
      () => states.events.some((e) => e.type === "state" && e.state === "disconnected"),
      "max finding its link dead",
    );
    await states.until(
      () => states.events.some((e) => e.type === "state" && e.state === "connected"),
      "max back",
    );
    max.send("back again");
    // In order behind anything the relay told the watcher about max before.
    await heard.until(() => heard.texts.includes("back again"), "max's message");
    assert.equal(max.nickname, "max");
    const leaves = heard.events.filter((e) => e.type === "leave" && e.nickname === "max");
    assert.deepEqual(leaves, [], "a bye went out on a link the node meant to come back on");
  } finally {
    await proxy.close();
  }
});
