// The hub's rules, with fake sinks and a fake clock: no server, no sockets, no timing.
import assert from "node:assert/strict";
import { Hub } from "./_hub.ts";
import type { HelloFrame, RelayRole, WelcomeFrame } from "./_protocol.ts";
import { relaySettings } from "./_settings.ts";
import { FakeSink } from "../../tests/_fake_sink.ts";
import { renderRecord, withLogs } from "../../tests/_helpers.ts";
import type { RelayOptions } from "./options.ts";

/** A hub on a clock the test moves by hand. */
function makeHub(options: RelayOptions = {}) {
  const clock = { now: 0 };
  const hub = new Hub(relaySettings(options), () => clock.now);
  const join = (nickname: string, fields: Partial<HelloFrame> = {}) => {
    const sink = new FakeSink();
    const hello: HelloFrame = { t: "hello", session: "lab", nickname, role: "peer", ...fields };
    const member = hub.join(hello, sink);
    // The welcome is taken; what follows it (a replay) stays for the test.
    const welcome = sink.frames.find((f) => f.t === "welcome") as WelcomeFrame;
    sink.frames = sink.frames.filter((f) => f !== welcome);
    return { member, sink, welcome };
  };
  return { hub, clock, join, [Symbol.dispose]: () => hub.close() };
}

Deno.test("hub: a nickname clash gives max(1), max(2); another room is another namespace", () => {
  using h = makeHub();
  const names = [h.join("max"), h.join("max"), h.join("max")].map((n) => n.welcome.nickname);
  assert.deepEqual(names, ["max", "max(1)", "max(2)"]);
  assert.equal(h.join("max", { session: "other" }).welcome.nickname, "max");
  assert.equal(h.hub.stats.sessions, 2);
});

Deno.test("hub: the welcome carries a snapshot of the others; joins and leaves are announced", () => {
  using h = makeHub();
  const a = h.join("a");
  assert.deepEqual(a.welcome.members, []);
  const b = h.join("b", { role: "bridge" });
  assert.deepEqual(b.welcome.members, [{ nickname: "a", role: "peer" }]);
  assert.deepEqual(a.sink.take("join"), [{ t: "join", nickname: "b", role: "bridge" }]);
  h.hub.receive(b.member, { t: "bye" });
  assert.deepEqual(b.sink.closed, { code: 1000, reason: "bye" });
  assert.deepEqual(a.sink.take("leave"), [{ t: "leave", nickname: "b", reason: "left" }]);
  // It said bye: its nickname is free at once, for a node without its token.
  const next = h.join("b");
  assert.equal(next.welcome.nickname, "b");
  h.hub.leave(next.member, "gone");
  h.hub.leave(a.member, "gone");
  assert.equal(h.hub.stats.sessions, 0, "an empty room is kept");
});

Deno.test("hub: what a node sends after its bye (before its connection is closed: in a cluster, while Redis takes the leave) is not a member's", () => {
  using h = makeHub();
  const a = h.join("a");
  const b = h.join("b");
  h.hub.receive(b.member, { t: "bye" });
  a.sink.frames = [];
  h.hub.receive(b.member, { t: "msg", text: "after the bye" });
  h.hub.receive(b.member, { t: "ping" });
  h.hub.handle(b.member, { ok: false, problem: { code: "bad-frame", reason: "nonsense" } });
  assert.deepEqual(a.sink.frames, [], "a departed node's message was delivered");
  assert.deepEqual(b.sink.take("pong"), [], "a departed node was answered");
  assert.deepEqual(b.sink.take("error"), [], "a departed node's bad frame was answered");
});

Deno.test("hub: a node reclaims its nickname with its join token, within the reclaim window only", () => {
  using h = makeHub({ reclaimWindow: 1000 });
  const keeper = h.join("keeper");
  const first = h.join("max");
  h.hub.leave(first.member, "gone");
  // Someone else cannot take the reserved name...
  assert.equal(h.join("max").welcome.nickname, "max(1)");
  // ...but its holder can, with the token.
  assert.equal(h.join("max", { token: first.welcome.token }).welcome.nickname, "max");
  // A live connection replaced by a newer one of the same node: the others hear nothing.
  const again = h.join("x");
  keeper.sink.frames = [];
  const swapped = h.join("x", { token: again.welcome.token });
  assert.equal(swapped.member, again.member);
  assert.equal(again.sink.closed?.code, 4409);
  assert.deepEqual(keeper.sink.frames, []);
  // After the window, the name is free for anyone.
  h.hub.leave(swapped.member, "gone");
  h.clock.now += 1001;
  h.hub.sweep();
  assert.equal(h.join("x").welcome.nickname, "x");
});

