/**
 * The rules a relay cluster keeps in Redis, on a real redis-server, one at a
 * time: a message taken after one that failed on its way is refused (so the
 * resend of the failed one cannot look like a duplicate), a resend is a
 * duplicate, and what pub/sub did not bring is filled from the history in
 * offset order.
 */

import assert from "node:assert/strict";
import { createClient } from "@redis/client";
import { type ClusterMessage, RelayCluster } from "../lib/relay/_cluster.ts";
import { startRedis } from "./_redis.ts";

const SETTINGS = {
  historyLength: 1000,
  roomTtl: 60_000,
  reclaimWindow: 60_000,
  maxNodesPerSession: 100,
  maxSessions: 100,
};

/** A cluster member that records the messages it is given, and waits for a count of them. */
function recordingCluster(url: string) {
  const messages: ClusterMessage[] = [];
  let wake = () => {};
  const cluster = new RelayCluster({ url, ...SETTINGS }, {
    message: (_room, message) => {
      messages.push(message);
      wake();
    },
    presence: () => {},
    moved: () => {},
    forgotten: () => {},
    pipe: () => {},
  });
  return {
    cluster,
    messages,
    /** Resolves once `count` messages came (fails after 20 s: a test never hangs). */
    async until(count: number): Promise<void> {
      if (messages.length >= count) return;
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        await new Promise<void>((resolve, reject) => {
          timer = setTimeout(
            () => reject(new Error(`${messages.length} of ${count} messages came`)),
            20_000,
          );
          wake = () => messages.length >= count && resolve();
        });
      } finally {
        clearTimeout(timer);
      }
    },
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
      assert.ok(typeof joined === "object" && joined.lastSeq === 0);
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
  const raw = createClient({ url: redis.url });
  await raw.connect();
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
    await raw.sendCommand(["PUBLISH", `${prefix}c:${room}`, "m\n3\ny\npeer\n\nm3"]);
    // A duplicate of 3 and then 4 follow through pub/sub as usual.
    await raw.sendCommand(["PUBLISH", `${prefix}c:${room}`, "m\n3\ny\npeer\n\nm3"]);
    await raw.sendCommand(["PUBLISH", `${prefix}c:${room}`, "m\n4\ny\npeer\n\nm4"]);
    await until(4);
    assert.deepEqual(messages.map((m) => [m.offset, m.data]), [
      [1, "m1"],
      [2, "m2"],
      [3, "m3"],
      [4, "m4"],
    ]);
  } finally {
    cluster.close();
    raw.destroy();
  }
});
