/**
 * examples/relay_client.py, the relay client in Python's standard library,
 * run as a child process against a real relay (serveRelay, with a secret and
 * a short keep-alive), with a RelayNode as the other party. Every wait is on
 * an event (a line the client prints, an event the node hears), bounded only
 * by a generous deadline that fails the test when it passes.
 */

import assert from "node:assert/strict";
import { type RelayEvent, RelayNode } from "../mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { waitUntil, within } from "./_helpers.ts";
import { TextLineStream } from "./_lines.ts";
import { startNginx } from "./_proxies.ts";
import { recordEvents, startRelay, welcomeAndDrop } from "./_relay.ts";

const CLIENT = new URL("../examples/relay_client.py", import.meta.url).pathname;
const SECRET = "python-s3cret";
/** The relay pings every 200 ms (default 1000): the test sees many rounds quickly. */
const KEEP_ALIVE = 200;
/**
 * Silence after which the relay gives a node up: 7.5 beats rather than the
 * default 2.5, so that a loaded machine that is slow to run the client's
 * pong is not taken for a client that does not answer.
 */
const FADE_AFTER = 1500;
/**
 * The relay pings a node in a sweep only if it has heard from it within
 * FADE_AFTER (else it declares it gone), and the k-th ping goes out at least
 * k × KEEP_ALIVE after the join. So a client that receives ping number
 * PINGS, with PINGS × KEEP_ALIVE > FADE_AFTER, was heard from after its
 * hello: its pongs are what kept it in, whatever the timing.
 */
const PINGS = Math.floor(FADE_AFTER / KEEP_ALIVE) + 2;
/** The only time bound: exceeding it fails the test; nothing waits for it to pass. */
const BOUND = 30_000;

/** The Python client as a child process: its stdout read line by line, stdin to type into. */
function startPython(args: string[], env: Record<string, string> = {}) {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("python3", {
      args: [CLIENT, ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env,
    }).spawn();
  } catch (error) {
    // CI installs python3: without it this test fails, it does not skip.
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new Error(
      "python3 is missing: this test runs examples/relay_client.py with it " +
        "(.ci/run installs the Debian package python3)",
    );
  }
  const lines: string[] = [];
  let stderr = "";
  let ended = false;
  const waiters = new Set<() => void>();
  const wake = () => waiters.forEach((w) => w());
  const reading = Promise.all([
    (async () => {
      const text = child.stdout.pipeThrough(new TextDecoderStream());
      for await (const line of text.pipeThrough(new TextLineStream())) {
        lines.push(line);
        wake();
      }
    })(),
    (async () => {
      for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) stderr += text;
    })(),
  ]).finally(() => {
    ended = true;
    wake();
  });
  const stdin = child.stdin.getWriter();
  let stdinClosed = false;
  const closeStdin = async () => {
    if (stdinClosed) return;
    stdinClosed = true;
    await stdin.close().catch(() => {});
  };
  const output = () => `--- stdout:\n${lines.join("\n")}\n--- stderr:\n${stderr}`;
  return {
    lines,
    get stderr() {
      return stderr;
    },
    /** Resolves once the client has printed `line` (a string: exactly that line). */
    async waitLine(line: string | RegExp): Promise<void> {
      const has = () => lines.some((l) => typeof line === "string" ? l === line : line.test(l));
      let late = false;
      const deadline = setTimeout(() => {
        late = true;
        wake();
      }, BOUND);
      try {
        while (!has()) {
          if (late) throw new Error(`python: no line ${line} within ${BOUND} ms\n${output()}`);
          if (ended) throw new Error(`python: its output ended before ${line}\n${output()}`);
          await new Promise<void>((resolve) => {
            const w = () => {
              waiters.delete(w);
              resolve();
            };
            waiters.add(w);
          });
        }
      } finally {
        clearTimeout(deadline);
      }
    },
    /** Types one line into the client. */
    async type(line: string): Promise<void> {
      await stdin.write(new TextEncoder().encode(`${line}\n`));
    },
    /** Ends the client's input (it leaves), and resolves with its exit status. */
    async end(): Promise<Deno.CommandStatus> {
      await closeStdin();
      return await this.exited();
    },
    /** Resolves with the client's exit status once it exits by itself, its output read. */
    async exited(): Promise<Deno.CommandStatus> {
      const status = await within(BOUND, "python exits", child.status).catch((error) => {
        throw new Error(`${error.message}\n${output()}`);
      });
      await reading;
      return status;
    },
    /** Sends the client `signal` (SIGSTOP, SIGCONT, ...). */
    signal(signal: Deno.Signal): void {
      child.kill(signal);
    },
    /** For `finally`: kills the client if it still runs, and releases its pipes. */
    async dispose(): Promise<void> {
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited already.
      }
      await closeStdin();
      await child.status;
      await reading;
    },
  };
}

