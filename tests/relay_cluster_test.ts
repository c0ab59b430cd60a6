/**
 * The rules a relay cluster keeps in Redis, on a real redis-server, one at a
 * time: a message taken after one that failed on its way is refused (so the
 * resend of the failed one cannot look like a duplicate), a resend is a
 * duplicate, and what pub/sub did not bring is filled from the history in
 * offset order.
 */

import assert from "node:assert/strict";
import {
  type ClusterJoin,
  type ClusterMessage,
  clusterPrefix,
  RelayCluster,
} from "../lib/relay/_cluster.ts";
import { Hub } from "../lib/relay/_hub.ts";
import type { HelloFrame, WelcomeFrame } from "../lib/relay/_protocol.ts";
import { relaySettings } from "../lib/relay/_settings.ts";
import type { RelayOptions } from "../lib/relay/options.ts";
import { FakeSink } from "./_fake_sink.ts";
import { renderRecord, waitUntil, within, withLogs } from "./_helpers.ts";
import { redisClient, startRedis } from "./_redis.ts";

const SETTINGS = {
  historyLength: 1000,
  roomTtl: 60_000,
  reclaimWindow: 60_000,
  rejoinGrace: 10_000,
  maxNodesPerSession: 100,
  maxSessions: 100,
  commandTimeout: 10_000,
  // Relays without a secret: the keys the raw checks below look at.
  prefix: "immortal:relay:",
};

/** A join that went through, or the test fails saying what came instead. */
function joinedOf(result: ClusterJoin | string | { rejoining: number }): ClusterJoin {
  assert.ok(typeof result === "object" && "kind" in result, JSON.stringify(result));
  return result;
}

/**
 * A cluster member that records the messages and presence events it is
 * given, and waits for them. It holds the nodes `held` names (`room/nickname`).
 */
function recordingCluster(
  url: string,
  options: {
    held?: Set<string>;
    /** Asked instead of `held`, when given. */
    holds?: (room: string, nickname: string) => boolean;
    commandTimeout?: number;
    reclaimWindow?: number;
  } = {},
) {
  const messages: ClusterMessage[] = [];
  const presence: string[] = [];
  let wake = () => {};
  const { holds: _, held: __, ...settings } = options;
  const cluster = new RelayCluster({ url, ...SETTINGS, ...settings }, {
    message: (_room, message) => {
      messages.push(message);
      wake();
    },
    presence: (room, event) => {
      presence.push(`${event.kind} ${room}/${event.nickname}`);
      wake();
    },
    moved: () => {},
    forgotten: () => {},
    pipe: () => {},
    trimmed: () => {},
    holds: (room, nickname) =>
      options.holds?.(room, nickname) ?? options.held?.has(`${room}/${nickname}`) ?? false,
  });
  /** Resolves once `done` holds (fails after 20 s: a test never hangs). */
  const when = async (done: () => boolean, what: string): Promise<void> => {
    if (done()) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`no ${what} within 20 s`)), 20_000);
        wake = () => done() && resolve();
      });
    } finally {
      clearTimeout(timer);
      wake = () => {};
    }
  };
  return {
    cluster,
    messages,
    presence,
    when,
    /** Resolves once `count` messages came. */
    until: (count: number) =>
      when(() => messages.length >= count, `${count} messages (${messages.length} came)`),
  };
}

const frame = (text: string) => ({ before: `{"t":"msg","o":`, after: `,"text":"${text}"}` });

