/**
 * examples/immortal_client.py, a client of the session protocol written from
 * PROTOCOL.md Parts 1 and 4 in Python's standard library only, run as a child
 * process against our real listener, which echoes every session back: over
 * TCP, and over HTTP (WebSocket and HTTP-streaming links, through our
 * HttpLinkAcceptor mounted in `Deno.serve`). The client sends a pattern and
 * prints the SHA-256 of what it got back; it cuts its own link by bytes
 * received (never by a timer), and a FaultProxy cuts links by bytes
 * forwarded. Every wait is on a process exit or a promise, bounded by a
 * generous deadline that fails the test when it passes.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { type ImmortalConn, type ImmortalListener, listen } from "../lib/conn/mod.ts";
import { HttpLinkAcceptor } from "../lib/link/mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { within } from "./_helpers.ts";

const CLIENT = new URL("../examples/immortal_client.py", import.meta.url).pathname;
/** The only time bound: exceeding it fails the test; nothing waits for it to pass. */
const BOUND = 60_000;
const SIZE = 4 << 20;
const PSK = "python-s3cret";

/** The client's `--bytes` pattern: byte i is i % 251. */
function pattern(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = i % 251;
  return bytes;
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** What `--sha256` prints for the whole pattern echoed back. */
const EXPECTED = `${sha256(pattern(SIZE))} ${SIZE}\n`;

interface PythonRun {
  code: number;
  stdout: Uint8Array;
  stderr: string;
}

/** Runs the client to its exit (killed if it outlives BOUND), feeding it `input` if given. */
async function runPython(args: string[], input?: Uint8Array): Promise<PythonRun> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("python3", {
      args: [CLIENT, ...args],
      stdin: input ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    // CI installs python3: without it this test fails, it does not skip.
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new Error(
      "python3 is missing: this test runs examples/immortal_client.py with it " +
        "(.ci/run installs the Debian package python3)",
    );
  }
  const writing = input
    ? (async () => {
      const writer = child.stdin.getWriter();
      try {
        await writer.write(input);
        await writer.close();
      } catch {
        // The client exited before reading it all: its exit status says why.
      }
    })()
    : Promise.resolve();
  const output = Promise.all([
    new Response(child.stdout).bytes(),
    new Response(child.stderr).text(),
  ]);
  let code: number;
  try {
    code = (await within(BOUND, `python3 ${args.join(" ")}`, child.status)).code;
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    const [, stderr] = await output;
    await writing;
    throw new Error(`${(error as Error).message}\n--- stderr:\n${stderr}`);
  }
  const [stdout, stderr] = await output;
  await writing;
  return { code, stdout, stderr };
}

/** Our listener, echoing every session it accepts; disposing it ends them all. */
function echoServer(options: { key?: string } = {}) {
  const listener = listen({ hostname: "127.0.0.1", port: 0, ...options });
  return echoing(listener, listener.addr.port, async () => {});
}

/** What the HTTP server of {@linkcode httpEchoServer} was asked for, by kind of request. */
interface LinkRequests {
  /** WebSocket upgrades (PROTOCOL.md 4.1). */
  upgrades: number;
  /** HTTP-streaming links opened (4.2). */
  opens: number;
  /** Upstream POSTs of HTTP-streaming links (4.2). */
  posts: number;
}

/**
 * The same echoing listener, taking its links over HTTP: our HttpLinkAcceptor
 * mounted at `/link` of a `Deno.serve` app (README "Immortal sessions over
 * HTTP"), which counts the requests it passes on, by kind.
 */
function httpEchoServer(options: { key?: string } = {}) {
  const links = new HttpLinkAcceptor();
  const requests: LinkRequests = { upgrades: 0, opens: 0, posts: 0 };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req, info) => {
    if (new URL(req.url).pathname !== "/link") return new Response("the app's own page");
    const link = req.headers.get("x-immortal-link");
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") requests.upgrades++;
    else if (link === "open") requests.opens++;
    else if (link !== null) requests.posts++;
    return links.handle(req, info);
  });
  const listener = listen({ acceptor: links, ...options });
  return { ...echoing(listener, server.addr.port, () => server.shutdown()), requests };
}

/** Echoes every session `listener` accepts; disposing ends them all, then runs `stop`. */
function echoing(listener: ImmortalListener, port: number, stop: () => Promise<void>) {
  const sessions: ImmortalConn[] = [];
  const echoes: Promise<void>[] = [];
  const accepting = (async () => {
    for (;;) {
      let conn: ImmortalConn;
      try {
        conn = await listener.accept();
      } catch {
        return; // the listener was closed
      }
      sessions.push(conn);
      // Ends with the client's FIN and sends ours: the session then completes.
      echoes.push(conn.readable.pipeTo(conn.writable).catch(() => {}));
    }
  })();
  return {
    listener,
    sessions,
    port,
    /** The one session the client opened: exactly one, however often it resumed. */
    async onlySession(): Promise<ImmortalConn> {
      assert.equal(sessions.length, 1, `the listener accepted ${sessions.length} sessions`);
      await within(BOUND, "the server's session ends cleanly", sessions[0].closed);
      return sessions[0];
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting;
      for (const conn of sessions) conn.close();
      await Promise.allSettled([...echoes, ...sessions.map((conn) => conn.closed)]);
      await stop();
    },
  };
}