Deno.test("hub: a node alone in its room keeps its nickname reserved once gone: the room stays for it until the window runs out", () => {
  using h = makeHub({ reclaimWindow: 1000 });
  const lone = h.join("max"); // a tunnel server waiting for its clients, say
  h.hub.leave(lone.member, "gone");
  assert.equal(h.hub.stats.rooms, 1, "the room went with the reservation");
  assert.equal(h.join("max").welcome.nickname, "max(1)", "someone else took the name");
  assert.equal(h.join("max", { token: lone.welcome.token }).welcome.nickname, "max");
  // Nobody back: once the window ran out, the sweep forgets the room.
  const other = h.join("solo", { session: "quiet" });
  h.hub.leave(other.member, "gone");
  h.clock.now += 1001;
  h.hub.sweep();
  assert.ok(!h.hub.rooms.has("quiet"), "a room holding only an expired reservation is kept");
});

Deno.test("hub: a node's claim gets its nickname back once it is gone (a restarted process has no token), never while it is joined", () => {
  using h = makeHub({ reclaimWindow: 60_000 });
  const keeper = h.join("keeper");
  const claim = "tunnel-server-claim-0123456789";
  const first = h.join("lab", { claim });
  // Joined still: the same claim replaces nothing, and takes another name.
  const twin = h.join("lab", { claim });
  assert.equal(twin.welcome.nickname, "lab(1)");
  assert.ok(!first.sink.closed, "a claim never cuts a joined node off");
  h.hub.leave(twin.member, "left");
  // Gone (a crash): reserved; another claim, or none, gets a suffix...
  h.hub.leave(first.member, "gone");
  assert.equal(h.join("lab").welcome.nickname, "lab(1)");
  assert.equal(h.join("lab", { claim: "another-claim-0123456789ab" }).welcome.nickname, "lab(2)");
  // ...the claim's holder gets the name, long before the reservation ends.
  const back = h.join("lab", { claim });
  assert.equal(back.welcome.nickname, "lab");
  // A new process numbers its messages anew: none of them is taken for a duplicate.
  assert.equal(back.member.lastSeq, 0);
  assert.deepEqual(keeper.sink.take("join").map((f) => f.t === "join" && f.nickname).at(-1), "lab");
});

Deno.test("hub: a message sent while alone is dropped without an answer; one to a missing node is refused", () => {
  using h = makeHub();
  const alone = h.join("alone");
  h.hub.receive(alone.member, { t: "msg", text: "nobody hears this" });
  assert.deepEqual(alone.sink.frames, [], "the hub answered a message nobody heard");
  assert.equal(h.hub.stats.messages, 1);
  assert.equal(h.hub.stats.deliveries, 0);
  h.hub.receive(alone.member, { t: "msg", to: "nobody", text: "x" });
  assert.deepEqual(alone.sink.take("error"), [
    { t: "error", code: "no-such-node", message: 'no node "nobody" in this session' },
  ]);
  h.hub.receive(alone.member, { t: "msg", to: "alone", text: "x" });
  assert.deepEqual(alone.sink.take("error"), [
    {
      t: "error",
      code: "no-such-node",
      message: '"alone" is you: a message to yourself goes nowhere',
    },
  ]);
  // Nothing was kept for a node that joins later.
  const late = h.join("late");
  assert.deepEqual(late.sink.frames, []);
});

Deno.test("hub: bridges serve agents; agents hear bridges only; peers hear everyone", () => {
  using h = makeHub();
  const roles: [string, RelayRole][] = [["bridge", "bridge"], ["a1", "agent"], ["a2", "agent"], [
    "peer",
    "peer",
  ]];
  const n = Object.fromEntries(roles.map(([name, role]) => [name, h.join(name, { role })]));
  for (const { sink } of Object.values(n)) sink.frames = [];
  h.hub.receive(n.a1.member, { t: "msg", numbers: [3, 4] });
  assert.deepEqual(n.bridge.sink.take("msg"), [{
    t: "msg",
    from: "a1",
    offset: 1,
    numbers: [3, 4],
  }]);
  assert.deepEqual(n.a2.sink.take("msg"), []);
  assert.deepEqual(n.peer.sink.take("msg"), []);
  h.hub.receive(n.bridge.member, { t: "msg", text: "all" });
  for (const name of ["a1", "a2", "peer"]) assert.equal(n[name].sink.take("msg").length, 1, name);
  h.hub.receive(n.bridge.member, { t: "msg", to: "a2", text: "you" });
  assert.deepEqual(n.a2.sink.take("msg"), [{
    t: "msg",
    from: "bridge",
    to: "a2",
    offset: 3,
    text: "you",
  }]);
  assert.deepEqual(n.a1.sink.take("msg"), []);
  h.hub.receive(n.a1.member, { t: "msg", to: "a2", text: "psst" });
  assert.equal(n.a1.sink.take("error")[0].code, "not-allowed");
  h.hub.receive(n.peer.member, { t: "msg", text: "peer talk" });
  assert.deepEqual(n.bridge.sink.take("msg").length, 1);
  assert.deepEqual(n.a1.sink.take("msg"), [], "an agent heard a peer");
});