function isMessage(
  event: RelayEvent,
  from: string,
  text: string,
  to?: string,
): boolean {
  return event.type === "message" && event.from === from && event.text === text && event.to === to;
}

Deno.test("python example: joins, sees presence and messages both ways, answers keep-alives, leaves", async () => {
  const relay = startRelay({ secret: SECRET, keepAlive: KEEP_ALIVE, fadeAfter: FADE_AFTER });
  const deno = await RelayNode.connect(relay.url, {
    session: "lab",
    nickname: "deno",
    secret: SECRET,
  });
  const heard = recordEvents(deno);
  let py: ReturnType<typeof startPython> | undefined;
  try {
    py = startPython([
      relay.url,
      "py",
      "--session",
      "lab",
      "--secret",
      SECRET,
      "--show-keepalive",
    ]);
    // Join: the welcome and the member already in the room; deno hears py join.
    await py.waitLine("welcome py");
    await py.waitLine("here deno");
    await heard.until(
      () => heard.events.some((e) => e.type === "join" && e.nickname === "py"),
      "deno hears py join",
    );

    // Keep-alive: py answers ping after ping, past the relay's fade deadline
    // (see PINGS): it is still a member, nobody heard it go.
    assert.ok(PINGS * KEEP_ALIVE > FADE_AFTER);
    await py.waitLine(`pong ${PINGS}`);
    assert.equal(relay.relay.stats.faded, 0, "the relay declared a node gone");
    assert.ok(!heard.events.some((e) => e.type === "leave"), "deno heard someone leave");

    // Presence as py sees it: another node joins, then leaves.
    await using eve = await RelayNode.connect(relay.url, {
      session: "lab",
      nickname: "eve",
      secret: SECRET,
    });
    await py.waitLine("joined eve");
    await eve.close();
    await py.waitLine("left eve");

    // deno -> py: to everyone, then to py only.
    deno.send("hello from deno");
    await py.waitLine("deno: hello from deno");
    deno.sendTo("py", "psst, py");
    await py.waitLine("deno (to you): psst, py");
    // One message, one line: a line break (and a backslash) arrives escaped.
    deno.send("two\\lines\nhere");
    await py.waitLine("deno: two\\\\lines\\nhere");
    deno.sendNumbers([3, 1.5], "py");
    await py.waitLine("deno (numbers, to you): 3 1.5");

    // py -> deno: a typed line goes to everyone, "/to NAME text" to one node.
    await py.type("hello from python");
    await py.type("/to deno just for you");
    await heard.until(
      () =>
        heard.events.some((e) => isMessage(e, "py", "hello from python")) &&
        heard.events.some((e) => isMessage(e, "py", "just for you", "deno")),
      "deno hears py's broadcast and directed messages",
    );

    // A frame the relay refuses is reported, and the client carries on.
    await py.type("/to nobody hi");
    await py.waitLine(/^error no-such-node: /);
    deno.send("still here?");
    await py.waitLine("deno: still here?");

    // Still a member after all that: the keep-alive kept going throughout.
    await py.waitLine(`pong ${2 * PINGS}`);
    assert.equal(relay.relay.stats.faded, 0, "the relay declared a node gone");

    // End of input: py says bye, the relay confirms, deno hears "left".
    const status = await py.end();
    assert.equal(status.code, 0, py.stderr);
    assert.equal(py.lines.at(-1), "bye");
    assert.equal(py.stderr, "");
    await heard.until(
      () =>
        heard.events.some((e) => e.type === "leave" && e.nickname === "py" && e.reason === "left"),
      "deno hears py leave",
    );
  } finally {
    await py?.dispose();
    await deno.close();
    await heard.done();
    await relay.shutdown();
  }
});

