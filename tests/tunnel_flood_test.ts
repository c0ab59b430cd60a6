/**
 * A key-less tunnel server under a flood of sessions from one stranger: the
 * sessions it keeps, the target connections it opens, its descriptors and
 * its memory stay within their bounds, sessions the stranger abandoned make
 * room (releasing their target connections), and a client from elsewhere
 * still gets through.
 */

import assert from "node:assert/strict";
import { connect, type ImmortalConn, tcpDialer } from "../mod.ts";
import { MuxSession } from "../lib/mux/mod.ts";
import { spawnCli } from "./_cli_process.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { freePort, waitUntil, within } from "./_helpers.ts";

const CLI = new URL("../cli/tunnel.ts", import.meta.url).pathname;

/**
 * Open descriptors and resident memory (KiB) of process `pid`, asked of `ls`
 * and `ps`: Deno reads another process's /proc entries only with -A.
 */
async function footprint(pid: number): Promise<{ fds: number; rssKiB: number }> {
  const run = async (cmd: string, args: string[]) =>
    new TextDecoder().decode(
      (await new Deno.Command(cmd, { args, stdout: "piped" }).output()).stdout,
    );
  const fds = (await run("ls", ["-1", `/proc/${pid}/fd`])).trim().split("\n").length;
  const rssKiB = Number((await run("ps", ["-o", "rss=", "-p", String(pid)])).trim());
  return { fds, rssKiB };
}

/** An echo target that counts its open connections; replies nobody reads back up. */
function countingTarget() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const echoing = new Set<Promise<void>>();
  let closed = 0;
  let most = 0;
  const serving = (async () => {
    for await (const conn of listener) {
      open.add(conn);
      most = Math.max(most, open.size);
      const echo = conn.readable.pipeTo(conn.writable).catch(() => {}).finally(() => {
        open.delete(conn);
        closed++;
        try {
          conn.close();
        } catch {
          // Closed by pipeTo already.
        }
      });
      echoing.add(echo);
      echo.finally(() => echoing.delete(echo));
    }
  })();
  return {
    port: listener.addr.port,
    get open() {
      return open.size;
    },
    get most() {
      return most;
    },
    get closed() {
      return closed;
    },
    async close() {
      listener.close();
      for (const conn of open) {
        try {
          conn.close();
        } catch {
          // Gone.
        }
      }
      await serving;
      await Promise.all([...echoing]);
    },
  };
}

/**
 * Up to `count` sessions through `port`, each with `streams` streams that
 * send 64 KiB and never read; sessions the server refuses are counted.
 * Once `leave()` is called the clients dial no more: when their links are
 * cut, they give up, and leave their sessions parked on the server.
 */
async function flood(port: number, count: number, streams: number) {
  const sessions: { conn: ImmortalConn; mux: MuxSession }[] = [];
  let refused = 0;
  let gone = false;
  const tcp = tcpDialer({ port });
  const dialer = (signal: AbortSignal) =>
    gone ? Promise.reject(new Error("the stranger left")) : tcp(signal);
  for (let i = 0; i < count; i++) {
    let conn: ImmortalConn;
    try {
      conn = await connect({ dialer, resumeTimeout: 50 });
    } catch {
      refused++;
      continue;
    }
    const mux = new MuxSession(conn, { role: "client" });
    for (let s = 0; s < streams; s++) {
      const stream = mux.open();
      stream.write(new Uint8Array(64 * 1024)).catch(() => {});
    }
    sessions.push({ conn, mux });
  }
  return {
    sessions,
    refused,
    leave: () => {
      gone = true;
    },
  };
}

/** A session from 127.0.0.1 straight to the server, one stream echoing `text`. */
async function echoFrom127001(serverPort: number, text: string): Promise<void> {
  await using conn = await within(10_000, "a client from 127.0.0.1", connect({ port: serverPort }));
  const mux = new MuxSession(conn, { role: "client" });
  const stream = mux.open();
  await stream.write(new TextEncoder().encode(text));
  const buffer = new Uint8Array(64);
  const n = await within(10_000, "the echo", stream.read(buffer));
  assert.equal(new TextDecoder().decode(buffer.subarray(0, n!)), text);
  mux.close();
}

