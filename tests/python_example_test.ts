/**
 * examples/relay_client.py, the relay client in Python's standard library,
 * run as a child process against a real relay (serveRelay, with a secret and
 * a short keep-alive), with a RelayNode as the other party. Every wait is on
 * an event (a line the client prints, an event the node hears), bounded only
 * by a generous deadline that fails the test when it passes.
 */

import assert from "node:assert/strict";
import { type RelayEvent, RelayNode } from "../mod.ts";
import { waitUntil, within } from "./_helpers.ts";
import { TextLineStream } from "./_lines.ts";
import { recordEvents, startRelay } from "./_relay.ts";

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