Deno.test("hub: the rate limit refuses past the burst, and refills with time", () => {
  using h = makeHub({ rate: 2 });
  const a = h.join("a");
  const b = h.join("b");
  for (let i = 0; i < 5; i++) h.hub.receive(a.member, { t: "msg", text: `${i}` });
  // Bursts of twice the rate pass; the rest are refused, each with an answer.
  assert.equal(b.sink.take("msg").length, 4);
  assert.deepEqual(a.sink.take("error").map((e) => e.code), ["rate-limited"]);
  h.clock.now += 500; // one token back at 2/s
  h.hub.receive(a.member, { t: "msg", text: "later" });
  assert.deepEqual(b.sink.take("msg").map((m) => m.text), ["later"]);
  assert.equal(h.hub.stats.refused["rate-limited"], 1);
});

Deno.test('hub: a full queue drops the copy for that node (overflow "drop")', () => {
  using h = makeHub({ overflow: "drop" });
  const a = h.join("a");
  const slow = h.join("slow");
  const fast = h.join("fast");
  slow.sink.full = true;
  h.hub.receive(a.member, { t: "msg", text: "x" });
  assert.equal(fast.sink.take("msg").length, 1);
  assert.equal(h.hub.stats.dropped, 1);
  assert.equal(slow.sink.closed, null);
  assert.equal(h.hub.stats.nodes, 3);
});

Deno.test('hub: a full queue disconnects the node (overflow "disconnect") once, however many messages came for it in that burst; the others hear it is gone', async () => {
  using h = makeHub({ overflow: "disconnect" });
  const a = h.join("a");
  const slow = h.join("slow");
  a.sink.frames = [];
  slow.sink.full = true;
  const delivered = h.hub.stats.deliveries;
  // One burst (one POST's messages): the node is cut off after the first.
  for (const text of ["x", "y", "z"]) h.hub.receive(a.member, { t: "msg", text });
  await slow.sink.whenClosed;
  assert.equal(slow.sink.closed?.code, 4429);
  assert.deepEqual(a.sink.take("leave"), [{ t: "leave", nickname: "slow", reason: "gone" }]);
  assert.equal(h.hub.stats.slowDisconnects, 1);
  // Nothing of the burst was handed to it, nothing counted: only the leave a heard.
  assert.equal(h.hub.stats.deliveries, delivered + 1);
});

Deno.test("hub: keep-alive pings quiet nodes, and declares gone those silent too long", () => {
  using h = makeHub({ keepAlive: 1000 });
  const a = h.join("a");
  const b = h.join("b");
  a.sink.frames = [];
  h.clock.now += 1000;
  h.hub.sweep();
  assert.equal(a.sink.take("ping").length, 1);
  h.hub.receive(a.member, { t: "pong" });
  h.clock.now += 1600; // b has been silent for 2.6 s, past 2.5 × keepAlive; a for 1.6 s
  h.hub.sweep();
  assert.equal(b.sink.closed?.code, 4408);
  assert.deepEqual(a.sink.take("leave"), [{ t: "leave", nickname: "b", reason: "gone" }]);
  assert.equal(h.hub.stats.faded, 1);
});

Deno.test("hub: keep-alive costs nothing for nodes in a conversation; others get one ping a period", () => {
  using h = makeHub({ keepAlive: 1000 });
  // a and b talk to each other; c only listens; in another room, d talks to e, who only listens.
  const [a, b, c] = [h.join("a"), h.join("b"), h.join("c")];
  const d = h.join("d", { session: "other" });
  const e = h.join("e", { session: "other" });
  const pinged = new Map<string, number[]>(["a", "b", "c", "d", "e"].map((n) => [n, []]));
  // 5 s in 50 ms sweeps.
  for (let t = 50; t <= 5000; t += 50) {
    h.clock.now = t;
    h.hub.receive(a.member, { t: "msg", text: "to b" });
    h.hub.receive(b.member, { t: "msg", text: "to a" });
    h.hub.receive(d.member, { t: "msg", text: "to e" });
    h.hub.sweep();
    for (const node of [a, b, c, d, e]) {
      for (const _ of node.sink.take("ping")) {
        pinged.get(node.member.nickname)!.push(t);
        h.hub.receive(node.member, { t: "pong" }); // answered at once, as it must be
      }
      node.sink.frames = [];
    }
  }
  // Heard and spoken to: never pinged.
  assert.deepEqual([pinged.get("a"), pinged.get("b")], [[], []]);
  // c is spoken to but silent (its pongs are all the relay hears of it); d is heard but
  // nobody speaks to it (the ping is all it hears of the relay); e is both: one ping a period.
  for (const name of ["c", "d", "e"]) {
    const times = pinged.get(name)!;
    assert.ok(times[0] <= 2000, `${name}'s first ping within two periods: ${times}`);
    assert.deepEqual(times.slice(1).map((t, i) => t - times[i]), times.slice(1).map(() => 1000));
    assert.ok(times.length >= 3, `${name} pinged at ${times}`);
  }
  assert.equal(h.hub.stats.faded, 0);
});