Deno.test("python example: lines piped in faster than the relay's rate all arrive, in order, none refused rate-limited; /quit leaves once they have gone, and sends nothing after it (with and without --exactly-once)", async () => {
  // 20 messages a second (bursts of 40): 80 lines at once were half refused.
  const relay = startRelay({ secret: SECRET, rate: 20 });
  const deno = await RelayNode.connect(relay.url, {
    session: "lab",
    nickname: "deno",
    secret: SECRET,
  });
  const heard = recordEvents(deno);
  try {
    for (const mode of [[], ["--exactly-once"]]) {
      const name = `py${mode.length}`;
      const py = startPython([relay.url, name, "--session", "lab", "--secret", SECRET, ...mode]);
      try {
        await py.waitLine(`welcome ${name}`);
        const lines = Array.from({ length: 80 }, (_, i) => `line ${i}`);
        // /quit leaves once everything before it has gone; what follows is not sent.
        await py.type([...lines, "/quit", "after the quit"].join("\n"));
        const status = await py.end();
        assert.equal(status.code, 0, py.stderr);
        assert.equal(py.lines.at(-1), "bye");
        assert.ok(!py.lines.some((l) => l.startsWith("error")), py.lines.join("\n"));
        const from = () =>
          heard.events.flatMap((e) => e.type === "message" && e.from === name ? [e.text] : []);
        await heard.until(() => from().length >= lines.length, `deno hears all of ${name}`);
        assert.deepEqual(from(), lines);
      } finally {
        await py.dispose();
      }
    }
  } finally {
    await deno.close();
    await heard.done();
    await relay.shutdown();
  }
});

Deno.test("python example: a clashing nickname, the secret from the environment, and one-line errors", async () => {
  const relay = startRelay({ secret: SECRET, keepAlive: KEEP_ALIVE, fadeAfter: FADE_AFTER });
  const first = await RelayNode.connect(relay.url, {
    session: "s",
    nickname: "py",
    secret: SECRET,
  });
  const heard = recordEvents(first);
  const started: ReturnType<typeof startPython>[] = [];
  const python = (args: string[], env: Record<string, string> = {}) => {
    const p = startPython(args, env);
    started.push(p);
    return p;
  };
  /** Asserts one "error: ..." line on stderr matching `pattern`, no traceback, exit `code`. */
  const failsWith = async (p: ReturnType<typeof python>, pattern: RegExp, code = 1) => {
    const status = await p.end();
    assert.equal(status.code, code, p.stderr);
    assert.doesNotMatch(p.stderr, /Traceback/);
    assert.match(p.stderr, /^error: [^\n]+\n$/);
    assert.match(p.stderr, pattern);
  };
  try {
    // The wanted nickname is taken: the client goes by the one the relay gave it.
    const twin = python([relay.url, "py", "--session", "s"], { IMMORTAL_RELAY_SECRET: SECRET });
    await twin.waitLine("welcome py(1)");
    await twin.waitLine("here py");
    // Commands are never sent as typed, a mistyped one least of all; "//" sends a "/".
    for (
      const line of ["/to", "/to py   ", "/nope, to all", "//slash", "/to py hi from your twin"]
    ) {
      await twin.type(line);
    }
    await heard.until(
      () => heard.events.some((e) => isMessage(e, "py(1)", "hi from your twin", "py")),
      "py hears its twin",
    );
    // All the twin sent, in order: the last line went after every other.
    assert.deepEqual(
      heard.events.flatMap((e) => e.type === "message" && e.from === "py(1)" ? [e.text] : []),
      ["/slash", "hi from your twin"],
    );
    first.sendTo("py(1)", "hi twin");
    await twin.waitLine("py (to you): hi twin");
    assert.equal((await twin.end()).code, 0, twin.stderr);
    assert.equal(twin.lines.at(-1), "bye");
    assert.equal(
      twin.stderr,
      "usage: /to NAME text\nusage: /to NAME text\nunknown command /nope,, nothing sent: try " +
        "/to NAME text, /quit; start a line with // to send one that starts with /\n",
    );

    // --help; a wrong secret and none at all (refused, with the relay's error
    // code); nobody listening on the port. Independent: all at once.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const closedPort = listener.addr.port;
    listener.close();
    const help = python(["--help"]);
    await Promise.all([
      help.end().then((status) => {
        assert.equal(status.code, 0, help.stderr);
        assert.match(help.lines.join("\n"), /usage: .*relay_client\.py/);
      }),
      failsWith(
        python([relay.url, "x", "--secret", "wrong"]),
        /the relay refused the join: unauthorized: .*\(close 4401\)/,
      ),
      failsWith(
        python([relay.url, "x"], { IMMORTAL_RELAY_SECRET: "" }),
        /the relay refused the join: unauthorized/,
      ),
      failsWith(
        python([`http://127.0.0.1:${closedPort}`, "x", "--secret", SECRET]),
        new RegExp(`^error: cannot reach the relay at http://127\\.0\\.0\\.1:${closedPort}: `),
      ),
      // A URL it cannot use is a bad argument, as the header says: status 2, as argparse's.
      failsWith(
        python([`ftp://127.0.0.1:${closedPort}`, "x"]),
        /^error: the relay URL must be http:\/\/, https:\/\/, ws:\/\/ or wss:\/\/, got ftp:/,
        2,
      ),
      failsWith(
        python(["http://127.0.0.1:0", "x"]),
        /^error: the port in the relay URL http:\/\/127\.0\.0\.1:0 is not a number in 1-65535$/m,
        2,
      ),
    ]);

    // The relay goes away under a joined client: it says how, and exits 1.
    const late = python([relay.url, "late", "--session", "s", "--secret", SECRET]);
    await late.waitLine("welcome late");
    await relay.shutdown();
    await failsWith(late, /the relay closed the connection: 1001 relay shutting down/);
  } finally {
    for (const p of started) await p.dispose();
    await first.close();
    await heard.done();
    await relay.shutdown();
  }
});