/** Asserts a clean exit with the intact echo printed. */
function assertEchoed(run: PythonRun): void {
  assert.equal(run.code, 0, run.stderr);
  assert.equal(new TextDecoder().decode(run.stdout), EXPECTED, run.stderr);
  assert.doesNotMatch(run.stderr, /Traceback|error:/);
}

/** The client cuts its own link twice, by bytes received: after 1 MiB and 2.5 MiB. */
const CUT_TWICE = ["--cut-after", `${1 << 20}`, "--cut-after", `${(5 << 20) / 2}`];

/** The whole pattern echoed, with a key, through two cuts of the client's own (after the address). */
const RESUME_TWICE = ["--psk", PSK, "--bytes", `${SIZE}`, "--sha256", ...CUT_TWICE];

/**
 * Asserts that `run` echoed everything through its two cuts, into one
 * session of `server` that resumed as often as the client says, then ended.
 */
async function assertResumedTwice(
  run: PythonRun,
  server: { onlySession(): Promise<ImmortalConn>; listener: { sessionCount: number } },
): Promise<void> {
  assertEchoed(run);
  const cuts = run.stderr.match(/link lost: cut on purpose/g) ?? [];
  assert.equal(cuts.length, 2, run.stderr);
  const session = await server.onlySession();
  assert.ok(resumesOf(run) >= 2, run.stderr);
  assert.equal(session.stats.reconnects, resumesOf(run), run.stderr);
  assert.equal(session.stats.bytesRead, SIZE);
  assert.equal(server.listener.sessionCount, 0);
}

/** The client's own count of resumes, from its last line on stderr. */
function resumesOf(run: PythonRun): number {
  const match = run.stderr.match(/session ended cleanly: .*resumed (\d+) times/);
  assert.ok(match, run.stderr);
  return Number(match[1]);
}

Deno.test("python session client: --self-test passes (RFC 7748 X25519, PROTOCOL.md 1.19 and 1.20 vectors)", async () => {
  const run = await runPython(["--self-test"]);
  assert.equal(run.code, 0, run.stderr);
  assert.match(new TextDecoder().decode(run.stdout), /^self-test passed/);
});

Deno.test("python session client: 4 MiB echo without a key; the server forgets the session on bye", async () => {
  await using server = echoServer();
  const run = await runPython(["127.0.0.1", `${server.port}`, "--bytes", `${SIZE}`, "--sha256"]);
  assertEchoed(run);
  const session = await server.onlySession();
  assert.equal(session.stats.bytesRead, SIZE);
  assert.equal(session.stats.reconnects, 0);
  // The client waits for the server to hang up after its bye: by then it is forgotten.
  assert.equal(server.listener.sessionCount, 0);
});

Deno.test("python session client: 4 MiB echo with a pre-shared key, through stdin and stdout", async () => {
  await using server = echoServer({ key: PSK });
  const input = pattern(SIZE);
  const run = await runPython(["127.0.0.1", `${server.port}`, "--psk", PSK], input);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout.length, SIZE, run.stderr);
  assert.equal(sha256(run.stdout), sha256(input));
  await server.onlySession();
  assert.equal(server.listener.stats.refusedAuth, 0);
});

Deno.test("python session client: a wrong or missing key is an auth error (exit 1, one line)", async () => {
  await using server = echoServer({ key: PSK });
  const args = ["127.0.0.1", `${server.port}`, "--bytes", "1000", "--sha256"];
  const [wrong, missing] = await Promise.all([
    runPython([...args, "--psk", "not-the-key"]),
    runPython(args),
  ]);
  for (const run of [wrong, missing]) {
    assert.equal(run.code, 1, run.stderr);
    assert.doesNotMatch(run.stderr, /Traceback/);
    assert.match(run.stderr, /^error: [^\n]*\bauth\b[^\n]*\n$/m);
    assert.equal(run.stdout.length, 0);
  }
  assert.equal(server.listener.stats.refusedAuth, 2);
  assert.equal(server.sessions.length, 0);

  // The other way round: a client with a key, a server without one, which
  // cannot prove the key in its accept. The client refuses it.
  await using keyless = echoServer();
  const run = await runPython(["127.0.0.1", `${keyless.port}`, "--bytes", "1000", "--psk", PSK]);
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, /^error: auth: the server's accept MAC is missing or wrong/m);
});

Deno.test("python session client: cuts its own link twice (by bytes received), resumes, the echo is intact", async () => {
  await using server = echoServer({ key: PSK });
  const run = await runPython([
    "127.0.0.1",
    `${server.port}`,
    ...RESUME_TWICE,
  ]);
  await assertResumedTwice(run, server);
});

Deno.test("python session client: a proxy resets the link (by bytes forwarded, both ways), the echo is intact", async () => {
  await using server = echoServer();
  await echoThroughResets(server, (port) => ["127.0.0.1", `${port}`]);
});