Deno.test("hub: the pings of nodes that joined together are spread over the period", () => {
  using h = makeHub({ keepAlive: 1000 });
  const nodes = Array.from({ length: 40 }, (_, i) => h.join(`n${i}`));
  const firstPings = new Map<number, number>();
  const pinged = new Set<number>();
  for (let t = 50; t <= 2000; t += 50) {
    h.clock.now = t;
    h.hub.sweep();
    nodes.forEach((node, i) => {
      if (node.sink.take("ping").length === 0 || pinged.has(i)) return;
      pinged.add(i);
      firstPings.set(t, (firstPings.get(t) ?? 0) + 1);
    });
  }
  assert.equal(pinged.size, 40, "each pinged within two periods of its join");
  // First checks fall at random from 0.5 to 1 period after the join: not all in one sweep.
  const counts = [...firstPings.values()];
  assert.ok(counts.length >= 4 && Math.max(...counts) <= 20, `first pings: ${[...firstPings]}`);
});

Deno.test("hub: a node that answers every ping is never gone, even with fadeAfter under two periods", () => {
  // A node not pinged at one check is pinged at the next: with fadeAfter 15 s
  // and a 10 s period, skipping a ping for a node heard 7 s ago would leave it
  // silent for 17 s.
  using h = makeHub({ keepAlive: 10_000, fadeAfter: 15_000 });
  const nodes = Array.from({ length: 20 }, (_, i) => h.join(`n${i}`));
  for (let t = 250; t <= 120_000; t += 250) {
    h.clock.now = t;
    h.hub.sweep();
    for (const node of nodes) {
      for (const _ of node.sink.take("ping")) h.hub.receive(node.member, { t: "pong" });
    }
  }
  assert.equal(h.hub.stats.faded, 0);
  assert.ok(nodes.every((node) => node.sink.closed === null));
});

Deno.test("hub: a broken connection is gone after 2.5 s, whatever the keep-alive; silence after fadeAfter; the log says which", async () => {
  await withLogs((records) => {
    using h = makeHub({ keepAlive: 10_000 }); // fadeAfter 25 s
    const a = h.join("a");
    const broken = h.join("broken");
    const silent = h.join("silent");
    h.hub.detach(broken.member, broken.sink);
    h.clock.now = 2400;
    h.hub.sweep();
    assert.deepEqual(a.sink.take("leave"), [], "a blip keeps its place");
    h.clock.now = 2600;
    h.hub.sweep();
    assert.deepEqual(a.sink.take("leave"), [{ t: "leave", nickname: "broken", reason: "gone" }]);
    // The silent one answers no ping but still has its connection: 25 s.
    for (let t = 2600; t <= 25_000; t += 250) {
      h.clock.now = t;
      h.hub.receive(a.member, { t: "pong" });
      h.hub.sweep();
    }
    const closeCode = () => silent.sink.closed?.code;
    assert.deepEqual(a.sink.take("leave"), []);
    assert.equal(closeCode(), undefined);
    h.clock.now = 25_250;
    h.hub.sweep();
    assert.deepEqual(a.sink.take("leave"), [{ t: "leave", nickname: "silent", reason: "gone" }]);
    assert.equal(closeCode(), 4408);
    const gone = records.map(renderRecord).filter((line) => line.includes("is gone"));
    assert.deepEqual(gone, [
      "Node broken is gone from lab (its connection broke and it did not come back within 2500 ms)",
      "Node silent is gone from lab (nothing heard from it for 25250 ms)",
    ]);
    return Promise.resolve();
  });
});