Deno.test("cluster: a numbered message after one Redis did not take is refused as a gap; a resend is a duplicate", async () => {
  await using redis = await startRedis();
  const { cluster } = recordingCluster(redis.url);
  try {
    await cluster.subscribe("s");
    for (const nickname of ["x", "y"]) {
      const joined = await cluster.join("s", {
        nickname,
        role: "peer",
        id: nickname,
        suffixed: false,
      });
      assert.equal(joinedOf(joined).lastSeq, 0);
    }
    const send = (seq: number, prev: number) =>
      cluster.send("s", { from: "x", role: "peer", seq, prev, ...frame(String(seq)) });
    assert.deepEqual(await send(1, 0), { status: "ok", offset: 1 });
    // 2 was lost on its way: 3, sent after it on the same connection, must wait for its resend.
    assert.deepEqual(await send(3, 2), { status: "gap" });
    assert.deepEqual(await send(2, 1), { status: "ok", offset: 2 });
    assert.deepEqual(await send(3, 2), { status: "ok", offset: 3 });
    // Resent after a reconnect (prev is the join's lastSeq then): taken already.
    assert.deepEqual(await send(2, 3), { status: "dup" });
    assert.deepEqual(await send(3, 3), { status: "dup" });
    // A node that joins afresh with a higher number starts from the join's lastSeq.
    assert.deepEqual(await send(10, 3), { status: "ok", offset: 4 });
  } finally {
    cluster.close();
  }
});

Deno.test("cluster: messages pub/sub did not bring are filled from the history, in offset order, once", async () => {
  await using redis = await startRedis();
  const { cluster, messages, until } = recordingCluster(redis.url);
  await using raw = await redisClient(redis.url);
  try {
    await cluster.subscribe("s");
    // Offsets 1-3 reach the history, but only 3 is published (1 and 2 as if lost by pub/sub).
    const prefix = "immortal:relay:";
    const room = "73"; // "s", hex-encoded
    for (let offset = 1; offset <= 3; offset++) {
      await raw.sendCommand(["INCR", `${prefix}r:${room}:o`]);
      await raw.sendCommand([
        "XADD",
        `${prefix}r:${room}:h`,
        `${offset}-0`,
        ...["d", `m${offset}`, "f", "y", "r", "peer", "t", "", "a", "0"],
      ]);
    }
    await raw.sendCommand(["PUBLISH", `${prefix}c:${room}`, "m\n3\n\ny\npeer\n\nm3"]);
    // A duplicate of 3 and then 4 follow through pub/sub as usual.
    await raw.sendCommand(["PUBLISH", `${prefix}c:${room}`, "m\n3\n\ny\npeer\n\nm3"]);
    await raw.sendCommand(["PUBLISH", `${prefix}c:${room}`, "m\n4\n\ny\npeer\n\nm4"]);
    await until(4);
    assert.deepEqual(messages.map((m) => [m.offset, m.data]), [
      [1, "m1"],
      [2, "m2"],
      [3, "m3"],
      [4, "m4"],
    ]);
  } finally {
    cluster.close();
  }
});

Deno.test("cluster: after Redis lost a room (a new epoch, offsets from 1 again), its messages are delivered, not dropped as old", async () => {
  await using redis = await startRedis({ persist: false });
  const { cluster, messages, until } = recordingCluster(redis.url);
  await using raw = await redisClient(redis.url);
  try {
    // The test holds the subscription across the loss, as a join in flight would.
    await cluster.subscribe("s");
    let epoch: string | undefined;
    const joinBoth = async () => {
      for (const nickname of ["x", "y"]) {
        // Back from the room's earlier life, after the loss (a first join
        // refused `lost` makes the relay notice it).
        const hello = { nickname, role: "peer" as const, suffixed: false, recoverEpoch: epoch };
        const join = () => cluster.join("s", hello);
        let joined = await join();
        for (let tries = 0; joined === "lost" && tries < 1000; tries++) {
          await new Promise((resolve) => setTimeout(resolve, 10)); // its heartbeat is under way
          joined = await join();
        }
        epoch ??= joinedOf(joined).epoch;
      }
    };
    const send = (text: string) =>
      cluster.send("s", { from: "x", role: "peer", prev: 0, ...frame(text) });
    await joinBoth();
    for (const text of ["a1", "a2", "a3", "a4", "a5"]) {
      assert.equal((await send(text)).status, "ok");
    }
    await until(5);
    await raw.sendCommand(["FLUSHALL"]);
    await joinBoth();
    for (const text of ["b1", "b2", "b3"]) assert.equal((await send(text)).status, "ok");
    await until(8);
    assert.deepEqual(
      messages.map((m) => `${m.offset}${m.data.slice(m.data.lastIndexOf(":"))}`),
      ['1:"a1"}', '2:"a2"}', '3:"a3"}', '4:"a4"}', '5:"a5"}', '1:"b1"}', '2:"b2"}', '3:"b3"}'],
    );
  } finally {
    cluster.close();
  }
});

