import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import net from "node:net";
import {
  connect,
  type ImmortalConn,
  ImmortalError,
  listen,
  MuxSession,
  TunnelClient,
  TunnelServer,
} from "../mod.ts";
import { splice, TunnelClosing } from "../lib/tunnel/_splice.ts";
import { tcpDialer } from "../lib/link/tcp.ts";
import { muxPair } from "./_mux_pair.ts";
import { encodeFrame, FrameType, GREETING, HEADER_SIZE } from "../lib/mux/_frames.ts";
import { concat } from "../lib/_util.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import {
  freePort,
  pattern,
  receiveAll,
  renderRecord,
  waitUntil,
  within,
  withLogs,
} from "./_helpers.ts";
import {
  cutWhile,
  echoThrough,
  FAST,
  plainTunnel,
  roundTrips,
  startTarget,
  tunnelThroughProxy,
} from "./_tunnel_helpers.ts";
import { makeTestCerts } from "./_tls.ts";

Deno.test("50 concurrent tunneled connections each move and verify their own data across link cuts", async () => {
  await using target = startTarget("echo");
  await using tunnel = await tunnelThroughProxy(target.port);
  const { proxy, client } = tunnel;
  // 100 MiB go each way (50 x 2 MiB echoed), framing and replays on top: all
  // 10 cuts each way (every 5 MiB, the last at 50 MiB) land during the transfer.
  const cuts = await cutWhile(
    proxy,
    5 << 20,
    10,
    within(120_000, "50 connections", roundTrips(client.addr.port, 50, 1, 2 << 20)),
  );
  assert.deepEqual(cuts, { up: 10, down: 10 }, "cuts during the transfer");
  assert.equal(target.accepted, 50);
  // The connections' own bytes, each counted once however often it was replayed.
  const each = 50 * (2 << 20);
  assert.deepEqual(client.forwarded, { sent: each, received: each });
  assert.deepEqual(tunnel.server.forwarded, { sent: each, received: each });
});

Deno.test("half-close through the tunnel: a client that shuts its write side still gets the full reply", async () => {
  const REPLY = 8 << 20;
  await using target = startTarget("reply", REPLY);
  await using tunnel = plainTunnel(target.port);
  const { client } = tunnel;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: client.addr.port });
  await conn.write(new TextEncoder().encode("request"));
  await conn.closeWrite();
  const reply = await receiveAll(conn);
  conn.close();
  const expected = createHash("sha256");
  for (const chunk of pattern(77, REPLY)) expected.update(chunk);
  assert.equal(reply.bytes, REPLY);
  assert.equal(reply.sha256, expected.digest("hex"));
});

Deno.test("wrong key: refused with a clear log line; the server is not an open proxy", async () => {
  await withLogs(async (records) => {
    await using target = startTarget("echo");
    await using server = new TunnelServer({
      hostname: "127.0.0.1",
      port: 0,
      key: "right",
      target: { hostname: "127.0.0.1", port: target.port },
    });
    await using client = new TunnelClient({
      port: 0,
      key: "wrong",
      server: { hostname: "127.0.0.1", port: server.addr.port },
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: client.addr.port });
    await conn.write(new TextEncoder().encode("let me in")).catch(() => {});
    // The tunnel closes the local connection: EOF or reset, never data.
    const n = await conn.read(new Uint8Array(16)).catch(() => null);
    conn.close();
    assert.equal(n, null);
    assert.equal(target.accepted, 0, "the target was never dialed");
    const lines = records.map(renderRecord);
    assert.ok(
      lines.some((l) => /Refused .*pre-shared key missing or wrong/.test(l)),
      lines.join("\n"),
    );
    assert.ok(
      lines.some((l) => /Tunneled connection from \S+ failed: .*pre-shared key/.test(l)),
      lines.join("\n"),
    );
  });
});