/**
 * The pattern echoed by `server` while a fault proxy in front of it resets
 * the link twice downstream and once upstream, by bytes forwarded, each
 * once the session is on a link (so each costs a resume); `target` gives
 * the client's arguments for the proxy's port. Returns the client's run.
 */
async function echoThroughResets(
  server: { port: number; sessions: ImmortalConn[]; onlySession(): Promise<ImmortalConn> },
  target: (port: number) => string[],
): Promise<PythonRun> {
  const proxy = await FaultProxy.start({ targetPort: server.port });
  try {
    const connected = () => server.sessions[0]?.state === "connected";
    using down = proxy.cutEvery({ bytes: 1 << 20, max: 2, direction: "down", when: connected });
    using up = proxy.cutEvery({ bytes: 3 << 20, max: 1, direction: "up", when: connected });
    const run = await runPython([...target(proxy.port), "--bytes", `${SIZE}`, "--sha256"]);
    assertEchoed(run);
    assert.equal(down.stop(), 2, `cuts downstream at ${down.at}`);
    assert.equal(up.stop(), 1, `cuts upstream at ${up.at}`);
    const session = await server.onlySession();
    assert.ok(resumesOf(run) >= 2, run.stderr);
    assert.equal(session.stats.reconnects, resumesOf(run), run.stderr);
    assert.equal(session.stats.bytesRead, SIZE);
    return run;
  } finally {
    await proxy.close();
  }
}

/** The two links over HTTP (PROTOCOL.md Part 4), by the URL scheme the client takes. */
const HTTP_LINKS = [
  { scheme: "ws", name: "a WebSocket link" },
  { scheme: "http", name: "an HTTP-streaming link" },
] as const;

/** Asserts that the links came over `scheme`, and at least `links` of them. */
function assertLinksOver(scheme: "ws" | "http", requests: LinkRequests, links: number): void {
  const opened = scheme === "ws" ? requests.upgrades : requests.opens;
  assert.ok(opened >= links, `${opened} links opened: ${JSON.stringify(requests)}`);
  if (scheme === "ws") {
    assert.equal(requests.opens + requests.posts, 0, JSON.stringify(requests));
  } else {
    assert.equal(requests.upgrades, 0, JSON.stringify(requests));
    // The hello and the proof each go up in a POST (4.2), then the session's bytes.
    assert.ok(requests.posts > 2 * opened, JSON.stringify(requests));
  }
}

for (const { scheme, name } of HTTP_LINKS) {
  for (const key of [undefined, PSK]) {
    Deno.test(`python session client: 4 MiB echo over ${name} (${scheme}://), ${key ? "with" : "without"} a pre-shared key`, async () => {
      await using server = httpEchoServer({ key });
      const run = await runPython([
        `${scheme}://127.0.0.1:${server.port}/link`,
        "--bytes",
        `${SIZE}`,
        "--sha256",
        ...(key ? ["--psk", key] : []),
      ]);
      assertEchoed(run);
      assertLinksOver(scheme, server.requests, 1);
      const session = await server.onlySession();
      assert.equal(session.stats.bytesRead, SIZE);
      assert.equal(session.stats.reconnects, 0);
      assert.equal(server.listener.stats.refusedAuth, 0);
      // The client waits for the server to end the link after its bye: by then it is forgotten.
      assert.equal(server.listener.sessionCount, 0);
    });
  }

  Deno.test(`python session client: over ${name} (${scheme}://), cuts it twice (by bytes received), resumes into one session, the echo is intact`, async () => {
    await using server = httpEchoServer({ key: PSK });
    const run = await runPython([
      `${scheme}://127.0.0.1:${server.port}/link`,
      ...RESUME_TWICE,
    ]);
    await assertResumedTwice(run, server);
    assertLinksOver(scheme, server.requests, 1 + resumesOf(run));
  });
}

for (const { scheme, name } of HTTP_LINKS) {
  Deno.test(`python session client: over ${name} (${scheme}://), a proxy resets all its connections (by bytes forwarded, both ways), the echo is intact`, async () => {
    await using server = httpEchoServer();
    const run = await echoThroughResets(server, (port) => [`${scheme}://127.0.0.1:${port}/link`]);
    assertLinksOver(scheme, server.requests, 1 + resumesOf(run));
  });
}

Deno.test("python session client: a URL that is no link endpoint is an error (exit 1, one line); a URL takes no PORT (exit 2)", async () => {
  await using server = httpEchoServer();
  const [ws, http, both] = await Promise.all([
    runPython([`ws://127.0.0.1:${server.port}/elsewhere`, "--bytes", "1000"]),
    runPython([`http://127.0.0.1:${server.port}/elsewhere`, "--bytes", "1000"]),
    runPython([`ws://127.0.0.1:${server.port}/link`, `${server.port}`]),
  ]);
  for (const run of [ws, http]) {
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /^error: cannot open a session at [a-z]+:\/\/[^\n]*\/elsewhere: /m);
    assert.doesNotMatch(run.stderr, /Traceback/);
    assert.equal(run.stdout.length, 0);
  }
  assert.equal(both.code, 2, both.stderr);
  assert.match(both.stderr, /a URL takes no PORT/);
  assert.equal(server.sessions.length, 0);
});