/**
 * Joins "ghost" to room "s" while Redis takes no writes: the join times out
 * here (the cluster's command timeout must be 300 ms) and Redis runs it once
 * it writes again, so "ghost" is a member this relay does not hold.
 */
async function joinTooLate(
  cluster: RelayCluster,
  raw: { sendCommand(args: string[]): Promise<unknown> },
  nicknames = ["ghost"],
): Promise<void> {
  // Writes (and so scripts) wait until the pause is lifted: the joins time out first.
  await raw.sendCommand(["CLIENT", "PAUSE", "60000", "WRITE"]);
  await Promise.all(nicknames.map((nickname) =>
    assert.rejects(
      cluster.join("s", { nickname, role: "peer", suffixed: false }),
      /Redis did not answer within 300 ms/,
    )
  ));
  await raw.sendCommand(["CLIENT", "UNPAUSE"]);
}

Deno.test("cluster: a join Redis ran after the relay had given up on it leaves no ghost: the next heartbeat lets it go", async () => {
  await using redis = await startRedis({ persist: false });
  const held = new Set(["s/x"]);
  const { cluster, presence, when } = recordingCluster(redis.url, { held, commandTimeout: 300 });
  await using raw = await redisClient(redis.url);
  try {
    await cluster.subscribe("s");
    assert.equal(
      typeof await cluster.join("s", { nickname: "x", role: "peer", suffixed: false }),
      "object",
    );
    await joinTooLate(cluster, raw);
    // Redis runs the join now: "ghost" is a member nobody holds, until the check.
    await when(() => presence.includes("leave s/ghost"), "leave of the ghost");
    assert.ok(presence.includes("join s/ghost"));
    assert.equal(await raw.sendCommand(["HGET", "immortal:relay:r:73:m", "ghost"]), null);
    assert.notEqual(await raw.sendCommand(["HGET", "immortal:relay:r:73:m", "x"]), null);
    assert.ok(!presence.includes("leave s/x"), "a node the relay holds was let go");
  } finally {
    cluster.close();
  }
});

Deno.test("cluster: a node that leaves while a ghost check runs is no ghost: its own leave lets it go, and no warning says otherwise", async () => {
  await withLogs(async (records) => {
    await using redis = await startRedis({ persist: false });
    const held = new Set(["s/x"]);
    let leaving: Promise<void> | null = null;
    const { cluster, presence, when } = recordingCluster(redis.url, {
      commandTimeout: 300,
      holds: (room, nickname) => {
        const name = `${room}/${nickname}`;
        // The ghost check asks about x, listed by Redis: the relay lets go of
        // x just then (its connection broke), as the hub does: no longer held,
        // and its leave sent.
        if (name === "s/x" && leaving === null) {
          held.delete(name);
          leaving = cluster.leave("s", "x", "left");
        }
        return held.has(name);
      },
    });
    await using raw = await redisClient(redis.url);
    try {
      await cluster.subscribe("s");
      await cluster.join("s", { nickname: "x", role: "peer", suffixed: false });
      // A command that times out makes the next heartbeat check for ghosts,
      // and leaves one.
      await joinTooLate(cluster, raw);
      await when(() => presence.includes("leave s/ghost"), "leave of the ghost");
      await when(() => leaving !== null && presence.includes("leave s/x"), "leave of x");
      await leaving;
      assert.equal(await raw.sendCommand(["HGET", "immortal:relay:r:73:m", "x"]), null);
      const warnings = records.filter((r) => r.level === "warning").map(renderRecord);
      assert.ok(
        !warnings.some((line) => line.includes("Node x of s was left in Redis")),
        warnings.join("\n"),
      );
      assert.ok(warnings.some((line) => line.includes("Node ghost of s was left in Redis")));
    } finally {
      cluster.close();
    }
  });
});