Deno.test("hub: refusals are counted by a closed set of reasons, and a full relay or session is logged; the secret is checked first", async () => {
  await withLogs((records) => {
    using h = makeHub({ secret: "right", maxSessions: 1, maxNodesPerSession: 1 });
    const sink = new FakeSink();
    const bad = { t: "hello", session: "s", nickname: "" };
    assert.throws(() => h.hub.admit(bad, null, sink), { status: 401, code: "unauthorized" });
    assert.throws(() => h.hub.admit({ ...bad, secret: "right" }, null, sink), {
      status: 400,
      code: "bad-request",
      message: "a nickname is required",
    });
    const ok = { t: "hello", session: "s", nickname: "n" };
    h.hub.admit(ok, "right", sink);
    assert.throws(() => h.hub.admit(ok, "right", new FakeSink()), { status: 503, code: "full" });
    // Braces in a session id are text: the log line keeps them, quoted (as a template, it lost them).
    assert.throws(() => h.hub.admit({ ...ok, session: "{t}" }, "right", new FakeSink()), {
      status: 503,
      code: "full",
    });
    assert.deepEqual(h.hub.stats.refused, {
      "secret": 1,
      "bad-hello": 1,
      "max-nodes": 1,
      "max-sessions": 1,
    });
    const lines = records.map(renderRecord);
    for (
      const line of [
        "Refused a node in s: the session has reached its node limit (1)",
        'Refused a node in "{t}": the relay has reached its session limit (1)',
      ]
    ) assert.ok(lines.includes(line), lines.join("\n"));
    return Promise.resolve();
  });
});

Deno.test("hub: a nickname ending in (n) is the relay's to give; its holder reclaims it with its token", () => {
  using h = makeHub();
  h.join("max");
  const second = h.join("max");
  assert.equal(second.welcome.nickname, "max(1)");
  // Nobody picks max(2) or max(1) by hand, with or without a made-up token.
  for (const fields of [{}, { token: "guess" }]) {
    assert.throws(
      () => h.join("max(1)", fields),
      (e: Error & { status?: number }) =>
        e.status === 400 && /may not end in \(n\)/.test(e.message),
    );
  }
  assert.throws(() => h.join("max(2)"), /may not end in \(n\)/);
  // The node that was given max(1) gets it back after a blip, with its token.
  h.hub.leave(second.member, "gone");
  const back = h.join("max(1)", { token: second.welcome.token });
  assert.equal(back.welcome.nickname, "max(1)");
  // A refusal leaves no empty room behind.
  assert.throws(() => h.join("eve(3)", { session: "nobody-here" }), /may not end in \(n\)/);
  assert.equal(h.hub.stats.sessions, 1);
});

Deno.test("hub: numbered messages are acknowledged once per turn, duplicates dropped, and one nobody hears is reported by its seq", async () => {
  using h = makeHub();
  const a = h.join("a", { id: "node-a" });
  assert.deepEqual([a.welcome.acked, a.welcome.offset], [0, 0]);
  h.hub.receive(a.member, { t: "msg", text: "alone", seq: 1 });
  assert.deepEqual(a.sink.take("error"), [{
    t: "error",
    code: "alone",
    message: "nobody else in the session hears it: dropped",
    seq: 1,
  }]);
  const b = h.join("b", { id: "node-b" });
  for (const seq of [2, 3, 3, 2]) h.hub.receive(a.member, { t: "msg", text: `m${seq}`, seq });
  // The receiver gets each once, numbered by the room and by the sender.
  assert.deepEqual(b.sink.take("msg"), [
    { t: "msg", from: "a", offset: 1, id: "node-a", seq: 2, text: "m2" },
    { t: "msg", from: "a", offset: 2, id: "node-a", seq: 3, text: "m3" },
  ]);
  await Promise.resolve(); // acks go out after this turn's frames
  assert.deepEqual(a.sink.take("ack"), [{ t: "ack", seq: 3 }]);
  assert.equal(h.hub.stats.duplicates, 2);
  assert.equal(h.hub.stats.alone, 1);
});

Deno.test("hub: a node whose connection breaks keeps its place; back with its position, it gets what it missed, in order, once; nobody hears it left", () => {
  using h = makeHub({ keepAlive: 1000 });
  const a = h.join("a", { id: "node-a" });
  const b = h.join("b", { id: "node-b" });
  const c = h.join("c");
  a.sink.frames = [];
  c.sink.frames = [];
  h.hub.receive(a.member, { t: "msg", text: "before", seq: 1 });
  const position = { epoch: b.welcome.epoch!, offset: b.sink.take("msg")[0].offset! };
  h.hub.detach(b.member, b.sink);
  assert.equal(h.hub.stats.detached, 1);
  h.hub.receive(a.member, { t: "msg", text: "while away 1", seq: 2 });
  h.hub.receive(c.member, { t: "msg", to: "b", text: "while away 2" });
  h.hub.receive(c.member, { t: "msg", to: "a", text: "not for b" });
  h.clock.now += 2000; // within the grace of a broken connection (2.5 s)
  h.hub.sweep();
  const back = h.join("b", { id: "node-b", token: b.welcome.token, recover: position });
  assert.equal(back.welcome.recovered, true);
  assert.equal(back.welcome.nickname, "b");
  assert.deepEqual(back.sink.take("msg").map((m) => m.text), ["while away 1", "while away 2"]);
  assert.deepEqual(a.sink.take("leave"), [], "the blip was announced");
  assert.deepEqual(c.sink.take("join"), [], "the blip was announced");
  assert.equal(h.hub.stats.replayed, 2);
  // A node that does not come back within the grace is gone.
  h.hub.detach(back.member, back.sink);
  h.clock.now += 3000;
  for (const node of [a, c]) h.hub.receive(node.member, { t: "pong" });
  h.hub.sweep();
  assert.deepEqual(a.sink.take("leave"), [{ t: "leave", nickname: "b", reason: "gone" }]);
});

