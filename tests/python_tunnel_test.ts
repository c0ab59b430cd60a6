/**
 * examples/immortal_tunnel.py, a tunnel client written from PROTOCOL.md Part 3
 * (stream multiplexing) in Python's standard library only, run as a child
 * process against our real TunnelServer. Test connections go to the Python
 * client's listening port, each one a stream of the client's one session.
 * The client cuts its own link by bytes received (never by a timer). Every
 * wait is on a process exit, its output or a promise, bounded by a generous
 * deadline that fails the test when it passes.
 */

import assert from "node:assert/strict";
import { type ImmortalConn, listen, TunnelServer } from "../mod.ts";
import {
  eventsLogged,
  freePort,
  pattern,
  patternHash,
  receiveAll,
  renderRecord,
  within,
  withLogs,
} from "./_helpers.ts";
import { echoTarget, roundTrips, startTarget } from "./_tunnel_helpers.ts";

const TUNNEL = new URL("../examples/immortal_tunnel.py", import.meta.url).pathname;
/** The only time bound: exceeding it fails the test; nothing waits for it to pass. */
const BOUND = 60_000;
const SIZE = 1 << 20;
const PSK = "python-tunnel-s3cret";

interface Exit {
  code: number;
  stderr: string;
}

/** The Python tunnel client as a child process; disposing it kills it if it still runs. */
function spawnTunnel(args: string[]) {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("python3", {
      args: [TUNNEL, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    // CI installs python3: without it this test fails, it does not skip.
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new Error(
      "python3 is missing: this test runs examples/immortal_tunnel.py with it " +
        "(.ci/run installs the Debian package python3)",
    );
  }
  let stderr = "";
  let wake = () => {};
  const reading = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderr += chunk;
      wake();
    }
  })();
  const stdout = new Response(child.stdout).text();
  let exitedAlready = false;
  const exited: Promise<Exit> = Promise.all([child.status, reading, stdout]).then(([status]) => {
    exitedAlready = true;
    wake();
    return { code: status.code, stderr };
  });
  return {
    get stderr() {
      return stderr;
    },
    exited,
    /** Resolves with the first match of `re` in stderr; rejects if the client exits first. */
    waitFor(re: RegExp, what: string): Promise<RegExpMatchArray> {
      return within(
        BOUND,
        what,
        (async () => {
          for (;;) {
            const match = stderr.match(re);
            if (match) return match;
            if (exitedAlready) throw new Error(`the client exited before ${what}:\n${stderr}`);
            await new Promise<void>((resolve) => wake = resolve);
          }
        })(),
      );
    },
    /** Stops it with SIGTERM: a clean exit (0) with no error line. */
    async stop(): Promise<string> {
      if (!exitedAlready) child.kill("SIGTERM");
      const exit = await within(BOUND, "the client exits on SIGTERM", exited);
      assert.equal(exit.code, 0, exit.stderr);
      assert.doesNotMatch(exit.stderr, /Traceback|^error:/m);
      assert.match(exit.stderr, /stopped by SIGTERM/);
      return exit.stderr;
    },
    async [Symbol.asyncDispose]() {
      if (!exitedAlready) child.kill("SIGKILL");
      await exited;
    },
  };
}

/** Starts the client on a port of its choosing and waits until it listens (its session is open). */
async function startTunnel(args: string[]) {
  const tunnel = spawnTunnel(["0", ...args]);
  try {
    const [, port] = await tunnel.waitFor(/listening on 127\.0\.0\.1:(\d+)/, "listening");
    return Object.assign(tunnel, { port: Number(port) });
  } catch (error) {
    await tunnel[Symbol.asyncDispose]();
    throw error;
  }
}

/** Runs the client to its exit (one that should end by itself). */
async function runTunnel(args: string[]): Promise<Exit> {
  await using tunnel = spawnTunnel(args);
  return await within(BOUND, `python3 immortal_tunnel.py ${args.join(" ")}`, tunnel.exited);
}

function tunnelServer(targetPort: number, key?: string): TunnelServer {
  return new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    key,
    target: { hostname: "127.0.0.1", port: targetPort },
  });
}

/** The tunnel sessions the server logged ("Session ID opened as server with ..."), by id. */
function sessionsLogged(lines: string[]): string[] {
  return lines.flatMap((line) => line.match(/^Session (\w+) opened as server with /)?.[1] ?? []);
}

/** Writes `size` bytes of pattern `seed`, half-closes, and checks the reply is `replySeed`'s. */
async function requestReply(port: number, seed: number, replySeed: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const writing = (async () => {
      for (const chunk of pattern(seed, SIZE, 32 * 1024)) {
        for (let off = 0; off < chunk.length;) off += await conn.write(chunk.subarray(off));
      }
      await conn.closeWrite();
    })();
    const got = await receiveAll(conn);
    await writing;
    assert.equal(got.bytes, SIZE, `connection ${seed}: ${got.bytes} of ${SIZE} bytes`);
    assert.equal(got.sha256, patternHash(replySeed, SIZE), `connection ${seed}: bytes differ`);
  } finally {
    conn.close();
  }
}