Deno.test("python example: stopped until the relay gives it up, it says why once it runs again (the relay's close, not a broken pipe)", async () => {
  const relay = startRelay({ secret: SECRET, keepAlive: KEEP_ALIVE, fadeAfter: FADE_AFTER });
  const deno = await RelayNode.connect(relay.url, {
    session: "lab",
    nickname: "deno",
    secret: SECRET,
  });
  const heard = recordEvents(deno);
  const connections = () => relay.relay.stats.connections?.connections;
  const alone = connections();
  let py: ReturnType<typeof startPython> | undefined;
  try {
    py = startPython([relay.url, "py", "--session", "lab", "--secret", SECRET]);
    await py.waitLine("welcome py");
    await heard.until(
      () => heard.events.some((e) => e.type === "join" && e.nickname === "py"),
      "deno hears py join",
    );
    // Stopped, py answers no ping: the relay declares it gone, and sends it
    // its close (4408) with the reason, which py cannot read yet.
    py.signal("SIGSTOP");
    await heard.until(
      () =>
        heard.events.some((e) => e.type === "leave" && e.nickname === "py" && e.reason === "gone"),
      "deno hears py gone",
    );
    // With no echo of its close coming, the relay then ends the TCP
    // connection (it says so by no event). Only then does py's answer to the
    // pings still waiting for it fail (broken pipe) when it runs again: the
    // case to test, where a client that stops reading at the first failed
    // write never sees the close frame behind those pings.
    await waitUntil(() => connections() === alone, "the relay drops py's connection");
    py.signal("SIGCONT");
    const status = await py.exited();
    assert.equal(status.code, 1, py.stderr);
    assert.equal(py.stderr, "error: the relay closed the connection: 4408 keep-alive missed\n");
  } finally {
    await py?.dispose();
    await deno.close();
    await heard.done();
    await relay.shutdown();
  }
});

// --exactly-once (PROTOCOL.md 2.21): the client as a node with an id, written
// from the document. The other party is our RelayNode, which always is one.

/** Numbered messages each way in the exactly-once tests. */
const COUNT = 200;
/** RelayNode settings for the exactly-once tests: it comes back quickly after a restart. */
const NODE = { secret: SECRET, backoff: { initial: 10, max: 100 } };

/** `from`..`to` as strings: the texts of numbered messages. */
function range(from: number, to: number): string[] {
  return Array.from({ length: to - from + 1 }, (_, i) => String(from + i));
}

/** Sends `from`..`to` from `node` to everyone, a round of 20 at a time, until the relay has them. */
async function sendNumbered(node: RelayNode, from: number, to: number): Promise<void> {
  for (const text of range(from, to)) {
    node.send(text);
    if (Number(text) % 20 === 0) await node.flush();
  }
  await node.flush();
}

/** The texts `node`'s recorder heard from `from` (to everyone), in order. */
function textsFrom(events: RelayEvent[], from: string): string[] {
  return events.flatMap((e) => e.type === "message" && e.from === from && !e.to ? [e.text] : []);
}

/** The texts the Python client printed from `from` (to everyone), in order. */
function printedFrom(lines: string[], from: string): string[] {
  return lines.flatMap((l) => l.startsWith(`${from}: `) ? [l.slice(from.length + 2)] : []);
}

/** The Python client as node "py" of `session`, with --exactly-once, through the proxy at `port`. */
function startExactlyOnce(port: number, session: string) {
  return startPython([
    `http://127.0.0.1:${port}`,
    "py",
    "--session",
    session,
    "--secret",
    SECRET,
    "--exactly-once",
  ]);
}