Deno.test("hub: a position older than the history, or from another epoch, is not recovered: the welcome says why, and what is still held follows", () => {
  using h = makeHub({ historyLength: 2 });
  const a = h.join("a", { id: "node-a" });
  const b = h.join("b", { id: "node-b" });
  const epoch = b.welcome.epoch!;
  h.hub.detach(b.member, b.sink);
  for (let seq = 1; seq <= 3; seq++) h.hub.receive(a.member, { t: "msg", text: `${seq}`, seq });
  const late = h.join("b", { id: "node-b", token: b.welcome.token, recover: { epoch, offset: 0 } });
  assert.deepEqual([late.welcome.recovered, late.welcome.missed], [false, "window"]);
  // Message 1 fell out; what is still held comes with the news, the position just before it.
  assert.equal(late.welcome.offset, 1, "where the node goes on from");
  assert.deepEqual(late.sink.take("msg").map((m) => m.text), ["2", "3"]);
  const recent = h.join("b", {
    id: "node-b",
    token: b.welcome.token,
    recover: { epoch, offset: 1 },
  });
  assert.deepEqual(recent.sink.take("msg").map((m) => m.text), ["2", "3"]);
  const other = h.join("b", {
    id: "node-b",
    token: b.welcome.token,
    recover: { epoch: "another", offset: 3 },
  });
  assert.deepEqual([other.welcome.recovered, other.welcome.missed], [false, "epoch"]);
  // Nothing of this epoch can have reached it: all that is held is news.
  assert.deepEqual(other.sink.take("msg").map((m) => m.text), ["2", "3"]);
});

Deno.test("hub: a node with an id whose queue is full is cut off but keeps its place, and gets the rest when back", async () => {
  using h = makeHub({ overflow: "disconnect" });
  const a = h.join("a", { id: "node-a" });
  const slow = h.join("slow", { id: "node-slow" });
  a.sink.frames = [];
  const position = { epoch: slow.welcome.epoch!, offset: slow.welcome.offset! };
  slow.sink.full = true;
  h.hub.receive(a.member, { t: "msg", text: "x", seq: 1 });
  await slow.sink.whenClosed;
  assert.equal(slow.sink.closed?.code, 4429);
  h.hub.receive(a.member, { t: "msg", text: "y", seq: 2 });
  const back = h.join("slow", { id: "node-slow", token: slow.welcome.token, recover: position });
  assert.deepEqual(back.sink.take("msg").map((m) => m.text), ["x", "y"]);
  assert.deepEqual(a.sink.take("leave"), []);
  assert.equal(h.hub.stats.slowDisconnects, 1);
});

Deno.test("hub: a node back after it was declared gone keeps its message numbers: its resends stay duplicates", async () => {
  using h = makeHub();
  const a = h.join("a", { id: "node-a" });
  const b = h.join("b", { id: "node-b" });
  h.hub.receive(a.member, { t: "msg", text: "once", seq: 1 });
  h.hub.leave(a.member, "gone");
  const back = h.join("a", { id: "node-a", token: a.welcome.token });
  assert.equal(back.welcome.acked, 1);
  h.hub.receive(back.member, { t: "msg", text: "once", seq: 1 });
  await Promise.resolve();
  assert.deepEqual(b.sink.take("msg").map((m) => m.text), ["once"]);
});