Deno.test("cluster: a ghost held again before its turn comes (a node resuming here while another ghost is let go) is not let go", async () => {
  await using redis = await startRedis({ persist: false });
  // Each ghost is judged twice: when the list comes, and before its own
  // leave. The first time both are ghosts; by the second, both are held
  // again (as a node that resumed here meanwhile is).
  const asked = new Map<string, number>();
  let checked: () => void = () => {};
  const bothAsked = new Promise<void>((resolve) => checked = resolve);
  const { cluster } = recordingCluster(redis.url, {
    commandTimeout: 300,
    holds: (_room, nickname) => {
      const times = (asked.get(nickname) ?? 0) + 1;
      asked.set(nickname, times);
      if (asked.get("g1") && asked.get("g2")) checked();
      return times > 1;
    },
  });
  await using raw = await redisClient(redis.url);
  try {
    await cluster.subscribe("s");
    await joinTooLate(cluster, raw, ["g1", "g2"]);
    await within(30_000, "the ghost check", bothAsked);
    // Heartbeats never overlap: once the next one starts, the check is done.
    const beat = cluster.heartbeats;
    await waitUntil(() => cluster.heartbeats > beat, "the next heartbeat");
    for (const nickname of ["g1", "g2"]) {
      assert.notEqual(
        await raw.sendCommand(["HGET", "immortal:relay:r:73:m", nickname]),
        null,
        `${nickname}, held again, was let go`,
      );
    }
  } finally {
    cluster.close();
  }
});

Deno.test("cluster: after Redis itself stalled past the heartbeat TTL and the command timeout, no relay sweeps the others", async () => {
  await using redis = await startRedis({ persist: false });
  // A command timeout shorter than the stall: heartbeats given up here stay queued in Redis.
  const a = recordingCluster(redis.url, { held: new Set(["s/a"]), commandTimeout: 1000 });
  const b = recordingCluster(redis.url, { held: new Set(["s/b"]), commandTimeout: 1000 });
  await using raw = await redisClient(redis.url);
  try {
    for (const [node, nickname] of [[a, "a"], [b, "b"]] as const) {
      await node.cluster.subscribe("s");
      await node.cluster.join("s", { nickname, role: "peer", suffixed: false });
    }
    await waitUntil(() => a.cluster.heartbeats > 1 && b.cluster.heartbeats > 1, "heartbeats");
    // In Redis's own time, every heartbeat runs out while it is paused (TTL 3 s); several
    // heartbeats of each relay queue up and then run back to back.
    await raw.sendCommand(["CLIENT", "PAUSE", "5000", "WRITE"]);
    const since = [a.cluster.heartbeats, b.cluster.heartbeats];
    await waitUntil(
      () => a.cluster.heartbeats >= since[0] + 2 && b.cluster.heartbeats >= since[1] + 2,
      "two heartbeats of each relay after the pause",
    );
    for (const node of [a, b]) {
      assert.deepEqual(node.presence.filter((p) => p.startsWith("leave")), []);
    }
    assert.notEqual(await raw.sendCommand(["HGET", "immortal:relay:r:73:m", "a"]), null);
    assert.notEqual(await raw.sendCommand(["HGET", "immortal:relay:r:73:m", "b"]), null);
  } finally {
    a.cluster.close();
    b.cluster.close();
  }
});

/** A hub on Redis, on a clock the test moves by hand. */
function clusterHub(url: string, options: RelayOptions = {}) {
  const clock = { now: 0 };
  const hub = new Hub(relaySettings({ redis: url, ...options }), () => clock.now);
  const join = async (nickname: string, fields: Partial<HelloFrame> = {}) => {
    const sink = new FakeSink();
    const hello: HelloFrame = { t: "hello", session: "s", nickname, role: "peer", ...fields };
    const member = await hub.admit({ ...hello }, null, sink);
    const welcome = sink.frames.find((f) => f.t === "welcome") as WelcomeFrame;
    return { member, sink, welcome };
  };
  return { hub, clock, join, [Symbol.dispose]: () => hub.close() };
}