/** Joins and leaves naming `nickname`: a blip must not show. */
function presence(events: RelayEvent[], nickname: string): RelayEvent[] {
  return events.filter((e) => (e.type === "join" || e.type === "leave") && e.nickname === nickname);
}

Deno.test("python example --exactly-once: 200 numbered messages each way while its link is reset again and again: each arrives once and in order, both ways; nobody hears it leave", async () => {
  // A wide fade: this test is about resets, not about how fast a busy machine reconnects.
  const relay = startRelay({ secret: SECRET, rate: 100_000, keepAlive: 1000, fadeAfter: 60_000 });
  const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
  const deno = await RelayNode.connect(relay.url, { ...NODE, session: "eo", nickname: "deno" });
  const heard = recordEvents(deno);
  let py: ReturnType<typeof startPython> | undefined;
  try {
    py = startExactlyOnce(proxy.port, "eo");
    await py.waitLine("welcome py");
    await heard.until(() => deno.members.some((m) => m.nickname === "py"), "deno hears py join");
    const joined = heard.events.length;
    // Resets by bytes forwarded each way: py's messages and pongs go up,
    // deno's messages and the acks come down; faults land in both. A fault
    // that falls due waits until py's link is past its handshake: until a
    // chunk has followed the welcome down it (else faults that fell due
    // together would cut one reconnect after another, before any welcome).
    let sinceWelcome = 0; // chunks down py's link since its welcome; -1: a new link, none yet
    proxy.tap = (chunk, direction) => {
      if (direction === "up") return;
      if (new TextDecoder().decode(chunk).includes('"t":"welcome"')) sinceWelcome = 0;
      else if (sinceWelcome >= 0) sinceWelcome++;
    };
    const cut = {
      when: () => sinceWelcome > 0,
      fault: () => {
        sinceWelcome = -1;
        return proxy.reset();
      },
    };
    using up = proxy.cutEvery({ bytes: 1500, max: 6, direction: "up", ...cut });
    using down = proxy.cutEvery({ bytes: 3000, max: 6, direction: "down", ...cut });
    // Both send in rounds of 20, the next once the last was taken (py's:
    // once deno heard it), so that the exchange spans many faults.
    const typing = py;
    const pySending = async () => {
      for (let sent = 0; sent < COUNT; sent += 20) {
        await typing.type(range(sent + 1, sent + 20).join("\n"));
        const heardAll = () => textsFrom(heard.events, "py").length >= sent + 20;
        await heard.until(heardAll, `deno hearing py's first ${sent + 20}`);
      }
    };
    await within(60_000, "sending", Promise.all([pySending(), sendNumbered(deno, 1, COUNT)]));
    await py.waitLine(`deno: ${COUNT}`);
    const resets = up.stop() + down.stop();
    assert.ok(resets >= 4, `only ${resets} resets hit py's link`);
    assert.ok(py.lines.some((l) => l.startsWith("reconnecting: ")), "py never reconnected");
    // Once each, in order, both ways.
    assert.deepEqual(printedFrom(py.lines, "deno"), range(1, COUNT));
    assert.deepEqual(textsFrom(heard.events, "py"), range(1, COUNT));
    // Blips, not leaves: deno heard nothing of them; py lost nothing and was refused nothing.
    assert.deepEqual(presence(heard.events.slice(joined), "py"), [], "deno heard py come and go");
    assert.deepEqual(py.lines.filter((l) => /^(missed|error|gone|left) /.test(l)), []);
    assert.ok(relay.relay.stats.replayed + relay.relay.stats.duplicates > 0, "no fault mattered");
    // End of input: all was acknowledged, so py says bye at once; deno hears it leave.
    const status = await py.end();
    assert.equal(status.code, 0, py.stderr);
    assert.equal(py.lines.at(-1), "bye");
    assert.equal(py.stderr, "");
    await heard.until(
      () => presence(heard.events, "py").some((e) => e.type === "leave" && e.reason === "left"),
      "deno hears py leave",
    );
  } finally {
    await py?.dispose();
    await deno.close();
    await heard.done();
    await proxy.close();
    await relay.shutdown();
  }
});