/** Reads a connection the tunnel gave up on: a reset (an error) or an end, never data. */
async function assertCutOff(conn: Deno.Conn): Promise<void> {
  await conn.write(new TextEncoder().encode("anyone there?")).catch(() => {});
  const n = await conn.read(new Uint8Array(64)).catch((error) => {
    assert.ok(error instanceof Deno.errors.ConnectionReset, String(error));
    return null;
  });
  assert.equal(n, null, "data on a refused stream");
}

Deno.test("python tunnel client: --self-test passes (PROTOCOL.md 3.12); --help and bad arguments", async () => {
  const selfTest = await runTunnel(["--self-test"]);
  assert.equal(selfTest.code, 0, selfTest.stderr);
  const help = await runTunnel(["--help"]);
  assert.equal(help.code, 0, help.stderr);
  const bad = await runTunnel(["0", "127.0.0.1", "70000"]);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /error: SERVER_PORT must be in 1 \.\. 65535\n$/);
});

Deno.test("python tunnel client: 8 connections at once, 1 MiB each, echoed with half-close through one session", async () => {
  await withLogs(async (records) => {
    await using target = startTarget("echo");
    await using server = tunnelServer(target.port);
    await using tunnel = await startTunnel(["127.0.0.1", `${server.addr.port}`]);
    // Each writes its own pattern, half-closes, and reads the echo to its end.
    await within(BOUND, "8 echoes", roundTrips(tunnel.port, 8, 1, SIZE));
    assert.equal(target.accepted, 8);
    const stderr = await tunnel.stop();
    assert.match(stderr, /8 streams carried, resumed 0 times/);
    assert.equal(sessionsLogged(records.map(renderRecord)).length, 1);
  });
});

Deno.test("python tunnel client: with a key, 8 connections whose whole reply follows their half-close", async () => {
  await using target = startTarget("reply", SIZE);
  await using server = tunnelServer(target.port, PSK);
  await using tunnel = await startTunnel(["127.0.0.1", `${server.addr.port}`, "--psk", PSK]);
  // The target reads to the end of each request, then sends 1 MiB of pattern 77 and its FIN.
  const replies = Array.from({ length: 8 }, (_, i) => requestReply(tunnel.port, 20 + i, 77));
  await within(BOUND, "8 requests and replies", Promise.all(replies));
  assert.equal(target.accepted, 8);
  await tunnel.stop();
});

Deno.test("python tunnel client: cuts its own link twice (by bytes received); one session on the server, resumed, the streams intact", async () => {
  await withLogs(async (records) => {
    await using target = startTarget("echo");
    await using server = tunnelServer(target.port, PSK);
    // 8 MiB come back in all: both cuts land during the transfer.
    await using tunnel = await startTunnel([
      "127.0.0.1",
      `${server.addr.port}`,
      "--psk",
      PSK,
      "--cut-after",
      `${2 << 20}`,
      "--cut-after",
      `${5 << 20}`,
    ]);
    await within(BOUND, "8 echoes across 2 cuts", roundTrips(tunnel.port, 8, 40, SIZE));
    const stderr = await tunnel.stop();
    await server.close(); // its session says what it counted
    assert.equal(stderr.match(/link lost: cut on purpose/g)?.length, 2, stderr);
    const resumes = Number(stderr.match(/8 streams carried, resumed (\d+) times/)?.[1]);
    assert.ok(resumes >= 2, stderr);
    // The server saw one session, resumed as often as the client says it resumed.
    const lines = records.map(renderRecord);
    const sessions = sessionsLogged(lines);
    assert.equal(sessions.length, 1, lines.join("\n"));
    const id = sessions[0];
    assert.match(stderr, new RegExp(`session ${id}\\w* open`));
    const resumed = eventsLogged(lines, new RegExp(`Session ${id}\\w* resumed after `));
    assert.equal(resumed.total, resumes, lines.join("\n"));
    assert.equal(target.accepted, 8);
  });
});

Deno.test("python tunnel client: a target that refuses gets each stream refused and its connection cut; the tunnel goes on", async () => {
  await withLogs(async (records) => {
    const closedPort = freePort();
    await using server = tunnelServer(closedPort);
    await using tunnel = await startTunnel(["127.0.0.1", `${server.addr.port}`]);
    for (const stream of [1, 3]) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: tunnel.port });
      try {
        await within(BOUND, `stream ${stream} cut off`, assertCutOff(conn));
      } finally {
        conn.close();
      }
      // 3.11: REFUSE "cannot reach HOST:PORT: ERROR"; the client says so.
      await tunnel.waitFor(
        new RegExp(`stream ${stream} refused: cannot reach 127\\.0\\.0\\.1:${closedPort}: .+`),
        `stream ${stream} refused`,
      );
    }
    const stderr = await tunnel.stop();
    assert.match(stderr, /2 streams carried, resumed 0 times/);
    assert.equal(sessionsLogged(records.map(renderRecord)).length, 1);
  });
});