Deno.test("cluster hub: a numbered message refused by the rate limit does not make the next one a gap", async () => {
  await using redis = await startRedis({ persist: false });
  using h = clusterHub(redis.url, { rate: 1 });
  const a = await h.join("a", { id: "AAAAAAAAAAAAAAAAAAAAAA" });
  const b = await h.join("b");
  // A burst of two, then the third is refused.
  for (const seq of [1, 2, 3]) h.hub.receive(a.member, { t: "msg", seq, text: String(seq) });
  await a.sink.until(
    () => a.sink.frames.some((f) => f.t === "error" && f.code === "rate-limited" && f.seq === 3),
    "rate-limited refusal of 3",
  );
  h.clock.now += 1000;
  h.hub.receive(a.member, { t: "msg", seq: 4, text: "4" });
  await b.sink.until(
    () => b.sink.frames.some((f) => f.t === "msg" && f.text === "4") || a.sink.closed !== null,
    "message 4",
  );
  assert.equal(a.sink.closed, null, "the node was sent away as if Redis had not taken a message");
  assert.deepEqual(
    b.sink.frames.flatMap((f) => f.t === "msg" ? [f.text] : []),
    ["1", "2", "4"],
  );
});

Deno.test("cluster hub: a fresh join of a nickname Redis gave up while its node was here gets a member of its own, with its own token", async () => {
  await using redis = await startRedis({ persist: false });
  using h = clusterHub(redis.url);
  await using raw = await redisClient(redis.url);
  const first = await h.join("alice");
  // Redis lets alice go (a sweep) whose leave event has not reached this relay yet.
  await raw.sendCommand(["HDEL", "immortal:relay:r:73:m", "alice"]);
  await raw.sendCommand(["HINCRBY", "immortal:relay:r:73:n", "peer", "-1"]);
  const second = await h.join("alice", { role: "bridge" });
  assert.equal(second.welcome.nickname, "alice");
  assert.notEqual(
    second.welcome.token,
    first.welcome.token,
    "a new node was given another's token",
  );
  assert.equal(second.member.role, "bridge");
  assert.deepEqual(first.sink.closed, {
    code: 4408,
    reason: "the cluster declared this node gone",
  });
  assert.equal(h.hub.stats.nodes, 1);
});

Deno.test("cluster: the key relays open pipes with is read again after Redis lost it and another relay made a new one", async () => {
  await using redis = await startRedis({ persist: false });
  const a = recordingCluster(redis.url);
  await using raw = await redisClient(redis.url);
  try {
    const first = await a.cluster.key();
    await raw.sendCommand(["FLUSHALL"]);
    // A relay started now (or restarted) makes a new key.
    const c = recordingCluster(redis.url);
    const fresh = await c.cluster.key().finally(() => c.cluster.close());
    assert.notEqual(fresh, first);
    // A relay shown a key it does not know asks Redis again (at most once a second).
    assert.equal(await a.cluster.key(), first, "the key is kept between pipes");
    const deadline = Date.now() + 20_000;
    let seen = first;
    while (seen !== fresh && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      seen = await a.cluster.key(true);
    }
    assert.equal(seen, fresh);
  } finally {
    a.cluster.close();
  }
});

Deno.test("cluster: a reload that found the key unchanged is the answer for a second: a stream of 401s is not a stream of Redis reads", async () => {
  await using redis = await startRedis({ persist: false });
  const a = recordingCluster(redis.url);
  await using raw = await redisClient(redis.url);
  /** GETs Redis ran since the last reset of its statistics. */
  const gets = async () => {
    const info = await raw.sendCommand(["INFO", "commandstats"]) as string;
    return Number(/cmdstat_get:calls=(\d+)/.exec(info)?.[1] ?? 0);
  };
  try {
    const key = await a.cluster.key();
    await raw.sendCommand(["CONFIG", "RESETSTAT"]);
    // The first refusal reads the key again: it may be stale.
    assert.equal(await a.cluster.reloadKey(), key);
    assert.equal(await gets(), 1);
    // It was not: the refusals that follow (a node's bad token, say) read nothing.
    for (let i = 0; i < 20; i++) assert.equal(await a.cluster.reloadKey(), key);
    assert.equal(await gets(), 1);
  } finally {
    a.cluster.close();
  }
});