Deno.test("python example --exactly-once: the relay restarted while messages flow: py reports the missed epoch, sends what was not acknowledged, and gets what waited for it; nothing lost", async () => {
  // A long grace: the test waits on events, never on the clock.
  const settings = {
    secret: SECRET,
    rate: 100_000,
    rejoinGrace: 120_000,
    keepAlive: 1000,
    fadeAfter: 60_000,
  };
  let relay = startRelay(settings);
  const port = relay.addr.port;
  const proxy = await FaultProxy.start({ targetPort: port });
  const deno = await RelayNode.connect(relay.url, { ...NODE, session: "r", nickname: "deno" });
  const heard = recordEvents(deno);
  let py: ReturnType<typeof startPython> | undefined;
  try {
    py = startExactlyOnce(proxy.port, "r");
    await py.waitLine("here deno");
    await sendNumbered(deno, 1, 50);
    await py.waitLine("deno: 50");
    // py sends 100 in one go, and the relay shuts down under them, as soon as
    // another 1000 bytes have gone up: in the middle of the flow, with some of
    // them taken and acknowledged, others taken and not acknowledged, others
    // not even read (the chunk that fired it reaches a relay already closed).
    const stopped = Promise.withResolvers<void>();
    const from = proxy.forwardedUp;
    proxy.onForwardUp = (total) => {
      if (total < from + 1000) return;
      proxy.onForwardUp = undefined;
      proxy.refuseNew(true); // py stays away until deno is back
      relay.shutdown().then(stopped.resolve, stopped.reject);
    };
    await py.type(range(1, 100).join("\n"));
    await within(BOUND, "the relay shutting down", stopped.promise);
    await py.waitLine(/^reconnecting: /);
    // While the relay is down, both go on: py's lines wait in py, deno's in deno.
    await py.type(range(101, 150).join("\n"));
    for (const text of range(51, 100)) deno.send(text);
    deno.sendTo("py", "for py");
    relay = startRelay({ ...settings, port });
    // deno is back first, alone: what it sends waits for py (rejoin grace), acknowledged.
    await within(30_000, "deno's messages taken by the new relay", deno.flush());
    assert.deepEqual(deno.members, [], "deno came back first, alone");
    assert.deepEqual(heard.events.filter((e) => e.type === "error"), [], "deno was refused");
    // py comes back: told the history was lost, given what waited, and it sends the rest.
    proxy.refuseNew(false);
    await py.waitLine("deno (to you): for py");
    await heard.until(() => textsFrom(heard.events, "py").length >= 150, "deno hearing py's all");
    assert.deepEqual(textsFrom(heard.events, "py"), range(1, 150));
    assert.deepEqual(printedFrom(py.lines, "deno"), range(1, 100));
    const missed = py.lines.findIndex((l) => l.startsWith("missed epoch: "));
    assert.ok(missed > py.lines.indexOf("deno: 50"), "py did not report the missed epoch");
    assert.ok(missed < py.lines.indexOf("deno: 51"), "py reported the missed epoch late");
    assert.deepEqual(py.lines.filter((l) => l.startsWith("error ")), []);
    // Both back, live.
    deno.send("live");
    await py.type("live");
    await py.waitLine("deno: live");
    await heard.until(() => textsFrom(heard.events, "py").includes("live"), "deno hearing py live");
    const status = await py.end();
    assert.equal(status.code, 0, py.stderr);
    assert.equal(py.lines.at(-1), "bye");
    assert.equal(py.stderr, "");
  } finally {
    await py?.dispose();
    await deno.close();
    await heard.done();
    await proxy.close();
    await relay.shutdown();
  }
});

Deno.test("python example --exactly-once: away longer than the history holds, it reports missed window and gets what is still held", async () => {
  const relay = startRelay({
    secret: SECRET,
    historyLength: 5,
    keepAlive: 1000,
    fadeAfter: 60_000,
  });
  const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
  const deno = await RelayNode.connect(relay.url, { ...NODE, session: "w", nickname: "deno" });
  // A third node hears deno all along: what deno sends is kept in the history
  // however long py takes to come back (a room keeps what somebody heard).
  const zed = await RelayNode.connect(relay.url, { ...NODE, session: "w", nickname: "zed" });
  let py: ReturnType<typeof startPython> | undefined;
  try {
    py = startExactlyOnce(proxy.port, "w");
    await py.waitLine("welcome py");
    deno.send("before");
    await py.waitLine("deno: before");
    // py's link goes down and stays down while deno sends twice what the history holds.
    proxy.refuseNew(true);
    proxy.reset();
    await py.waitLine(/^reconnecting: /);
    await within(30_000, "deno sending", sendNumbered(deno, 1, 10));
    assert.equal(relay.relay.stats.historyMessages, 5);
    proxy.refuseNew(false);
    await py.waitLine(/^missed window: /);
    // What the history still held (the last 5) comes with the news; then what follows.
    deno.send("after");
    await py.waitLine("deno: after");
    assert.deepEqual(printedFrom(py.lines, "deno"), ["before", ...range(6, 10), "after"]);
    const missed = py.lines.findIndex((l) => l.startsWith("missed window: "));
    assert.ok(missed < py.lines.indexOf("deno: 6"), "py reported the missed window late");
    const status = await py.end();
    assert.equal(status.code, 0, py.stderr);
    assert.equal(py.lines.at(-1), "bye");
  } finally {
    await py?.dispose();
    await zed.close();
    await deno.close();
    await proxy.close();
    await relay.shutdown();
  }
});