Deno.test("hub: a room a node comes back to from an earlier life keeps what nobody hears for its members, for the rejoin grace only", () => {
  using h = makeHub({ rejoinGrace: 1000 });
  const old = { epoch: "before-the-restart", offset: 7 };
  // A fresh room: a lone sender is told at once.
  const fresh = h.join("fresh", { session: "other", id: "f" });
  h.hub.receive(fresh.member, { t: "msg", text: "nobody", seq: 1 });
  assert.equal(fresh.sink.take("error")[0]?.code, "alone");
  // An agent back from before the restart: the room waits for the others.
  const agent = h.join("agent", { role: "agent", id: "a", recover: old });
  assert.equal(agent.welcome.missed, "epoch");
  h.hub.receive(agent.member, { t: "msg", text: "to all", seq: 1 });
  h.hub.receive(agent.member, { t: "msg", text: "to the bridge", to: "bridge", seq: 2 });
  h.hub.receive(agent.member, { t: "msg", text: "to an agent", to: "agent2", seq: 3 });
  assert.deepEqual(agent.sink.take("error"), [], "kept, not refused");
  // Those back get what they hear, in order, their position just before it.
  const bridge = h.join("bridge", { role: "bridge", id: "b", recover: old });
  assert.equal(bridge.welcome.offset, 0);
  assert.deepEqual(bridge.sink.take("msg").map((f) => f.text), ["to all", "to the bridge"]);
  // An agent hears bridges only: the agent's message to another agent never reaches it.
  const agent2 = h.join("agent2", { role: "agent", id: "a2", recover: old });
  assert.deepEqual(agent2.sink.take("msg"), []);
  // The grace over, a message to nobody is refused again.
  h.clock.now += 1001;
  h.hub.receive(bridge.member, { t: "msg", text: "to a ghost", to: "ghost", seq: 1 });
  assert.equal(bridge.sink.take("error")[0]?.code, "no-such-node");
});

Deno.test("hub: a stale position in a room that lives on silences nothing; a node back from a restart keeps its suffixed name; its position follows what it hears", () => {
  using h = makeHub({ rejoinGrace: 1000 });
  const alice = h.join("alice", { id: "a" });
  h.clock.now = 5000;
  // A position from another epoch, long after the room was made: stale or made up.
  const stale = h.join("bob", { id: "b", recover: { epoch: "long-gone", offset: 3 } });
  assert.equal(stale.welcome.missed, "epoch");
  h.hub.receive(alice.member, { t: "msg", to: "bbo", text: "typo", seq: 1 });
  assert.equal(alice.sink.take("error")[0]?.code, "no-such-node", "no grace in a live room");
  // Nor a suffixed name picked by hand with a made-up position (max(1) is free).
  assert.throws(
    () => h.join("max(1)", { id: "x", recover: { epoch: "made-up", offset: 0 } }),
    { code: "bad-request" },
  );
  // After a restart (a new hub), a node that had been given max(1) gets it back if it is free...
  using restarted = makeHub({ rejoinGrace: 1000 });
  const max = restarted.join("max(1)", { id: "m", recover: { epoch: "before", offset: 9 } });
  assert.equal(max.welcome.nickname, "max(1)");
  // ...but a node without a position from before cannot pick a suffixed name.
  assert.throws(() => restarted.join("eve(1)", { id: "e" }), { code: "bad-request" });
  // An agent back after a restart hears bridges only: held messages between
  // peers do not set its position back.
  const peer = restarted.join("peer", { id: "p", recover: { epoch: "before", offset: 1 } });
  restarted.hub.receive(peer.member, { t: "msg", text: "peers only", seq: 1 });
  const agent = restarted.join("agent", {
    role: "agent",
    id: "g",
    recover: { epoch: "before", offset: 4 },
  });
  assert.deepEqual(agent.sink.take("msg"), []);
  assert.equal(agent.welcome.offset, 1, "the room's latest, not before what it does not hear");
});

Deno.test("hub: a node that comes back again and again is said once per interval, then summarised, not a line per return", async () => {
  const lines = await withLogs((records) => {
    using h = makeHub();
    const first = h.join("max", { session: "lab" });
    for (let i = 0; i < 5; i++) h.join("max", { session: "lab", token: first.welcome.token });
    h.hub.close();
    return Promise.resolve(records.map(renderRecord).filter((l) => /is back in lab/.test(l)));
  });
  assert.deepEqual(lines.map((l) => l.replace(/last \d+ s/, "last N s")), [
    "Node max is back in lab",
    "4 more in the last N s; the last: Node max is back in lab",
  ]);
});

Deno.test("hub: at the session limit, the oldest room nobody is in (kept for its history) makes room for a new session; rooms with nodes never do", () => {
  using h = makeHub({ maxSessions: 2 });
  // "old": a message, then empty: kept for its history, as a room, not a session.
  const a = h.join("a", { session: "old" });
  const other = h.join("b", { session: "old" });
  h.hub.receive(a.member, { t: "msg", text: "kept for whoever comes back" });
  h.hub.receive(a.member, { t: "bye" });
  h.hub.receive(other.member, { t: "bye" });
  assert.equal(h.hub.stats.rooms, 1);
  assert.equal(h.hub.stats.sessions, 0);
  h.join("c", { session: "live" });
  // Two rooms: the limit. A new session takes the empty one's place.
  assert.equal(h.join("d", { session: "new" }).welcome.nickname, "d");
  assert.equal(h.hub.rooms.has("old"), false);
  assert.equal(h.hub.stats.sessions, 2);
  // Both rooms have nodes now: a third session is refused.
  assert.throws(() => h.join("e", { session: "third" }), { status: 503, code: "full" });
});