Deno.test("TLS tunnel: connections verify their data across link cuts; a server the client does not trust is refused", async () => {
  const certs = await makeTestCerts();
  try {
    await using target = startTarget("echo");
    await using server = new TunnelServer({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: certs.cert, key: certs.key },
      target: { hostname: "127.0.0.1", port: target.port },
      ...FAST,
    });
    const proxy = await FaultProxy.start({ targetPort: server.addr.port });
    try {
      await using client = new TunnelClient({
        port: 0,
        server: { hostname: "127.0.0.1", port: proxy.port },
        tls: { caCerts: [certs.caCert] },
        ...FAST,
      });
      // 32 MiB go each way (8 x 4 MiB echoed): all 8 cuts each way (every 2 MiB,
      // the last at 16 MiB) land during the transfer.
      const cuts = await cutWhile(
        proxy,
        2 << 20,
        8,
        within(60_000, "8 TLS connections", roundTrips(client.addr.port, 8, 100, 4 << 20)),
      );
      assert.deepEqual(cuts, { up: 8, down: 8 }, "cuts during the transfer");
    } finally {
      await proxy.close();
    }

    // The same server, dialed by a client that trusts another CA: no session, target untouched.
    const before = target.accepted;
    await withLogs(async (records) => {
      await using untrusting = new TunnelClient({
        port: 0,
        server: { hostname: "127.0.0.1", port: server.addr.port },
        tls: { caCerts: [certs.otherCaCert] },
        connectWait: 0,
      });
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: untrusting.addr.port });
      const n = await conn.read(new Uint8Array(16)).catch(() => null);
      conn.close();
      assert.equal(n, null);
      const lines = records.map(renderRecord);
      assert.ok(
        lines.some((l) =>
          /Tunneled connection from \S+ failed: TLS with 127\.0\.0\.1:\d+ failed \(.*UnknownIssuer\): its certificate is not trusted/
            .test(l)
        ),
        lines.join("\n"),
      );
    });
    assert.equal(target.accepted, before, "the target was never dialed");
  } finally {
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("a local application that resets its connection is news (info), not an error of the tunnel's", async () => {
  await withLogs(async (records) => {
    await using target = startTarget("echo");
    await using tunnel = plainTunnel(target.port);
    const { client } = tunnel;
    // node:net can send a reset (Deno.Conn cannot): what `socat -u` or a killed client does.
    const socket = net.connect({ host: "127.0.0.1", port: client.addr.port });
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write("ping");
    await new Promise((resolve) => socket.once("data", resolve));
    socket.resetAndDestroy();
    const failed = (line: string) => /Tunneled connection from \S+ failed/.test(line);
    await waitUntil(() => records.some((r) => failed(renderRecord(r))), "the reset logged");
    const levels = records.filter((r) => failed(renderRecord(r))).map((r) => r.level);
    assert.deepEqual(levels, ["info"], records.map(renderRecord).join("\n"));
  });
});

Deno.test("a tunnel shutting down says so: the server's clients hear why (a warning), the client closes its connections in one info line; no errors either side", async () => {
  await using target = startTarget("echo");
  const echoed = async (port: number) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode("ping"));
    assert.equal(await conn.read(new Uint8Array(16)), 4);
    return conn;
  };
  const ended = async (conn: Deno.Conn) => {
    const n = await within(30_000, "the end", conn.read(new Uint8Array(16)).catch(() => null));
    assert.equal(n, null);
    conn.close();
  };
  const lines = await withLogs(async (records) => {
    // The server goes: the client's connection ends, logged before it is closed.
    const one = plainTunnel(target.port);
    const first = await echoed(one.client.addr.port);
    await one.server.close();
    await ended(first);
    await one.client.close();
    // The client goes, with a connection open: the server hears why.
    const two = plainTunnel(target.port);
    const second = await echoed(two.client.addr.port);
    await two.client.close();
    await ended(second);
    await two.server.close();
    return records.map((r) => [r.level, renderRecord(r)] as const);
  });
  const said = (pattern: RegExp) => lines.filter(([, line]) => pattern.test(line));
  assert.deepEqual(
    said(/Tunneled connection from \S+ ended: /).map((
      [level, line],
    ) => [level, line.replace(/from \S+/, "from X")]),
    [[
      "warning",
      "Tunneled connection from X ended: the peer aborted the connection: the tunnel server is shutting down",
    ]],
  );
  assert.deepEqual(said(/^Closing \d+ tunneled/), [[
    "info",
    "Closing 1 tunneled connection: the tunnel client is shutting down",
  ]]);
  assert.deepEqual(lines.filter(([level]) => level === "error" || level === "fatal"), []);
  // The server hears the client go as news, not as a fault.
  const heard = said(/the tunnel client is shutting down/).filter(([level]) => level !== "debug");
  assert.ok(heard.length > 0 && heard.every(([level]) => level === "info"), JSON.stringify(lines));
});