Deno.test("cluster: the pub/sub connection reconnecting again and again does not fail the commands of the other", async () => {
  await using redis = await startRedis({ persist: false });
  const a = recordingCluster(redis.url);
  await using raw = await redisClient(redis.url);
  try {
    await a.cluster.subscribe("room");
    let failed = 0;
    for (let i = 0; i < 100; i++) {
      // Redis drops the subscriber (an output buffer limit, an idle proxy): it reconnects.
      await raw.sendCommand(["CLIENT", "KILL", "TYPE", "pubsub"]);
      await a.cluster.member("room", "nobody").catch(() => failed++);
    }
    assert.equal(failed, 0, "commands failed while only the subscriber was away");
    // Closed once the subscriber is back: a reconnect under way would leave its timer behind.
    await waitUntil(
      () => a.cluster.subscribe("after").then(() => true, () => false),
      "a subscribe once Redis is back",
    );
  } finally {
    a.cluster.close();
  }
});

Deno.test("cluster hub: late presence events about an earlier membership (a leave, a move) do not drop a node that is back", async () => {
  await using redis = await startRedis({ persist: false });
  using h = clusterHub(redis.url);
  await using raw = await redisClient(redis.url);
  const alice = await h.join("alice");
  const bob = await h.join("bob");
  const channel = "immortal:relay:c:73";
  // A leave numbered before alice's join, as when her earlier membership's leave comes late.
  await raw.sendCommand(["PUBLISH", channel, `l\n${alice.member.presence - 1}\nalice\ngone`]);
  // Pub/sub keeps order: once bob hears zed join, the leave before it was handled.
  await raw.sendCommand(["PUBLISH", channel, `j\n${bob.member.presence + 1}\nzed\npeer`]);
  await bob.sink.until(
    () => bob.sink.frames.some((f) => f.t === "join" && f.nickname === "zed"),
    "zed's join",
  );
  assert.equal(alice.sink.closed, null, "a stale leave dropped a node that is here");
  // A move of alice to another relay that Redis no longer shows (she is back here), then a
  // real one of bob: moves are handled in order, so once bob is gone alice's was handled.
  await raw.sendCommand(["HSET", "immortal:relay:r:73:m", "bob", "peer,elsewhere,x,"]);
  await raw.sendCommand(["PUBLISH", channel, "r\nalice\nelsewhere"]);
  await raw.sendCommand(["PUBLISH", channel, "r\nbob\nelsewhere"]);
  await bob.sink.until(() => bob.sink.closed !== null, "bob's move");
  assert.equal(bob.sink.closed?.code, 4409);
  assert.equal(alice.sink.closed, null, "a stale move dropped a node that is here");
});

Deno.test("cluster hub: messages trimmed from the history before they reached this relay send its numbered nodes back to recover, told what they missed", async () => {
  await using redis = await startRedis({ persist: false });
  using h = clusterHub(redis.url);
  await using raw = await redisClient(redis.url);
  const alice = await h.join("alice", { id: "AAAAAAAAAAAAAAAAAAAAAA" });
  const bob = await h.join("bob");
  // Offsets 1-2 never reached this relay and are gone from the history; 3 is there and published.
  const prefix = "immortal:relay:r:73";
  await raw.sendCommand(["SET", `${prefix}:o`, "3"]);
  const data = '{"t":"msg","from":"zed","offset":3,"text":"3"}';
  await raw.sendCommand(
    ["XADD", `${prefix}:h`, "3-0", ...[
      "d",
      data,
      "f",
      "zed",
      "r",
      "peer",
      "t",
      "",
      "a",
      String(Date.now()),
    ]],
  );
  await raw.sendCommand([
    "PUBLISH",
    "immortal:relay:c:73",
    `m\n3\n${alice.welcome.epoch}\nzed\npeer\n\n${data}`,
  ]);
  await alice.sink.until(() => alice.sink.closed !== null, "alice sent back");
  assert.equal(alice.sink.closed?.code, 4503);
  // Bob, without an id, cannot recover: he goes on with what there is.
  await bob.sink.until(() => bob.sink.frames.some((f) => f.t === "msg"), "message 3 at bob");
  assert.equal(bob.sink.closed, null);
  // Alice back with her position: the welcome says what she missed.
  const back = await h.join("alice", {
    id: "AAAAAAAAAAAAAAAAAAAAAA",
    token: alice.welcome.token,
    recover: { epoch: alice.welcome.epoch!, offset: 0 },
  });
  assert.equal(back.welcome.missed, "window");
});

