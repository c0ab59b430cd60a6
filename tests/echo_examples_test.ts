/**
 * examples/echo_server.ts and echo_client.ts as a user runs them: child
 * processes started with the README's `deno run` permissions (or without the
 * one a mistake leaves out). The README's usage echoes a line; each mistake a
 * new user makes (a bad port, no server there, a port in use, a missing
 * permission, a server that is not immortal) is one line on stderr and an
 * exit code, never an uncaught error with a stack. Every wait is bounded.
 */

import assert from "node:assert/strict";
import { freePort, within } from "./_helpers.ts";
import { echoTarget } from "./_tunnel_helpers.ts";

const EXAMPLES = new URL("../examples/", import.meta.url).pathname;
/** The only time bound: exceeding it fails the test; nothing waits for it to pass. */
const BOUND = 30_000;
/** The README's permissions for each example. */
const SERVER_NET = "--allow-net";
const CLIENT_NET = "--allow-net=127.0.0.1";

/** Text a child writes to one stream, read as it comes, with waits for a pattern in it. */
class Output {
  text = "";
  readonly done: Promise<void>;
  #ended = false;
  #waiters = new Set<() => void>();

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      try {
        for await (const text of stream.pipeThrough(new TextDecoderStream())) {
          this.text += text;
          for (const waiter of this.#waiters) waiter();
        }
      } finally {
        this.#ended = true;
        for (const waiter of this.#waiters) waiter();
      }
    })();
  }

  /** Resolves once the text matches `pattern`; rejects if the stream ends first, or after BOUND. */
  waitFor(pattern: RegExp, what: string): Promise<void> {
    let waiter!: () => void;
    const matched = new Promise<void>((resolve, reject) => {
      waiter = () => {
        if (pattern.test(this.text)) resolve();
        else if (this.#ended) reject(new Error(`the output ended before ${what}:\n${this.text}`));
      };
      this.#waiters.add(waiter);
      waiter();
    });
    return within(BOUND, what, matched).finally(() => this.#waiters.delete(waiter));
  }
}

/**
 * `deno run FLAGS examples/SCRIPT ARGS`, given `input` on stdin, then end of
 * input (without `input`, stdin stays open until disposal). Piped stdio:
 * Deno never prompts for a permission, as it may on a terminal.
 */
function startExample(script: string, flags: string[], args: string[], input?: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...flags, `${EXAMPLES}${script}`, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const stdout = new Output(child.stdout);
  const stderr = new Output(child.stderr);
  const stdin = child.stdin.getWriter();
  // An example that exited already has closed its end: nothing to type into.
  const endInput = () => stdin.close().catch(() => {});
  const typed = input === undefined
    ? Promise.resolve()
    : stdin.write(new TextEncoder().encode(input)).catch(() => {}).then(endInput);
  const what = `${script} ${args.join(" ")}`;
  return {
    stdout,
    stderr,
    /** The exit code, once the example has exited and all its output is read. */
    async exited(): Promise<number> {
      const { code } = await within(BOUND, `${what} exits`, child.status);
      await Promise.all([stdout.done, stderr.done, typed]);
      return code;
    },
    /** For `finally`: kills the example if it still runs, and releases its pipes. */
    async [Symbol.asyncDispose](): Promise<void> {
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited already.
      }
      await child.status;
      await typed;
      await endInput();
      await Promise.all([stdout.done, stderr.done]);
    },
  };
}

/**
 * Runs an example to its end and asserts how it failed: `code`, and stderr
 * exactly `lines` (each a pattern for one whole line), with no uncaught
 * error and no stack trace.
 */
async function assertFails(
  script: string,
  flags: string[],
  args: string[],
  code: number,
  lines: RegExp[],
): Promise<void> {
  await using example = startExample(script, flags, args, "hello\n");
  const exitCode = await example.exited();
  const stderr = example.stderr.text;
  const context = `${script} ${args.join(" ")}:\n${stderr}`;
  assert.doesNotMatch(stderr, /Uncaught/, context);
  assert.doesNotMatch(stderr, /^ {4}at /m, context);
  assert.equal(exitCode, code, context);
  assert.ok(stderr.endsWith("\n"), context);
  const said = stderr.slice(0, -1).split("\n");
  assert.equal(said.length, lines.length, context);
  said.forEach((line, i) => assert.match(line, lines[i], context));
}

/** A line that starts `error: TEXT` (the platform's reason may follow, "(os error 111)"). */
function errorLine(text: string): RegExp {
  return new RegExp(`^error: ${RegExp.escape(text)}`);
}

Deno.test("echo examples: the README's usage echoes a line, and the client exits 0 at the end of input", async () => {
  await using server = startExample("echo_server.ts", [SERVER_NET], ["0"]);
  await server.stdout.waitFor(/^echo server on port \d+\n/, "the server listening");
  const port = /port (\d+)/.exec(server.stdout.text)![1];
  await using client = startExample(
    "echo_client.ts",
    [CLIENT_NET],
    ["127.0.0.1", port],
    "hello, immortal\n",
  );
  assert.equal(await client.exited(), 0, client.stderr.text);
  assert.match(client.stdout.text, /^connected, session [0-9a-f]{8}; type lines, Ctrl-D to end\n/);
  assert.match(client.stdout.text, /^hello, immortal$/m);
  assert.equal(client.stderr.text, "");
  await server.stdout.waitFor(/^session [0-9a-f]{8} ended$/m, "the server ending the session");
  assert.match(server.stdout.text, /^session [0-9a-f]{8} opened$/m);
  assert.equal(server.stderr.text, "");
});