Deno.test("python example --exactly-once: given py(1), then the relay restarts and someone else is py(1) now: py rejoins under the name it wanted (py(2)) instead of giving up", async () => {
  const settings = { secret: SECRET, keepAlive: 1000, fadeAfter: 60_000 };
  let relay = startRelay(settings);
  const port = relay.addr.port;
  const proxy = await FaultProxy.start({ targetPort: port });
  const deno = await RelayNode.connect(relay.url, { ...NODE, session: "n", nickname: "py" });
  const heard = recordEvents(deno);
  let py: ReturnType<typeof startPython> | undefined;
  let newcomer: RelayNode | undefined;
  try {
    py = startExactlyOnce(proxy.port, "n");
    await py.waitLine("welcome py(1)");
    // The relay restarts; deno (holding "py") is back first, and a newcomer
    // who wants "py" too is given "py(1)"; py comes back after them.
    proxy.refuseNew(true);
    await relay.shutdown();
    await py.waitLine(/^reconnecting: /);
    relay = startRelay({ ...settings, port });
    await heard.until(
      () => heard.events.filter((e) => e.type === "state" && e.state === "connected").length >= 2,
      "deno back",
    );
    newcomer = await RelayNode.connect(relay.url, { ...NODE, session: "n", nickname: "py" });
    assert.equal(newcomer.nickname, "py(1)");
    proxy.refuseNew(false);
    // "py(1)" is someone else's now: py's hello for it is refused
    // (bad-request, 2.9), so py asks for "py" again and is given "py(2)".
    await py.waitLine("rejoined py(2)");
    await py.waitLine(/^missed epoch: /);
    deno.sendTo("py(2)", "found you");
    await py.waitLine("py (to you): found you");
    await py.type("/to py me again");
    await heard.until(
      () => heard.events.some((e) => isMessage(e, "py(2)", "me again", "py")),
      "deno hearing py(2)",
    );
    const status = await py.end();
    assert.equal(status.code, 0, py.stderr);
    assert.equal(py.stderr, "");
  } finally {
    await py?.dispose();
    await newcomer?.close();
    await deno.close();
    await heard.done();
    await proxy.close();
    await relay.shutdown();
  }
});

