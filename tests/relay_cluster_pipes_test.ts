/**
 * Pipe requests relayed between the relays of a cluster (two relays on one
 * real redis-server): a node's pipe request that reaches a relay it is not
 * joined on goes on to its own relay, and a dialer that gives up while it
 * waits to be paired is let go at once there too, not held by either relay
 * until the pairing timeout.
 */

import assert from "node:assert/strict";
import { openWebSocketLink } from "../lib/link/_websocket_client.ts";
import { waitUntil, within } from "./_helpers.ts";
import { startRedis } from "./_redis.ts";
import { rawStreamNode, startRelay } from "./_relay.ts";

/**
 * A pipe request of node `nickname` (with its `token`) to "b" in session
 * "p", as pipe `id`, sent to the relay at `url`: an HTTP-streaming opening,
 * or a WebSocket; given up when `signal` aborts. Settles with the status
 * the relay answered (a WebSocket's 101 as 101), or rejects once given up.
 */
async function dialPipe(
  kind: "http" | "websocket",
  url: string,
  nickname: string,
  token: string,
  id: string,
  signal: AbortSignal,
): Promise<number> {
  const headers = {
    "x-relay-session": "p",
    "x-relay-nickname": nickname,
    "x-relay-token": token,
    "x-relay-pipe": id,
    "x-relay-pipe-to": "b",
  };
  if (kind === "websocket") {
    const target = new URL("/relay/pipe", url);
    target.protocol = "ws:";
    try {
      (await openWebSocketLink(target, signal, headers)).close();
      return 101;
    } catch (error) {
      if (signal.aborted) throw error;
      const status = /answered (\d{3})/.exec(String(error))?.[1];
      if (status === undefined) throw error;
      return Number(status);
    }
  }
  const answer = await fetch(`${url}/relay/pipe`, {
    method: "POST",
    headers: { ...headers, "x-immortal-link": "open" },
    signal,
  });
  await answer.body?.cancel();
  return answer.status;
}

for (const kind of ["http", "websocket"] as const) {
  Deno.test(`relay cluster pipes (${kind}): a pipe request sent to the relay its node is not on, whose dialer gave up while it waited to be paired, is let go at once by both relays, not held until the pairing timeout`, async () => {
    await using redis = await startRedis();
    // A minute to pair: let go within the 20 s waited for below is "at once".
    await using one = startRelay({ redis: redis.url, authTimeout: 60_000 });
    await using two = startRelay({ redis: redis.url, authTimeout: 60_000 });
    // Both nodes on `one`; b is offered pipes and never answers them.
    const b = await rawStreamNode(one.url, "p", "b");
    const a = await rawStreamNode(one.url, "p", "a");
    const connections = (relay: typeof one) => relay.relay.stats.connections!.connections;
    try {
      const baseline = { one: connections(one), two: connections(two) };
      // a's request reaches `two`, which holds neither node: it goes on to `one`.
      const dialer = new AbortController();
      const dialing = dialPipe(kind, two.url, "a", a.token, "lost", dialer.signal);
      dialing.catch(() => {});
      // Offered to b by `one`: the request waits there to be paired, through `two`.
      assert.equal((await within(30_000, "the offer", b.nextOf("pipe"))).id, "lost");
      assert.equal(two.relay.stats.pipes!.relayed, 1, "sent on by the relay it reached");
      dialer.abort();
      await assert.rejects(dialing);

      // `two` lets its request go (and its connection with it) ...
      await waitUntil(
        () => connections(two) <= baseline.two,
        "the dialer's request let go by the relay it reached",
        20_000,
      );
      // ... and `one` the request `two` sent on: the pipe id is free again
      // there (a request with it is refused as in use while one is held).
      // That new request waits to be paired in turn (offered to b): given up too.
      const offer = b.nextOf("pipe");
      offer.catch(() => {});
      await waitUntil(
        async () => {
          const probe = new AbortController();
          const probing = dialPipe("http", one.url, "a", a.token, "lost", probe.signal);
          probing.catch(() => {});
          const outcome = await within(
            30_000,
            "an answer or an offer",
            Promise.race([probing, offer.then(() => "offered" as const)]),
          );
          if (outcome === "offered") {
            probe.abort();
            await probing.catch(() => {});
            return true;
          }
          assert.equal(outcome, 409, "a request with that pipe id refused for another reason");
          return false;
        },
        "the pipe id free again on the node's relay",
        20_000,
      );
      await waitUntil(
        () => connections(one) <= baseline.one,
        "every pipe request let go by the node's relay",
        20_000,
      );
      // Dropped, not timed out: no relay refused a pipe for want of an answer.
      for (const relay of [one, two]) {
        assert.equal(relay.relay.stats.refused["pipe-timeout"] ?? 0, 0);
      }
    } finally {
      await a.close();
      await b.close();
    }
  });
}