Deno.test("a tunnel server that stays unreachable is said once, not at every opening that gives up (every local connection, every retry loop); its return is said too", async () => {
  const port = freePort();
  const lines = await withLogs(async (records) => {
    await using client = new TunnelClient({
      port: 0,
      server: { hostname: "127.0.0.1", port },
      connectWait: 50,
      backoff: { initial: 10, max: 10 },
    });
    for (let i = 0; i < 3; i++) {
      await assert.rejects(
        client.open(),
        (e) => e instanceof ImmortalError && e.code === "unreachable",
      );
    }
    await using target = startTarget("echo");
    const serve = () =>
      new TunnelServer({
        hostname: "127.0.0.1",
        port,
        target: { hostname: "127.0.0.1", port: target.port },
      });
    const first = serve();
    await client.open();
    // Away once more after it was reached, then back: "again" now.
    await first.close();
    await waitUntil(() => client.sessions.length === 0, "the client's session ended");
    await assert.rejects(
      client.open(),
      (e) => e instanceof ImmortalError && e.code === "unreachable",
    );
    await using _second = serve();
    await client.open();
    return records.filter((r) => r.level !== "debug").map(renderRecord);
  });
  // Once per time away (three openings gave up in the first), not once per opening.
  assert.equal(
    lines.filter((l) => l.startsWith("Tunnel server not reached")).length,
    2,
    lines.join("\n"),
  );
  // Its first contact: "reached", not "reachable again"; the next return is "again".
  const back = lines.filter((l) =>
    /^Tunnel server (reached|reachable again) after \d+\.\d s$/.test(l)
  );
  assert.deepEqual(back.map((l) => l.split(" after ")[0]), [
    "Tunnel server reached",
    "Tunnel server reachable again",
  ], lines.join("\n"));
});

Deno.test("a tunnel server shutting down in the middle of a transfer to a slow reader: the client says why (the server is shutting down), not that its own socket's write was cancelled", async () => {
  await using target = startTarget("reply", 64 << 20);
  const lines = await withLogs(async (records) => {
    await using tunnel = plainTunnel(target.port);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: tunnel.client.addr.port });
    // The target's reply starts once we half-close; we read a little of it and then
    // stop, so that the client's write to us waits (or its stream's data does).
    await conn.closeWrite();
    const some = new Uint8Array(64 * 1024);
    let got = 0;
    while (got < 4 << 20) {
      const n = await within(30_000, "the reply", conn.read(some));
      assert.notEqual(n, null);
      got += n!;
    }
    await tunnel.server.close();
    // The end reaches the application (whatever was in flight before it).
    for (;;) {
      const n = await within(30_000, "the end", conn.read(some).catch(() => null));
      if (n === null) break;
    }
    conn.close();
    return records.map((r) => [r.level, renderRecord(r)] as const);
  });
  const ends = lines.filter(([, line]) =>
    /Tunneled connection from \S+ (ended|failed): /.test(line)
  );
  assert.deepEqual(
    ends.map(([level, line]) => [level, line.replace(/from \S+/, "from X")]),
    [[
      "warning",
      "Tunneled connection from X ended: the peer aborted the connection: the tunnel server is shutting down",
    ]],
  );
});

Deno.test("a tunnel session whose client never comes back is said to end once at the server (the session's warning), not again by the tunnel", async () => {
  await using target = startTarget("echo");
  const lines = await withLogs(async (records) => {
    const server = new TunnelServer({
      hostname: "127.0.0.1",
      port: 0,
      target: { hostname: "127.0.0.1", port: target.port },
      resumeTimeout: 300,
    });
    const proxy = await FaultProxy.start({ targetPort: server.addr.port });
    const client = new TunnelClient({
      port: 0,
      server: { hostname: "127.0.0.1", port: proxy.port },
      resumeTimeout: 300,
      backoff: { initial: 10, max: 50 },
    });
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: client.addr.port });
      await conn.write(new TextEncoder().encode("ping"));
      assert.equal(await conn.read(new Uint8Array(16)), 4);
      // The client's way back is gone: both ends give the session up after 300 ms.
      proxy.refuseNew(true);
      proxy.reset();
      const ended = await within(
        30_000,
        "the end",
        conn.read(new Uint8Array(16)).catch(() => null),
      );
      assert.equal(ended, null);
      conn.close();
      await waitUntil(
        () => records.some((r) => /did not resume within/.test(renderRecord(r))),
        "the server giving the session up",
      );
    } finally {
      await client.close();
      await server.close();
      await proxy.close();
    }
    return records.map((r) => [r.level, renderRecord(r)] as const);
  });
  // Said at info or above once: the session's warning (the multiplexer and streams at debug).
  const serverEnd = lines.filter(([level, line]) =>
    level !== "debug" && /did not resume within/.test(line)
  );
  assert.equal(serverEnd.length, 1, lines.map((l) => l.join(" ")).join("\n"));
  assert.equal(serverEnd[0][0], "warning");
});