Deno.test("cluster: expired nickname reservations do not pile up in a long-lived room", async () => {
  await using redis = await startRedis({ persist: false });
  // Reservations that have run out as soon as they are made.
  const { cluster } = recordingCluster(redis.url, { reclaimWindow: -1 });
  await using raw = await redisClient(redis.url);
  try {
    await cluster.subscribe("s");
    await cluster.join("s", { nickname: "stays", role: "peer", suffixed: false });
    for (let i = 0; i < 1100; i++) {
      await cluster.join("s", { nickname: `n${i}`, role: "peer", suffixed: false });
      await cluster.leave("s", `n${i}`, "gone");
    }
    const reserved = Number(await raw.sendCommand(["HLEN", "immortal:relay:r:73:v"]));
    assert.ok(reserved < 1000, `${reserved} reservations kept`);
  } finally {
    cluster.close();
  }
});

Deno.test("cluster: a node that said bye frees its nickname at once; one that is gone keeps it reserved for its token", async () => {
  await using redis = await startRedis({ persist: false });
  const { cluster } = recordingCluster(redis.url);
  try {
    await cluster.subscribe("s");
    const join = async (nickname: string) => {
      return joinedOf(await cluster.join("s", { nickname, role: "peer", suffixed: false }))
        .nickname;
    };
    assert.equal(await join("stays"), "stays");
    assert.equal(await join("left"), "left");
    assert.equal(await join("gone"), "gone");
    await cluster.leave("s", "left", "left");
    await cluster.leave("s", "gone", "gone");
    assert.equal(await join("left"), "left", "free for a node without its token");
    assert.equal(await join("gone"), "gone(1)", "reserved for its token");
  } finally {
    cluster.close();
  }
});

Deno.test("cluster: a gone node's claim gets its nickname back (kept through a replaced connection); another claim, or a joined holder, does not", async () => {
  await using redis = await startRedis({ persist: false });
  const { cluster } = recordingCluster(redis.url);
  try {
    await cluster.subscribe("s");
    const claim = "tunnel-server-claim-0123456789";
    const join = async (nickname: string, fields: { claim?: string; token?: string } = {}) => {
      const joined = await cluster.join("s", {
        nickname,
        role: "peer",
        suffixed: false,
        ...fields,
      });
      return joinedOf(joined);
    };
    assert.equal((await join("stays")).nickname, "stays");
    const first = await join("lab", { claim });
    assert.equal((await join("lab", { claim })).nickname, "lab(1)", "the holder is joined");
    // Its connection replaced (by its token): the claim stays with the membership.
    assert.equal((await join("lab", { token: first.token })).kind, "replace");
    await cluster.leave("s", "lab", "gone");
    assert.equal((await join("lab")).nickname, "lab(2)", "reserved");
    assert.equal((await join("lab", { claim: "another-claim-0123456789ab" })).nickname, "lab(3)");
    const back = await join("lab", { claim });
    assert.equal(back.nickname, "lab");
    assert.equal(back.lastSeq, 0, "a new process numbers its messages anew");
  } finally {
    cluster.close();
  }
});