Deno.test("hub: at the session limit, an empty room that holds a nickname for a node coming back is kept, while one holding only history goes", () => {
  using h = makeHub({ maxSessions: 3 });
  // First created: a node gone without a bye, its nickname held for it.
  const away = h.join("a", { session: "reserving" });
  const watcher = h.join("w", { session: "reserving" });
  h.hub.receive(away.member, { t: "msg", text: "x" });
  h.hub.leave(away.member, "gone");
  h.hub.receive(watcher.member, { t: "bye" });
  // Then: a message, and clean byes: only history.
  const done = h.join("b", { session: "history" });
  const other = h.join("o", { session: "history" });
  h.hub.receive(done.member, { t: "msg", text: "x" });
  h.hub.receive(done.member, { t: "bye" });
  h.hub.receive(other.member, { t: "bye" });
  assert.equal(h.hub.rooms.get("reserving")?.reserved.size, 1);
  assert.equal(h.hub.rooms.get("history")?.reserved.size, 0);
  h.join("c", { session: "live" });
  const d = h.join("d", { session: "new" });
  assert.equal(h.hub.rooms.has("history"), false);
  assert.equal(h.hub.rooms.has("reserving"), true);
  // "new" empties too, with history only; then the reservation runs out (the sweep has
  // not cleared it yet): "reserving" is a room of history like any, and the first made.
  const d2 = h.join("d2", { session: "new" });
  h.hub.receive(d.member, { t: "msg", text: "x" });
  h.hub.receive(d.member, { t: "bye" });
  h.hub.receive(d2.member, { t: "bye" });
  h.clock.now += 60_000;
  h.join("e", { session: "newer" });
  assert.equal(h.hub.rooms.has("reserving"), false);
  assert.equal(h.hub.rooms.has("new"), true);
});

Deno.test("hub: the rooms' histories together stay within totalHistoryBytes: rooms nobody is in lose theirs first, then the room that grew its oldest; text past Latin-1 counts two bytes a character", () => {
  using h = makeHub({ totalHistoryBytes: 4000, historyBytes: 100_000 });
  const say = (member: ReturnType<typeof h.join>["member"], text: string) =>
    h.hub.receive(member, { t: "msg", text });
  // Two rooms that emptied, each with ~1,000 bytes of history kept for who comes back.
  for (const session of ["idle-1", "idle-2"]) {
    const a = h.join("a", { session });
    const b = h.join("b", { session });
    for (let i = 0; i < 10; i++) say(a.member, "x".repeat(60));
    h.hub.receive(a.member, { t: "bye" });
    h.hub.receive(b.member, { t: "bye" });
  }
  const idle = h.hub.stats.historyBytes;
  assert.ok(idle > 1500 && idle < 4000, `${idle}`);
  // A live room talks past the budget: the idle rooms' histories go first, oldest room first.
  const c = h.join("c", { session: "live" });
  h.join("d", { session: "live" });
  for (let i = 0; i < 40 && h.hub.rooms.get("idle-1")!.history.size > 0; i++) {
    say(c.member, "y".repeat(60));
  }
  assert.equal(h.hub.rooms.get("idle-1")!.history.size, 0, "the oldest idle room's history");
  assert.ok(h.hub.rooms.get("idle-2")!.history.size > 0, "a second idle room's, too early");
  assert.ok(h.hub.stats.historyBytes <= 4000);
  // It talks on: all idle history goes, then its own oldest; the total stays within.
  h.clock.now += 10_000; // (within its rate)
  for (let i = 0; i < 150; i++) say(c.member, "z".repeat(60));
  assert.equal(h.hub.rooms.get("idle-2")!.history.size, 0);
  const live = h.hub.rooms.get("live")!.history;
  assert.ok(live.size > 0 && h.hub.stats.historyBytes <= 4000, `${h.hub.stats.historyBytes}`);
  // Two bytes a character past Latin-1: half as many such messages fit.
  const latin = live.bytes / live.size;
  h.clock.now += 10_000;
  for (let i = 0; i < 150; i++) say(c.member, "漢".repeat(60));
  assert.ok(live.bytes / live.size > latin * 1.5, `${live.bytes / live.size} against ${latin}`);
  assert.ok(h.hub.stats.historyBytes <= 4000);
});