Deno.test("a tunnel client refuses a stream its server opens (a tunnel server never does)", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  await using client = new TunnelClient({
    port: 0,
    server: { hostname: "127.0.0.1", port: listener.addr.port },
  });
  const opening = client.open();
  const server = await listener.accept(); // plays the server, by hand
  await server.write(GREETING);
  await opening; // up once the server greeted as a tunnel server
  await server.write(encodeFrame(FrameType.open, 2));
  // Frames back: the client's greeting, then, among whatever else, the refusal.
  const refusal = await within(30_000, "the refusal", refusalOf(server, 2));
  assert.equal(refusal, "a tunnel client takes no streams");
  server.close();
  await server.closed.catch(() => {});
});

Deno.test("a multiplexed session that refuses streams (refuseStreams) refuses each as its OPEN comes, keeping nothing of it, without an accept loop", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const conn = await connect({ port: listener.addr.port });
  const session = new MuxSession(conn, { role: "client", refuseStreams: "none taken" });
  const server = await listener.accept(); // plays the server, by hand
  await server.write(GREETING);
  // Data behind the OPEN (a flood of these held a buffer each until refused).
  await server.write(encodeFrame(FrameType.open, 2));
  await server.write(encodeFrame(FrameType.data, 2, new Uint8Array(1024)));
  await server.write(encodeFrame(FrameType.open, 4));
  assert.equal(await within(30_000, "the refusal", refusalOf(server, 4)), "none taken");
  assert.equal(session.streams, 0, "nothing kept of either");
  session.close();
  server.close();
  await Promise.allSettled([session.closed, server.closed, conn.closed]);
});

/** The reason of the first REFUSE of `stream` that `conn` (a multiplexed session's peer) reads. */
async function refusalOf(conn: ImmortalConn, stream: number): Promise<string> {
  let bytes = new Uint8Array(0);
  const chunk = new Uint8Array(64 * 1024);
  let refusal: string | null = null;
  for (let reads = 0; reads < 1000 && refusal === null; reads++) {
    const n = await conn.read(chunk);
    assert.notEqual(n, null, "the session ended before a refusal");
    bytes = concat(bytes, chunk.subarray(0, n!));
    for (let at = GREETING.length; at + HEADER_SIZE <= bytes.length;) {
      const view = new DataView(bytes.buffer, bytes.byteOffset + at);
      const [type, id, length] = [bytes[at], view.getUint32(1), view.getUint32(5)];
      if (at + HEADER_SIZE + length > bytes.length) break;
      if (type === FrameType.refuse && id === stream) {
        const reason = bytes.subarray(at + HEADER_SIZE, at + HEADER_SIZE + length);
        refusal = new TextDecoder().decode(reason);
      }
      at += HEADER_SIZE + length;
    }
  }
  return refusal!;
}

/**
 * A tunnel client's connection (the splice of a socket and a stream, over a
 * multiplexed session) whose remote direction ended whole while its
 * application was not reading: 2 MiB and more wait in the stream, the
 * peer's FIN behind them. Returns what the test needs to end the session.
 */
async function finishedWhileNotRead() {
  const { client, server, clientConn, serverConn } = await muxPair();
  const local = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const app = await Deno.connect({ hostname: "127.0.0.1", port: local.addr.port });
  const stream = client.open();
  const closing = new TunnelClosing();
  const splicing = splice(await local.accept(), stream, {
    totals: { sent: 0, received: 0 },
    closing,
  }).catch(() => {});
  local.close();
  const remote = await server.accept();
  const MiB = 1 << 20;
  // The application reads a first part as it comes: the stream's window grows.
  const buffer = new Uint8Array(MiB);
  const reading = (async () => {
    for (let n = 0; n < 32 * MiB;) n += (await app.read(buffer))!;
  })();
  for (let i = 0; i < 32; i++) await remote.write(new Uint8Array(MiB));
  await reading;
  // Then the rest and its end while the application is busy: until the
  // local socket is full and 2 MiB wait in the stream (48 MiB at most).
  let rest = 0;
  while (rest < 48 * MiB && stream.bufferedBytes < 2 * MiB) {
    await remote.write(new Uint8Array(MiB).fill(7));
    rest += MiB;
    await serverConn.flush(); // taken by the client's streams
  }
  assert.ok(stream.bufferedBytes >= 2 * MiB, "bytes waiting in the stream");
  await remote.closeWrite();
  await serverConn.flush(); // the FIN too
  return {
    client,
    server,
    app,
    rest,
    splicing,
    closing,
    /** Reads what the application gets until its end. */
    async readAll(): Promise<number> {
      let got = 0;
      for (let n; (n = await app.read(buffer).catch(() => null)) !== null;) got += n;
      return got;
    },
    async [Symbol.asyncDispose]() {
      app.close();
      await splicing;
      await Promise.allSettled([server.closed, serverConn.closed, clientConn.closed]);
    },
  };
}