Deno.test("key-less tunnel server flooded by one source: sessions, target connections, descriptors and memory stay bounded; abandoned sessions make room; others get through", async () => {
  const target = countingTarget();
  const serverPort = freePort();
  const server = spawnCli(
    [`--allow-net=127.0.0.1:${serverPort},127.0.0.1:${target.port}`],
    CLI,
    ["server", String(serverPort), "127.0.0.1", String(target.port), "--listen-host", "127.0.0.1"],
  );
  // The flood comes from 127.0.0.2: the proxy's connections to the server start there.
  const proxy = await FaultProxy.start({ targetPort: serverPort });
  proxy.upstreamLocalAddress = "127.0.0.2";
  const rounds: { sessions: { conn: ImmortalConn; mux: MuxSession }[] }[] = [];
  try {
    await server.waitFor(/warning\s+NO KEY: this tunnel server is OPEN/, "the open-proxy warning");
    const before = await footprint(server.child.pid);

    // Round 1: 40 sessions of 16 streams each. The server keeps 16 sessions
    // per source (all live: the rest are refused as busy) and opens at most
    // 128 connections to its target, 64 for one source (the rest of the
    // streams are refused).
    const first = await flood(proxy.port, 40, 16);
    rounds.push(first);
    assert.equal(first.sessions.length, 16, "sessions kept from one source");
    assert.equal(first.refused, 24, "sessions refused as busy");
    await waitUntil(() => target.open >= 64, "the target connections of round 1");
    const during = await footprint(server.child.pid);
    // Someone else, meanwhile: its connection is carried (the flood held all
    // 128, and everyone else's streams were refused, for as long as it lasted).
    await echoFrom127001(serverPort, "while the flood holds its share");
    assert.ok(target.most <= 64 + 1, `${target.most} target connections at once`);

    // The stranger leaves without a word: its links are cut, and its clients
    // give up. The server keeps their sessions parked, for them to resume.
    first.leave();
    proxy.reset();
    await waitUntil(
      () => first.sessions.every(({ conn }) => conn.state === "closed"),
      "the flood's clients giving up",
    );

    // Round 2: new sessions from the same source push the parked ones out,
    // and each pushed-out session releases its target connections.
    const closedBefore = target.closed;
    const second = await flood(proxy.port, 16, 1);
    rounds.push(second);
    assert.equal(second.sessions.length, 16, "abandoned sessions made room");
    await waitUntil(
      () => target.closed - closedBefore >= 64,
      "the evicted sessions' target connections closing",
    );

    // Someone else, from 127.0.0.1, straight to the server: gets through.
    await echoFrom127001(serverPort, "still serving");
    const after = await footprint(server.child.pid);
    console.log(
      `target connections at most ${target.most}; server fds ${before.fds} -> ${during.fds} -> ${after.fds}, ` +
        `RSS ${before.rssKiB >> 10} -> ${during.rssKiB >> 10} -> ${after.rssKiB >> 10} MiB`,
    );
    // The bounds: 128 target connections, 16 sessions' links, and a few more.
    assert.ok(target.most <= 128 + 16, `${target.most} target connections at once`);
    assert.ok(during.fds - before.fds <= 128 + 16 + 32, `fds ${before.fds} -> ${during.fds}`);
    assert.ok(after.fds - before.fds <= 128 + 16 + 32, `fds ${before.fds} -> ${after.fds}`);
    // Each target connection holds at most a stream window and splice buffers.
    assert.ok(
      during.rssKiB - before.rssKiB <= 256 * 1024,
      `RSS grew by ${(during.rssKiB - before.rssKiB) >> 10} MiB`,
    );
  } finally {
    for (const round of rounds) {
      for (const { conn, mux } of round.sessions) {
        mux.close();
        await conn[Symbol.asyncDispose]();
      }
    }
    await proxy.close();
    assert.equal(await server.stop(), 0, server.log);
    await target.close();
  }
});