Deno.test("python example --exactly-once, against a relay scripted frame by frame: it drops replays and resends it has, resends only what the welcome's acked does not cover, and says where it is when it reconnects", async () => {
  const hellos: Record<string, unknown>[] = [];
  const received: Record<string, unknown>[] = [];
  const welcome = { t: "welcome", session: "s", role: "peer", members: [], keepAlive: 60_000 };
  const fromX = (offset: number, seq: number) => ({
    t: "msg",
    from: "x",
    offset,
    id: "node-x",
    seq,
    text: String(seq),
  });
  const send = (socket: WebSocket, frame: object) => socket.send(JSON.stringify(frame));
  // Per connection: what the relay sends after the hello, and what it does with each msg.
  const scripts = [
    {
      welcome: { nickname: "py", token: "t1", epoch: "e1", offset: 0, acked: 0 },
      then: [
        fromX(1, 1),
        fromX(1, 1), // the same offset again: a replay it has
        fromX(2, 1), // a resend the relay did not catch: the same id and seq
        fromX(3, 2),
      ],
      // Takes py's three lines, acknowledges none, and dies.
      onMsg(socket: WebSocket) {
        if (received.length === 3) socket.close(1011, "scripted");
      },
    },
    {
      // A relay that restarted, and still knew py's first two (a cluster's Redis might).
      welcome: {
        nickname: "py",
        token: "t2",
        epoch: "e2",
        offset: 0,
        acked: 2,
        recovered: false,
        missed: "epoch",
      },
      then: [fromX(1, 2), fromX(2, 3)], // offsets start again: x's seq 2 is a resend
      onMsg(socket: WebSocket, frame: { seq: number }) {
        if (frame.seq === 3) send(socket, { t: "ack", seq: 3 });
        if (frame.seq === 4) {
          send(socket, { t: "error", code: "alone", message: "nobody hears you", seq: 4 });
          send(socket, { t: "ack", seq: 4 });
        }
      },
    },
  ];
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    const script = scripts[hellos.length];
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.t === "hello") {
        hellos.push(frame);
        send(socket, { ...welcome, ...script.welcome });
        for (const step of script.then) send(socket, step);
      } else if (frame.t === "msg") {
        received.push(frame);
        script.onMsg(socket, frame);
      } else if (frame.t === "bye") socket.close(1000, "bye");
    };
    return response;
  });
  const py = startPython([`http://127.0.0.1:${server.addr.port}`, "py", "--exactly-once"]);
  try {
    await py.waitLine("welcome py");
    await py.type("a\nb\nc");
    await py.waitLine("x: 3");
    await py.type("d");
    await py.waitLine(/^error alone: /);
    // Every message of x once, the replays dropped; told of the lost history in between.
    assert.deepEqual(printedFrom(py.lines, "x"), ["1", "2", "3"]);
    const missed = py.lines.findIndex((l) => l.startsWith("missed epoch: "));
    assert.ok(py.lines.indexOf("x: 2") < missed && missed < py.lines.indexOf("x: 3"));
    assert.equal(py.lines.at(-1), "error alone: nobody hears you (your message 4)");
    // One id for its life, its position and token when it came back.
    assert.equal(hellos.length, 2);
    assert.match(String(hellos[0].id), /^[A-Za-z0-9_-]{22}$/);
    assert.equal(hellos[1].id, hellos[0].id);
    assert.equal(hellos[0].recover, undefined);
    assert.deepEqual(hellos[1].recover, { epoch: "e1", offset: 3 });
    assert.equal(hellos[1].token, "t1");
    assert.equal(hellos[1].nickname, "py");
    // Its lines numbered 1, 2, 3 to the first relay; to the second only
    // what its acked (2) did not cover, then the new one: nothing taken twice.
    assert.deepEqual(
      received.map((m) => [m.seq, m.text]),
      [[1, "a"], [2, "b"], [3, "c"], [3, "c"], [4, "d"]],
    );
    // All taken (the refused one too): end of input says bye at once.
    const status = await py.end();
    assert.equal(status.code, 0, py.stderr);
    assert.equal(py.lines.at(-1), "bye");
  } finally {
    await py.dispose();
  }
});

Deno.test("python example --exactly-once: a relay that drops it just after each welcome (its cluster store down) is redialed with a growing backoff, not at once for ever", async () => {
  const extra = { nickname: "py", epoch: "e", offset: 0, acked: 0 };
  await using relay = welcomeAndDrop(4503, "the relay cannot reach its cluster store", extra);
  const py = startPython([relay.url, "py", "--exactly-once"]);
  try {
    await within(BOUND, "the fourth connection", relay.hello(4));
    // Jittered to [0.5, 1) of 250, 500, 1000 ms. Before, every redial went at once.
    const gaps = relay.gaps();
    assert.ok(gaps[0] >= 125 && gaps[1] >= 250 && gaps[2] >= 500, `gaps ${gaps.map(Math.round)}`);
  } finally {
    await py.dispose();
  }
});

Deno.test("python example: at a relay a reverse proxy serves under a path prefix (nginx strips /chat-relay/), its WebSocket goes under that path, with the URL's query", async () => {
  const relay = startRelay({ secret: SECRET });
  const nginx = await startNginx(relay.addr.port, { websocket: true, prefix: "/chat-relay" });
  const url = `http://127.0.0.1:${nginx.port}/chat-relay/`;
  const deno = await RelayNode.connect(url, { session: "lab", nickname: "deno", secret: SECRET });
  const heard = recordEvents(deno);
  try {
    // With a query a gateway in front might want: kept.
    const py = startPython([`${url}?via=gateway`, "py", "--session", "lab", "--secret", SECRET]);
    try {
      await py.waitLine("welcome py");
      await py.type("through the prefix\n/quit");
      assert.equal((await py.end()).code, 0, py.stderr);
      await heard.until(
        () => heard.events.some((e) => e.type === "message" && e.text === "through the prefix"),
        "deno hears py",
      );
      // nginx logs a request as it ends: py's WebSocket has.
      assert.match(await nginx.log(), /"GET \/chat-relay\/relay\/ws\?via=gateway HTTP\/1.1" 101/);
    } finally {
      await py.dispose();
    }
  } finally {
    await deno.close();
    await heard.done();
    await nginx[Symbol.asyncDispose]();
    await relay.shutdown();
  }
});