Deno.test("a connection whose remote direction ended whole (its FIN came) gets every byte of it, even when the session is lost before the application read them", async () => {
  await using t = await finishedWhileNotRead();
  t.server.close("the tunnel server is shutting down"); // the session ends, for the client
  await t.client.closed.catch(() => {});
  assert.equal(await t.readAll(), t.rest, "bytes that had arrived were thrown away");
});

Deno.test("a connection whose remote direction ended whole ends at once when its own tunnel closes the session: a shutdown does not wait for an application that does not read", async () => {
  await using t = await finishedWhileNotRead();
  t.closing.close(); // as TunnelClient.close() does, then it closes its session
  t.client.close("the tunnel client is shutting down");
  await within(30_000, "the splice's end, the application reading nothing", t.splicing);
});

Deno.test("tunnel client: a connection made while an opening is under way gets its own connectWait, not what is left of that opening's", async () => {
  await using target = startTarget("echo");
  await using server = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    target: { hostname: "127.0.0.1", port: target.port },
  });
  let up = false;
  let dials = 0;
  const reach = tcpDialer({ port: server.addr.port });
  await using client = new TunnelClient({
    port: 0,
    connectWait: 3000,
    backoff: { initial: 50, max: 100 },
    dialer: (signal) => {
      dials++;
      return up
        ? reach(signal)
        : Promise.reject(new ImmortalError("unreachable", "down on purpose"));
    },
  });
  // A: its connection starts the opening, which tries for 3 s.
  const first = await Deno.connect({ hostname: "127.0.0.1", port: client.addr.port });
  await waitUntil(() => dials >= 4, "the opening under way");
  // B comes while it is, and must wait its own 3 s.
  const second = echoThrough(client.addr.port, "second");
  // A is given up when the opening's 3 s are over (nothing comes back).
  assert.equal(await within(30_000, "the first given up", first.read(new Uint8Array(8))), null);
  first.close();
  up = true;
  assert.equal(await within(30_000, "the second carried", second), "second");
});

Deno.test("tunnel client: a connection made while a session resumes toward a restarted server (which no longer knows it) goes on the next session, not down with that one", async () => {
  await using target = startTarget("echo");
  const key = "restart-test-key";
  const port = freePort();
  const serve = () =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net=127.0.0.1",
        new URL("../cli/tunnel.ts", import.meta.url).pathname,
        "server",
        String(port),
        "127.0.0.1",
        String(target.port),
        "--listen-host",
        "127.0.0.1",
        "--key",
        key,
        "--log-level",
        "error",
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
  let server = serve();
  await using client = new TunnelClient({
    port: 0,
    server: { hostname: "127.0.0.1", port },
    key,
    ...FAST,
  });
  try {
    await within(30_000, "the tunnel up", client.open());
    assert.equal(await echoThrough(client.addr.port, "before"), "before");
    // A crash: nothing tells the client; its session resumes toward the port.
    server.kill("SIGKILL");
    await server.status;
    await waitUntil(() => client.sessions[0]?.state === "reconnecting", "the session resuming");
    server = serve(); // knows no session: answers "unknown-session" (believed on the third)
    assert.equal(await within(60_000, "the echo", echoThrough(client.addr.port, "after")), "after");
  } finally {
    try {
      server.kill("SIGKILL");
    } catch {
      // Killed already (the test failed before the second server started).
    }
    await server.status;
  }
});

Deno.test("close() during open() rejects it as closed, whether a dial or the wait between two was under way (not with the last dial's failure)", async () => {
  // A port nothing listens on: every dial fails, and the opening retries.
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const server = { hostname: "127.0.0.1", port: closed.addr.port };
  closed.close();
  const isClosed = (error: unknown) => error instanceof ImmortalError && error.code === "closed";
  {
    const client = new TunnelClient({ port: 0, server });
    const opening = assert.rejects(client.open(), isClosed);
    await client.close(); // the first dial in flight
    await opening;
  }
  await withLogs(async (records) => {
    const client = new TunnelClient({ port: 0, server, backoff: { initial: 60_000 } });
    const opening = assert.rejects(client.open(), isClosed);
    // The first dial failed: the opening waits for its next try.
    await waitUntil(
      () => records.some((r) => /Tunnel server not reached/.test(renderRecord(r))),
      "the first failure",
    );
    await client.close();
    await opening;
  });
});