Deno.test("cluster hub: a broken connection's grace does not run out while its node's join is in flight: no leave lands after the join", async () => {
  await using redis = await startRedis({ persist: false });
  using h = clusterHub(redis.url);
  await using raw = await redisClient(redis.url);
  try {
    const a = await h.join("a");
    const x = await h.join("x");
    h.hub.detach(x.member, x.sink); // x's connection broke at time 0
    // x comes back while Redis holds writes: its join waits there.
    await raw.sendCommand(["CLIENT", "PAUSE", "60000", "WRITE"]);
    const back = h.join("x", { token: x.welcome.token });
    await waitUntil(() => h.hub.rooms.get("s")!.joining.size > 0, "x's join in flight");
    h.clock.now = 3000; // past the 2.5 s grace of a broken connection
    h.hub.sweep();
    await raw.sendCommand(["CLIENT", "UNPAUSE"]);
    const again = await back;
    assert.equal(again.welcome.nickname, "x");
    // A message after the join: any leave of x would have been published before it.
    h.hub.receive(a.member, { t: "msg", text: "after" });
    await again.sink.until(
      () => again.sink.frames.some((f) => f.t === "msg" && f.text === "after"),
      "the message after the join",
    );
    assert.deepEqual(
      a.sink.frames.filter((f) => f.t === "leave"),
      [],
      "x was announced gone while it was joining again",
    );
    assert.notEqual(await raw.sendCommand(["HGET", "immortal:relay:r:73:m", "x"]), null);
  } finally {
    await raw.sendCommand(["CLIENT", "UNPAUSE"]).catch(() => {});
  }
});

Deno.test("cluster: the commands in flight share one timeout timer, not one each", async () => {
  await using redis = await startRedis({ persist: false });
  const { cluster, until } = recordingCluster(redis.url);
  try {
    await cluster.subscribe("s");
    for (const nickname of ["a", "b"]) {
      assert.equal(
        typeof await cluster.join("s", { nickname, role: "peer", suffixed: false }),
        "object",
      );
    }
    // Timers started while 200 messages go to Redis at once (a relay sends a command per message).
    const started = { timeouts: 0, intervals: 0 };
    const { setTimeout: realTimeout, setInterval: realInterval } = globalThis;
    globalThis.setTimeout = ((...args: Parameters<typeof realTimeout>) => {
      started.timeouts++;
      return realTimeout(...args);
    }) as typeof realTimeout;
    globalThis.setInterval = ((...args: Parameters<typeof realInterval>) => {
      started.intervals++;
      return realInterval(...args);
    }) as typeof realInterval;
    try {
      const sent = await Promise.all(
        Array.from(
          { length: 200 },
          (_, i) => cluster.send("s", { from: "a", role: "peer", prev: 0, ...frame(`m${i}`) }),
        ),
      );
      assert.ok(sent.every((result) => result.status === "ok"));
    } finally {
      globalThis.setTimeout = realTimeout;
      globalThis.setInterval = realInterval;
    }
    // One watchdog at most (none if the joins' is still running), where there used to be one each.
    assert.ok(started.timeouts + started.intervals <= 1, JSON.stringify(started));
    await until(200);
  } finally {
    cluster.close();
  }
});

Deno.test("cluster: a command waiting when the relay leaves the cluster fails then, and later ones at once", async () => {
  await using redis = await startRedis({ persist: false });
  const { cluster } = recordingCluster(redis.url, { commandTimeout: 60_000 });
  await using raw = await redisClient(redis.url);
  try {
    await cluster.subscribe("s");
    // Scripts wait while writes are paused: this join waits, far from its timeout.
    await raw.sendCommand(["CLIENT", "PAUSE", "60000", "WRITE"]);
    const waiting = cluster.join("s", { nickname: "x", role: "peer", suffixed: false });
    cluster.close();
    await assert.rejects(waiting);
    await assert.rejects(
      cluster.join("s", { nickname: "y", role: "peer", suffixed: false }),
      /left the cluster/,
    );
  } finally {
    await raw.sendCommand(["CLIENT", "UNPAUSE"]);
    cluster.close();
  }
});

Deno.test("cluster key prefix: as PROTOCOL.md 2.22 gives it, open relays' and each secret's apart", async () => {
  assert.equal(await clusterPrefix(undefined), "immortal:relay:");
  // HMAC-SHA256(key "right", "immortal relay cluster keys"), its first 8 bytes in hex.
  assert.equal(await clusterPrefix("right"), "immortal:relay:s:de743e9b0616e670:");
  assert.notEqual(await clusterPrefix("another"), await clusterPrefix("right"));
});