Deno.test("python tunnel client: a stream refused while another is open; the open one carries on to its end", async () => {
  // A target that takes one connection, then stops listening.
  const target = echoTarget();
  await using server = tunnelServer(target.port);
  await using tunnel = await startTunnel(["127.0.0.1", `${server.addr.port}`]);
  const first = await Deno.connect({ hostname: "127.0.0.1", port: tunnel.port });
  try {
    const hello = new TextEncoder().encode("hello");
    await first.write(hello);
    // Echoed: the target accepted and has closed its listener since.
    const got = new Uint8Array(hello.length);
    for (let off = 0; off < got.length;) {
      const n = await within(BOUND, "the echo of hello", first.read(got.subarray(off)));
      assert.ok(n !== null, "the first stream ended early");
      off += n;
    }
    assert.deepEqual(got, hello);

    const second = await Deno.connect({ hostname: "127.0.0.1", port: tunnel.port });
    try {
      await within(BOUND, "the second stream cut off", assertCutOff(second));
    } finally {
      second.close();
    }
    await tunnel.waitFor(/stream 3 refused: cannot reach /, "stream 3 refused");

    // The first stream was not disturbed: the rest of its echo, to its end.
    const writing = (async () => {
      for (const chunk of pattern(9, SIZE, 32 * 1024)) {
        for (let off = 0; off < chunk.length;) off += await first.write(chunk.subarray(off));
      }
      await first.closeWrite();
    })();
    const rest = await within(BOUND, "the first stream's echo", receiveAll(first));
    await writing;
    assert.equal(rest.bytes, SIZE);
    assert.equal(rest.sha256, patternHash(9, SIZE));
  } finally {
    first.close();
  }
  await within(BOUND, "the target's one connection ends", target.done);
  await tunnel.stop();
});

Deno.test("python tunnel client: a wrong or missing key is an auth error (exit 1, one line); the target is never dialed", async () => {
  await using target = startTarget("echo");
  await using server = tunnelServer(target.port, PSK);
  const args = ["0", "127.0.0.1", `${server.addr.port}`];
  const [wrong, missing] = await Promise.all([
    runTunnel([...args, "--psk", "not-the-key"]),
    runTunnel(args),
  ]);
  for (const run of [wrong, missing]) {
    assert.equal(run.code, 1, run.stderr);
    assert.doesNotMatch(run.stderr, /Traceback|listening on/);
    assert.match(run.stderr, /^error: [^\n]*\bauth\b[^\n]*\n$/m);
    assert.equal(run.stderr.match(/^error:/gm)?.length, 1, run.stderr);
  }
  // The other way round: a key the key-less server cannot prove in its accept.
  await using keyless = tunnelServer(target.port);
  const run = await runTunnel(["0", "127.0.0.1", `${keyless.addr.port}`, "--psk", PSK]);
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, /^error: auth: the server's accept MAC is missing or wrong/m);
  assert.equal(target.accepted, 0);
});

Deno.test("python tunnel client: a session server that is no tunnel server echoes our OPEN back: a protocol error, the session aborted", async () => {
  // Our plain listener, echoing: the greeting comes back intact, then our own
  // OPEN of stream 1, an id of the client's parity (3.6): out of turn.
  const listener = listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  accepted.catch(() => {}); // rejected by the close below if the test fails before it
  const tunnel = spawnTunnel(["0", "127.0.0.1", `${listener.addr.port}`]);
  let session: ImmortalConn | undefined;
  try {
    await tunnel.waitFor(/listening on 127\.0\.0\.1:(\d+)/, "listening");
    const port = Number(tunnel.stderr.match(/listening on 127\.0\.0\.1:(\d+)/)![1]);
    session = await within(BOUND, "the session accepted", accepted);
    const echoing = session.readable.pipeTo(session.writable).catch(() => {});
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await within(BOUND, "the connection cut off", assertCutOff(conn));
    } finally {
      conn.close();
    }
    const exit = await within(BOUND, "the client exits", tunnel.exited);
    assert.equal(exit.code, 1, exit.stderr);
    assert.match(exit.stderr, /^error: protocol error: the peer opened stream 1 out of turn\n$/m);
    // The client told the server with a close (Part 1): the session ended, aborted.
    await assert.rejects(within(BOUND, "the session ends", session.closed), /protocol error/);
    await echoing;
  } finally {
    session?.close();
    listener.close();
    await tunnel[Symbol.asyncDispose]();
  }
});
