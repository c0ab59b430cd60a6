// One tunnel session carries every connection as a stream of its own.
import assert from "node:assert/strict";
import { connect, TunnelClient, TunnelServer } from "../mod.ts";
import { encodeFrame, FrameType, GREETING } from "../lib/mux/_frames.ts";
import { concat } from "../lib/_util.ts";
import { renderRecord, within, withLogs } from "./_helpers.ts";
import {
  cutWhile,
  plainTunnel,
  roundTrips,
  startTarget,
  tunnelThroughProxy,
} from "./_tunnel_helpers.ts";

Deno.test("1,000 concurrent connections ride one session, each verifying its own data across link cuts", async () => {
  await using target = startTarget("echo");
  await using tunnel = await tunnelThroughProxy(target.port);
  const { proxy, client } = tunnel;
  // 1,000 x 64 KiB echoed: 62.5 MiB each way plus framing; the 6th cut
  // each way is due at 60 MiB, within the transfer.
  const cuts = await cutWhile(
    proxy,
    10 << 20,
    6,
    within(180_000, "1,000 connections", roundTrips(client.addr.port, 1000, 1, 64 << 10)),
  );
  assert.deepEqual(cuts, { up: 6, down: 6 }, "cuts during the transfer");
  assert.equal(target.accepted, 1000);
  // One session for all of them: each cut cost one reconnect, not a thousand.
  const [session, ...others] = client.sessions;
  assert.equal(others.length, 0, "one session");
  // (A cut can land in a resume handshake: then two cuts cost one resume. On
  // a busy machine a silence past the dead-link timeout costs one more: a
  // few, not a thousand.)
  const { reconnects } = session.stats;
  assert.ok(reconnects >= 1 && reconnects <= 24, `${reconnects} resumes for 12 cuts`);
});

Deno.test("a target that refuses fails that connection only, with the reason; the session goes on", async () => {
  await using target = startTarget("echo");
  // A port with nothing listening: reserved, then freed.
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = closed.addr.port;
  closed.close();
  await using refusing = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    target: { hostname: "127.0.0.1", port: deadPort },
  });
  await withLogs(async (records) => {
    await using client = new TunnelClient({
      port: 0,
      server: { hostname: "127.0.0.1", port: refusing.addr.port },
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: client.addr.port });
    await conn.write(new TextEncoder().encode("anyone there?"));
    const n = await conn.read(new Uint8Array(16)).catch(() => null);
    conn.close();
    assert.equal(n, null, "the local connection is closed");
    const lines = records.map(renderRecord).join("\n");
    assert.match(lines, /stream refused: cannot reach 127\.0\.0\.1:\d+: .*refused/i);
    // The session is still there for the next connection.
    assert.equal(client.sessions.length, 1);
    assert.equal(client.sessions[0].state, "connected");
  });
  // A server whose target works carries every connection over one session.
  await using tunnel = plainTunnel(target.port);
  const { client } = tunnel;
  await roundTrips(client.addr.port, 3, 500, 256 << 10);
  assert.equal(client.sessions.length, 1);
});

Deno.test("closing the server closes target connections whose stream half-closed and went idle", async () => {
  // A target that reads the request to its end, then holds the connection
  // without a word: the tunnel's direction towards it is finished, the other
  // waits on the target.
  const held = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const sawEnd = Promise.withResolvers<Deno.Conn>();
  const targetTask = (async () => {
    const conn = await held.accept();
    const buffer = new Uint8Array(64);
    while ((await conn.read(buffer)) !== null);
    sawEnd.resolve(conn);
  })();
  const server = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    target: { hostname: "127.0.0.1", port: held.addr.port },
  });
  await using client = new TunnelClient({
    port: 0,
    server: { hostname: "127.0.0.1", port: server.addr.port },
  });
  const local = await Deno.connect({ hostname: "127.0.0.1", port: client.addr.port });
  await local.write(new TextEncoder().encode("request"));
  await local.closeWrite();
  const targetConn = await sawEnd.promise;
  await within(10_000, "the server's close", server.close());
  // The target's connection was closed by the tunnel, not left open.
  const n = await targetConn.read(new Uint8Array(1)).catch(() => null);
  assert.equal(n, null);
  targetConn.close();
  local.close();
  held.close();
  await targetTask;
});

Deno.test("a stream reset before its target was dialed costs the target nothing: no connection that comes and goes", async () => {
  // A target that records what each connection it accepts says first.
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const firstWords: string[] = [];
  const heard = Promise.withResolvers<void>();
  const targetTask = (async () => {
    for await (const conn of target) {
      const buffer = new Uint8Array(64);
      const n = await conn.read(buffer).catch(() => null);
      firstWords.push(n === null ? "(nothing)" : new TextDecoder().decode(buffer.subarray(0, n)));
      conn.close();
      if (firstWords.includes("three")) heard.resolve();
    }
  })();
  await using server = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    target: { hostname: "127.0.0.1", port: target.addr.port },
  });
  // A hand-made client: stream 1 opened and reset in one write, then stream 3 with a word.
  const raw = await connect({ port: server.addr.port });
  await raw.write(concat(
    GREETING,
    encodeFrame(FrameType.open, 1),
    encodeFrame(FrameType.reset, 1, new TextEncoder().encode("changed my mind")),
    encodeFrame(FrameType.open, 3),
    encodeFrame(FrameType.data, 3, new TextEncoder().encode("three")),
  ));
  await within(10_000, "the target hearing stream 3", heard.promise);
  // Stream 1's dial, had there been one, came first: the target would have accepted it first.
  assert.deepEqual(firstWords, ["three"]);
  raw.close();
  target.close();
  await targetTask;
});

Deno.test("tunnel: a refusal names an IPv6 target as [::1]:port, not ::1:port", async () => {
  // Nothing listens on port 1; without an IPv6 loopback the dial fails all the same.
  await using refusing = new TunnelServer({
    hostname: "127.0.0.1",
    target: { hostname: "::1", port: 1 },
  });
  await withLogs(async (records) => {
    await using client = new TunnelClient({
      server: { hostname: "127.0.0.1", port: refusing.addr.port },
    });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: client.addr.port });
    const n = await conn.read(new Uint8Array(16)).catch(() => null);
    conn.close();
    assert.equal(n, null, "the local connection is closed");
    const lines = records.map(renderRecord).join("\n");
    assert.match(lines, /stream refused: cannot reach \[::1\]:1: /);
  });
});
