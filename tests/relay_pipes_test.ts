/**
 * Relay pipes: immortal sessions between two nodes that reach each other only
 * through the relay, surviving relay restarts; who may open pipes; and the
 * relay's bounded buffer.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  ImmortalError,
  RelayNode,
  type RelayNodeOptions,
  RelayRefusedError,
  type RelayServer,
  serveRelay,
  TunnelClient,
} from "../mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import {
  pattern,
  patternHash,
  receiveAll,
  renderRecord,
  sendPattern,
  waitUntil,
  within,
  withLogs,
} from "./_helpers.ts";
import { recordEvents } from "./_relay.ts";
import { startNginx, startTinyproxy } from "./_proxies.ts";
import { cutWhile, FAST } from "./_tunnel_helpers.ts";

const NODE_FAST = { backoff: { initial: 20, max: 200 } };

/** A relay on a loopback port that can be stopped and started again on the same port. */
function restartableRelay(secret: string) {
  let server: RelayServer = serveRelay({ hostname: "127.0.0.1", port: 0, secret, onListen() {} });
  const port = server.addr.port;
  return {
    url: `http://127.0.0.1:${port}`,
    get server() {
      return server;
    },
    /**
     * Stops the relay (every node and pipe is cut) and starts a fresh one,
     * with no memory (and `newSecret`, if given).
     */
    async restart(newSecret = secret) {
      await server.shutdown();
      server = serveRelay({ hostname: "127.0.0.1", port, secret: newSecret, onListen() {} });
    },
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

function join(url: string, nickname: string, extra: Partial<RelayNodeOptions> = {}) {
  return RelayNode.connect(url, { session: "lab", nickname, secret: "s", ...NODE_FAST, ...extra });
}

Deno.test("relay pipes: an immortal session between two nodes moves 16 MiB each way across two relay restarts, fired by bytes received", async () => {
  await using relay = restartableRelay("s");
  await using lab = await join(relay.url, "lab");
  using listener = lab.listen({ key: "k", ...FAST });
  await using laptop = await join(relay.url, "laptop");
  await using conn = await laptop.connectTo("lab", { key: "k", ...FAST });
  await using server = await listener.accept();
  const size = 16 << 20;
  // The relay restarts when the lab has received a third, and two thirds.
  const restartsAt = [size / 3, (2 * size) / 3];
  let received = 0;
  let restarts = 0;
  const watched = {
    read: async (buffer: Uint8Array) => {
      const n = await server.read(buffer);
      if (n !== null) received += n;
      if (restartsAt.length > 0 && received >= restartsAt[0]) {
        restartsAt.shift();
        await relay.restart();
        restarts++;
      }
      return n;
    },
  };
  const [sentUp, gotUp, sentDown, gotDown] = await Promise.all([
    sendPattern(conn, 1, size),
    receiveAll(watched),
    sendPattern(server, 2, size),
    receiveAll(conn),
  ]);
  assert.equal(restarts, 2);
  assert.equal(gotUp.sha256, sentUp);
  assert.equal(sentUp, patternHash(1, size));
  assert.equal(gotDown.sha256, sentDown);
  assert.equal(sentDown, patternHash(2, size));
  // One session all along: the pipes were replaced under it.
  assert.equal(listener.sessionCount, 1);
  assert.ok(relay.server.relay.stats.pipes!.opened >= 1);
});

Deno.test("relay pipes: pipes dialed while their node is rejoining the relay wait for it; the newest goes the moment it is back, alone (a session aborts the others as soon as one links); a closed node fails them as closed", async () => {
  await using relay = restartableRelay("s");
  await using lab = await join(relay.url, "lab");
  // The lab accepts pipes from the laptop (whose links the test only opens and closes).
  using _listener = lab.listen({ key: "k", ...FAST });
  // The laptop reaches the relay through a proxy that can keep it away.
  const proxy = await FaultProxy.start({ targetPort: Number(new URL(relay.url).port) });
  try {
    await using laptop = await join(`http://127.0.0.1:${proxy.port}`, "laptop");
    const events = recordEvents(laptop);
    /** Keeps the laptop away from the relay until it has noticed. */
    const cutOff = async () => {
      const seen = events.events.length;
      proxy.refuseNew(true);
      // The node's connection, and the pipe still closing, if any.
      assert.ok(proxy.reset() >= 1);
      await events.untilState("disconnected", seen, "the laptop lost the relay");
    };
    await cutOff();
    // A session races a fresh dial every probe interval while none answers:
    // three dials of one dialer wait. Before, each failed at once ("not
    // joined"), and the session redialed only a backoff after its node was
    // back; then, all three went at once, and the peer was offered three pipes.
    const dialer = laptop.pipeDialer("lab");
    const controllers = [0, 1, 2].map(() => new AbortController());
    const [older, old, newest] = controllers.map((c) => dialer(c.signal));
    const opened = relay.server.relay.stats.pipes!.opened;
    proxy.refuseNew(false);
    // As a session does: once one links, the others are aborted, in that turn.
    const link = await within(
      30_000,
      "the newest dial",
      newest.then((link) => {
        for (const controller of controllers) controller.abort(new Error("raced out"));
        return link;
      }),
    );
    await waitUntil(() => relay.server.relay.stats.pipes!.opened > opened, "the pipe paired");
    await assert.rejects(older, /raced out/);
    await assert.rejects(old, /raced out/);
    assert.equal(relay.server.relay.stats.pipes!.opened, opened + 1, "one pipe for three dials");
    link.close();
    // A node that closes lets go of the dials waiting for it, as closed for
    // good: a session over its pipes ends instead of redialing until its resume timeout.
    await cutOff();
    const waiting = dialer(AbortSignal.timeout(60_000));
    await laptop.close();
    await assert.rejects(
      waiting,
      (e: unknown) =>
        e instanceof ImmortalError && e.code === "closed" &&
        /the relay node is closed/.test(e.message),
    );
  } finally {
    await proxy.close();
  }
});

Deno.test("relay pipes: a pipe that fails as the relay goes away, before its node has noticed, waits for the node to be back and goes then; one that fails while the node stays connected fails", async () => {
  await using relay = restartableRelay("s");
  await using lab = await join(relay.url, "lab");
  const labEvents = recordEvents(lab);
  using _listener = lab.listen({ key: "k", ...FAST });
  const proxy = await FaultProxy.start({ targetPort: Number(new URL(relay.url).port) });
  try {
    await using laptop = await join(`http://127.0.0.1:${proxy.port}`, "laptop");
    const events = recordEvents(laptop);
    const dialer = laptop.pipeDialer("lab");
    // The path to the relay refuses the pipe, and the node's own connection
    // stays up: the failure is the pipe's, and the dial says so (after the
    // grace it gives the node to notice a dead relay).
    proxy.refuseNew(true);
    await assert.rejects(
      dialer(AbortSignal.timeout(60_000)),
      (e: unknown) => !(e instanceof ImmortalError),
    );
    assert.equal(laptop.state, "connected");
    // Now as a relay that dies: the refusal of the pipe takes the node's
    // connection down with it, and the node notices only after the dial
    // failed; the relay comes back knowing nobody. Before, the dial failed,
    // and a session redialed only a backoff later.
    const seen = events.events.length;
    proxy.refuseNew(true, () => proxy.reset());
    const dialing = dialer(AbortSignal.timeout(60_000));
    await events.untilState("disconnected", seen, "the laptop lost the relay");

    const labSeen = labEvents.events.length;
    await relay.restart();
    await labEvents.untilState("connected", labSeen, "the lab back on the new relay");

    proxy.refuseNew(false);
    const link = await within(30_000, "the pipe after the node came back", dialing);
    link.close();
  } finally {
    await proxy.close();
  }
});

Deno.test("relay pipes: a peer the relay does not know is reported at once to a new dialer, and waited for by one whose pipes reached it before (after a restart the nodes come back one after the other)", async () => {
  await using relay = restartableRelay("s");
  await using laptop = await join(relay.url, "laptop");
  const events = recordEvents(laptop);
  const nobody = laptop.pipeDialer("lab")(AbortSignal.timeout(60_000));
  await assert.rejects(
    nobody,
    (e: unknown) => e instanceof RelayRefusedError && e.code === "no-such-node",
  );
  const dialer = laptop.pipeDialer("lab");
  {
    await using lab = await join(relay.url, "lab");
    using _listener = lab.listen({ key: "k", ...FAST });
    (await dialer(AbortSignal.timeout(60_000))).close();
  }
  await events.until(
    () => events.events.some((e) => e.type === "leave" && e.nickname === "lab"),
    "the laptop hears the lab leave",
  );
  // Before, this failed at once (no-such-node), and a session backed off.
  const dialing = dialer(AbortSignal.timeout(60_000));
  await using lab = await join(relay.url, "lab");
  using _listener = lab.listen({ key: "k", ...FAST });
  const link = await within(30_000, "the pipe once the lab is back", dialing);
  link.close();
});

Deno.test("relay pipes: a session whose peer is gone for good still backs off: its redials wait once for the peer, then fail, instead of a pipe request every probe interval", async () => {
  await using relay = restartableRelay("s");
  const port = Number(new URL(relay.url).port);
  // Each node reaches the relay through a proxy: the lab's can cut it off,
  // the laptop's counts its connections.
  const labProxy = await FaultProxy.start({ targetPort: port });
  const proxy = await FaultProxy.start({ targetPort: port });
  try {
    await using lab = await join(`http://127.0.0.1:${labProxy.port}`, "lab");
    using listener = lab.listen({ key: "k", ...FAST });
    await using laptop = await join(`http://127.0.0.1:${proxy.port}`, "laptop");
    const events = recordEvents(laptop);
    const conn = await laptop.connectTo("lab", { key: "k" });
    const server = await listener.accept();
    // The lab vanishes (no bye: its session is not closed, the laptop's redials).
    labProxy.refuseNew(true);
    labProxy.reset();
    await events.until(
      () => events.events.some((e) => e.type === "leave" && e.nickname === "lab"),
      "the laptop hears the lab is gone",
    );
    const before = proxy.acceptedAt.length;
    // Each redial is one or two connections (WebSocket, then the HTTP request
    // that says why). When each call waited for the peer alone, the session
    // raced a fresh one every 50 ms for ever: 6 connections in 150 ms.
    await within(60_000, "six pipe connections", proxy.accepted(before + 6));
    const took = proxy.acceptedAt[before + 5] - proxy.acceptedAt[before];
    assert.ok(took >= 1000, `6 pipe connections in ${Math.round(took)} ms`);
    conn.close();
    server.close();
  } finally {
    await labProxy.close();
    await proxy.close();
  }
});

Deno.test("relay pipes: a node the relay refuses after a restart (another secret) says why and closes, and its listener ends instead of spinning on a closed acceptor", async () => {
  await using relay = restartableRelay("s");
  await using lab = await join(relay.url, "lab");
  using listener = lab.listen({ key: "k" });
  const accepting = listener.accept().then(
    (conn) => {
      conn.close();
      return "accepted";
    },
    (error: Error) => error.message,
  );
  const events = recordEvents(lab);
  await relay.restart("another secret");
  assert.match(await within(30_000, "the listener ended", accepting), /closed/);
  await events.until(
    () => events.events.some((e) => e.type === "state" && e.state === "closed"),
    "the node closed",
  );
  assert.ok(
    events.events.some((e) => e.type === "error" && e.code === "unauthorized"),
    JSON.stringify(events.events),
  );
});

Deno.test("relay pipes over HTTP streaming: a pipe whose nodes closed their ends closes at the relay when their connections do, not at its next write (a node's pipes are limited)", async () => {
  await using relay = restartableRelay("s");
  const http = { transport: "http" as const };
  await using lab = await join(relay.url, "lab", http);
  await using laptop = await join(relay.url, "laptop", http);
  using listener = lab.listen({ key: "k", ...FAST });
  for (let round = 1; round <= 3; round++) {
    {
      await using conn = await laptop.connectTo("lab", { key: "k", ...FAST });
      await using server = await listener.accept();
      await conn.write(new Uint8Array([round]));
      const got = new Uint8Array(1);
      assert.equal(await server.read(got), 1);
      assert.equal(got[0], round);
      assert.equal(relay.server.relay.stats.pipes!.open, 1);
    }
    // Both sessions ended and their links went away: the relay's copy of
    // the pipe, idle, learns it from the connections, not from a write.
    await waitUntil(() => relay.server.relay.stats.pipes!.open === 0, `pipe ${round} closed`);
  }
  assert.equal(relay.server.relay.stats.pipes!.opened, 3);
});

Deno.test("relay pipes: refused for an unknown node, another session's node, a node that accepts none or not this one, and a wrong key", async () => {
  await using relay = restartableRelay("s");
  await using lab = await join(relay.url, "lab");
  await using laptop = await join(relay.url, "laptop");
  await using other = await join(relay.url, "elsewhere", { session: "other" });
  // A refusal that stands is `refused`; a node that is not there may come
  // (`unreachable`).
  const refused = async (node: RelayNode, to: string, reason: RegExp, code: string) => {
    const error = await node.connectTo(to, { key: "k" }).then(
      () => assert.fail(`a pipe to ${to} was opened`),
      (error: Error) => error,
    );
    assert.match(error.message, reason);
    assert.ok(error instanceof ImmortalError && error.code === code, String(error));
    assert.ok(error.cause instanceof RelayRefusedError, String(error.cause));
  };
  await refused(laptop, "nobody", /no node "nobody" in this session/, "unreachable");
  await assert.rejects(
    laptop.connectTo("laptop", { key: "k" }),
    (e) =>
      e instanceof ImmortalError && e.code === "refused" && /"laptop" is this node/.test(e.message),
  );
  await refused(other, "lab", /no node "lab" in this session/, "unreachable");
  await refused(laptop, "lab", /lab refused the pipe: it accepts no pipes/, "refused");
  {
    using _listener = lab.listen({ key: "k", accepts: (nickname) => nickname === "someone-else" });
    await refused(laptop, "lab", /lab refused the pipe: not accepted/, "refused");
  }
  using listener = lab.listen({ key: "right" });
  await withLogs(async (records) => {
    await assert.rejects(laptop.connectTo("lab", { key: "wrong" }), /auth|key|proof/i);
    // Named by the node, not by the relay's address (all its socket sees).
    const refusal =
      /^Refused laptop \(through the relay at 127\.0\.0\.1:\d+\): pre-shared key missing or wrong$/;
    await waitUntil(() => records.some((r) => refusal.test(renderRecord(r))), "the refusal logged");
  });
  assert.equal(listener.sessionCount, 0);
  // Without a key there is no session through a relay at all.
  await assert.rejects(laptop.connectTo("lab", { key: "" }), /needs a key .*keygen/);
  assert.throws(() => laptop.listen({ key: "" }), /needs a key .*keygen/);
  // Without a member's join token, the relay opens nothing.
  const stranger = await fetch(`${relay.url}/relay/pipe`, {
    method: "POST",
    headers: { "x-immortal-link": "open", "x-relay-pipe": "p1", "x-relay-pipe-to": "lab" },
  });
  assert.equal(stranger.status, 401);
  assert.equal((await stranger.json()).error, "unauthorized");
});

Deno.test("relay pipes: a tunnel client opening over pipes fails at once on a node that refuses them, however long its connect wait; a dialer whose pipes linked before passes later refusals on for its session to retry", async () => {
  await using relay = restartableRelay("s");
  await using lab = await join(relay.url, "lab");
  await using laptop = await join(relay.url, "laptop");
  // An hour's wait: the test's own bound fails it if the refusal is waited out.
  await using client = new TunnelClient({
    port: 0,
    key: "k",
    encrypt: true,
    dialer: laptop.pipeDialer("lab"),
    connectWait: 3_600_000,
  });
  const error = await within(30_000, "the refused open", client.open().catch((e) => e));
  assert.ok(error instanceof ImmortalError && error.code === "refused", String(error));
  assert.match(error.message, /lab refused the pipe: it accepts no pipes/);

  const dial = laptop.pipeDialer("lab");
  const acceptor = lab.pipeAcceptor();
  const [link, accepted] = await Promise.all([
    dial(new AbortController().signal),
    acceptor.accept(),
  ]);
  link.close();
  accepted.close();
  acceptor.close();
  // The same name refusing now may be its node restarting: not final.
  const later = await dial(new AbortController().signal).catch((e) => e);
  assert.ok(later instanceof RelayRefusedError && later.code === "pipe-refused", String(later));
});

// Writer and reader transports, and what the relay may hold between them:
// a WebSocket end's queue (256 KiB plus the message that crossed it), an
// HTTP-stream reader's response queue (512 KiB plus a chunk: a message or a
// POST body passed on as it came), an HTTP-stream writer's upstream queue
// (512 KiB plus the 1 MiB POSTs in flight: 4).
const PIPE_CASES = [
  ["websocket", "websocket", 0.75],
  ["websocket", "http", 1.25],
  ["http", "http", 6],
] as const;
for (const [writerTransport, transport, boundMiB] of PIPE_CASES) {
  Deno.test(`relay pipes, ${writerTransport} writer and ${transport} reader: while the reader reads nothing, the relay holds a bounded buffer and the writer waits; then every byte arrives`, async () => {
    await using relay = restartableRelay("s");
    // The reading node reads its pipe only as it consumes it, over either
    // transport: the backlog is the relay's to bound.
    await using lab = await join(relay.url, "lab", { transport });
    await using laptop = await join(relay.url, "laptop", { transport: writerTransport });
    const acceptor = lab.pipeAcceptor();
    try {
      const [writing, reading] = await Promise.all([
        laptop.pipeDialer("lab")(AbortSignal.timeout(10_000)),
        acceptor.accept(),
      ]);
      const size = 64 << 20;
      let written = 0;
      const writer = (async () => {
        for (const chunk of pattern(3, size)) {
          await writing.write(chunk);
          written += chunk.length;
        }
      })();
      // Awaited below; a failure before that must not go unhandled meanwhile.
      writer.catch(() => {});
      // The lab reads nothing: the writer gets a bit ahead (socket buffers),
      // then waits. Watch until it has stopped making progress.
      let last = -1;
      await waitUntil(
        () => {
          const stuck = written === last && written > 0;
          last = written;
          return stuck;
        },
        "the writer waiting",
        30_000,
        200,
      );
      const held = relay.server.relay.stats.pipes!.heldBytes;
      assert.ok(written < size, "the writer wrote everything although nobody read");
      assert.ok(held > 0 && held <= boundMiB * (1 << 20), `the relay holds ${held} bytes`);
      console.log(`the writer waits after ${written} bytes; the relay holds ${held}`);
      // Now the lab reads: every byte arrives, in order.
      const [got] = await Promise.all([
        receiveSome(reading, size),
        writer,
      ]);
      assert.equal(got, patternHash(3, size));
      writing.close();
      reading.close();
    } finally {
      acceptor.close();
    }
  });
}

/** Reads exactly `size` bytes from a link; their SHA-256. */
async function receiveSome(link: { read(b: Uint8Array): Promise<number | null> }, size: number) {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(256 * 1024);
  for (let got = 0; got < size;) {
    const n = await link.read(buffer.subarray(0, Math.min(buffer.length, size - got)));
    if (n === null) throw new Error(`the pipe ended after ${got} bytes`);
    hash.update(buffer.subarray(0, n));
    got += n;
  }
  return hash.digest("hex");
}

Deno.test("relay pipes through a real tinyproxy (no WebSocket: HTTP-streaming pipes) with the relay's links cut behind it, and behind a real nginx", async () => {
  await using relay = restartableRelay("s");
  const relayPort = relay.server.addr.port;
  // tinyproxy -> a cutter -> the relay: the cuts break pipes mid-transfer.
  const cutter = await FaultProxy.start({ targetPort: relayPort });
  await using tinyproxy = await startTinyproxy();
  const viaProxy = {
    proxy: `http://127.0.0.1:${tinyproxy.port}`,
    session: "lab",
    secret: "s",
    ...NODE_FAST,
  };
  const url = `http://127.0.0.1:${cutter.port}`;
  try {
    await using lab = await RelayNode.connect(url, { ...viaProxy, nickname: "lab" });
    using listener = lab.listen({ key: "k", ...FAST });
    await using laptop = await RelayNode.connect(url, { ...viaProxy, nickname: "laptop" });
    assert.equal(laptop.transport, "http", "tinyproxy passes no WebSocket: HTTP streaming");
    await using conn = await laptop.connectTo("lab", { key: "k", ...FAST });
    await using server = await listener.accept();
    const size = 8 << 20;
    // Cut every link to the relay (pipes and the nodes' own) each 2 MiB, twice each way.
    const cuts = await cutWhile(
      cutter,
      2 << 20,
      2,
      Promise.all([
        sendPattern(conn, 5, size).then((sent) => assert.equal(sent, patternHash(5, size))),
        receiveAll(server).then((got) => assert.equal(got.sha256, patternHash(5, size))),
        sendPattern(server, 6, size).then((sent) => assert.equal(sent, patternHash(6, size))),
        receiveAll(conn).then((got) => assert.equal(got.sha256, patternHash(6, size))),
      ]),
    );
    assert.ok(cuts.up + cuts.down >= 2, `only ${cuts.up}+${cuts.down} cuts`);
    assert.match(await tinyproxy.log(), /relay\/pipe/, "the pipes went through tinyproxy");
  } finally {
    await cutter.close();
  }

  // nginx in front of the relay, with its defaults (no upgrade headers, buffering on).
  await using nginx = await startNginx(relayPort);
  const behind = `http://127.0.0.1:${nginx.port}`;
  await using lab = await join(behind, "lab2");
  using listener = lab.listen({ key: "k" });
  await using laptop = await join(behind, "laptop2");
  await using conn = await laptop.connectTo("lab2", { key: "k" });
  await using server = await listener.accept();
  const size = 4 << 20;
  const [sent, got] = await Promise.all([sendPattern(conn, 7, size), receiveAll(server)]);
  assert.equal(got.sha256, sent);
  assert.match(await nginx.log(), /relay\/pipe/, "the pipes went through nginx");
});

Deno.test("relay pipes: a node's pipe acceptor says its links all come through the relay (no per-address limits on them)", async () => {
  await using relay = restartableRelay("s");
  await using lab = await join(relay.url, "lab");
  const acceptor = lab.pipeAcceptor();
  try {
    assert.equal(acceptor.relayed, true);
  } finally {
    acceptor.close();
  }
});

Deno.test("relay pipes: a node that closes ends its sessions (either end), and their peers hear why at once, instead of a session going on through a node that left", async () => {
  await using relay = restartableRelay("s");
  for (const closing of ["laptop", "lab"] as const) {
    await using lab = await join(relay.url, "lab");
    using listener = lab.listen({ key: "k", ...FAST });
    await using laptop = await join(relay.url, "laptop");
    await using conn = await laptop.connectTo("lab", { key: "k", ...FAST });
    await using server = await listener.accept();
    await conn.write(new Uint8Array([1]));
    assert.equal(await server.read(new Uint8Array(1)), 1);
    const [gone, peer] = closing === "laptop" ? [laptop, server] : [lab, conn];
    await gone.close();
    await within(
      30_000,
      `the peer of ${closing} told`,
      assert.rejects(peer.closed, /the relay node closed/),
    );
  }
  // The relay lets the pipes go as their connections close.
  await waitUntil(() => relay.server.relay.stats.pipes!.open === 0, "no pipe left at the relay");
});