Deno.test("echo examples: a bad port is a usage error (exit 2), said before any connecting or listening", async () => {
  for (const port of ["abc", "70000", "4e3", ""]) {
    await assertFails("echo_client.ts", [CLIENT_NET], ["127.0.0.1", port], 2, [
      errorLine(`port must be a number 1-65535, got "${port}"`),
      /^usage: deno run --allow-net examples\/echo_client\.ts \[host\] \[port\] \[key\]$/,
    ]);
    await assertFails("echo_server.ts", [SERVER_NET], [port], 2, [
      errorLine(`port must be a number 0-65535, got "${port}"`),
      /^usage: deno run --allow-net examples\/echo_server\.ts \[port\] \[key\]$/,
    ]);
  }
  // The client's port 0 is no server's: refused before dialing.
  await assertFails("echo_client.ts", [CLIENT_NET], ["127.0.0.1", "0"], 2, [
    errorLine(`port must be a number 1-65535, got "0"`),
    /^usage: /,
  ]);
  // Checked first: without --allow-net, still the usage error, not a permission one.
  await assertFails("echo_client.ts", [], ["127.0.0.1", "abc"], 2, [/^error: port /, /^usage: /]);
  await assertFails("echo_server.ts", [], ["abc"], 2, [/^error: port /, /^usage: /]);
});

Deno.test("echo_client.ts: no server there is one line, exit 1", async () => {
  const port = freePort();
  await assertFails("echo_client.ts", [CLIENT_NET], ["127.0.0.1", String(port)], 1, [
    errorLine(`cannot connect to 127.0.0.1:${port}: Connection refused`),
  ]);
});

Deno.test("echo_client.ts: a plain echo server (not an immortal one) is one line, exit 1", async () => {
  const plain = echoTarget();
  await assertFails("echo_client.ts", [CLIENT_NET], ["127.0.0.1", String(plain.port)], 1, [
    /^error: .*it echoes, it does not speak the immortal protocol/,
  ]);
  // The client dropped the connection it was echoed on, perhaps with a reset.
  await within(BOUND, "the plain echo ending", plain.done.catch(() => {}));
});

Deno.test("echo_server.ts: a port in use is one line, exit 1", async () => {
  using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = busy.addr.port;
  await assertFails("echo_server.ts", [SERVER_NET], [String(port)], 1, [
    errorLine(`cannot listen on 0.0.0.0:${port}: Address already in use`),
  ]);
});

Deno.test("echo examples: no --allow-net is one line naming the flag to add, exit 1; adding it works", async () => {
  const port = String(freePort());
  await assertFails("echo_client.ts", [], ["127.0.0.1", port], 1, [
    errorLine(
      `no net permission to connect to 127.0.0.1:${port}: run with --allow-net=127.0.0.1:${port}`,
    ),
  ]);
  await assertFails("echo_server.ts", [], [port], 1, [
    errorLine(
      `no net permission to listen on 0.0.0.0:${port}: run with --allow-net=0.0.0.0:${port}`,
    ),
  ]);
  // The advice is enough: the server starts with just that flag, and the client reaches it.
  await using server = startExample("echo_server.ts", [`--allow-net=0.0.0.0:${port}`], [port]);
  await server.stdout.waitFor(/^echo server on port \d+\n/, "the server listening");
  await using client = startExample(
    "echo_client.ts",
    [`--allow-net=127.0.0.1:${port}`],
    ["127.0.0.1", port],
    "hi\n",
  );
  assert.equal(await client.exited(), 0, client.stderr.text);
  assert.match(client.stdout.text, /^hi$/m);
});

Deno.test("echo_client.ts: a session the restarted server no longer knows ends with one line, exit 1", async () => {
  const port = String(freePort());
  const first = startExample("echo_server.ts", [SERVER_NET], [port]);
  try {
    await first.stdout.waitFor(/^echo server on port \d+\n/, "the server listening");
    // Input left open: the client stays in its session, as when a user is typing.
    await using client = startExample("echo_client.ts", [CLIENT_NET], ["127.0.0.1", port]);
    await client.stdout.waitFor(/^connected, session /, "the client connected");
    await first[Symbol.asyncDispose]();
    await using second = startExample("echo_server.ts", [SERVER_NET], [port]);
    await second.stdout.waitFor(/^echo server on port \d+\n/, "the restarted server listening");
    const code = await client.exited();
    const stderr = client.stderr.text;
    assert.equal(code, 1, stderr);
    assert.match(
      stderr,
      /^error: the session ended: server refused: no such session \(it ended or the server restarted\)\n$/,
    );
  } finally {
    await first[Symbol.asyncDispose]();
  }
});
