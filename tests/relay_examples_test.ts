/**
 * examples/relay_chat.ts, relay_send_line.ts and relay_numbers.ts as a user
 * runs them: child processes (`deno run`, permissions scoped to the test's
 * relay and an empty working folder), typed into through stdin, against a
 * relay in this process with a RelayNode as the other party. Every wait is on
 * an event (a line printed, an event the node hears, an exit), bounded by a
 * generous deadline that fails the test when it passes.
 */

import assert from "node:assert/strict";
import { type RelayEvent, RelayNode } from "../mod.ts";
import { freePort, within } from "./_helpers.ts";
import { recordEvents, startRelay } from "./_relay.ts";

const EXAMPLES = new URL("../examples/", import.meta.url).pathname;
const SECRET = "examples-s3cret";
/** The only time bound: exceeding it fails the test; nothing waits for it to pass. */
const BOUND = 30_000;

/** Text a child writes to one stream, read as it comes, with waits for a pattern in it. */
class Output {
  text = "";
  readonly done: Promise<void>;
  #ended = false;
  #waiters = new Set<{ check(): void; fail(): void }>();

  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      try {
        for await (const text of stream.pipeThrough(new TextDecoderStream())) {
          this.text += text;
          for (const waiter of this.#waiters) waiter.check();
        }
      } finally {
        this.#ended = true;
        for (const waiter of this.#waiters) waiter.fail();
      }
    })();
  }

  /** Resolves once the text matches `pattern`; rejects if the stream ends first, or after BOUND. */
  waitFor(pattern: RegExp, what: string): Promise<void> {
    let waiter!: { check(): void; fail(): void };
    const matched = new Promise<void>((resolve, reject) => {
      waiter = {
        check: () => {
          if (!pattern.test(this.text)) return;
          this.#waiters.delete(waiter);
          resolve();
        },
        fail: () => {
          this.#waiters.delete(waiter);
          reject(new Error(`the output ended before ${what}`));
        },
      };
      this.#waiters.add(waiter);
      waiter.check();
      if (this.#ended && this.#waiters.has(waiter)) waiter.fail();
    });
    return within(BOUND, what, matched).finally(() => this.#waiters.delete(waiter));
  }
}

interface ExampleOptions {
  /** The relay's URL, given in IMMORTAL_RELAY_URL (relay_chat.ts takes it as an argument too). */
  url: string;
  /** In IMMORTAL_RELAY_SECRET; without it the example may not read that variable at all. */
  secret?: string;
  /** The working folder, where immortal-relay.properties is looked for. */
  cwd: string;
}

/**
 * An example run as `deno run` with the permissions a careful user grants:
 * the relay's address, the working folder (not the home folder: HOME may not
 * be read), the relay variables.
 */
function startExample(script: string, args: string[], options: ExampleOptions) {
  const { port } = new URL(options.url);
  const env = [
    "IMMORTAL_RELAY_URL",
    ...(options.secret === undefined ? [] : ["IMMORTAL_RELAY_SECRET"]),
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      `--allow-net=127.0.0.1:${port}`,
      `--allow-read=${options.cwd}`,
      `--allow-env=${env.join(",")}`,
      `${EXAMPLES}${script}`,
      ...args,
    ],
    cwd: options.cwd,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: {
      NO_COLOR: "1",
      IMMORTAL_RELAY_URL: options.url,
      ...(options.secret === undefined ? {} : { IMMORTAL_RELAY_SECRET: options.secret }),
    },
  }).spawn();
  const stdout = new Output(child.stdout);
  const stderr = new Output(child.stderr);
  const stdin = child.stdin.getWriter();
  let inputEnded = false;
  const endInput = async () => {
    if (inputEnded) return;
    inputEnded = true;
    await stdin.close().catch(() => {});
  };
  const output = () => `--- stdout:\n${stdout.text}--- stderr:\n${stderr.text}`;
  const explain = (error: Error) => {
    throw new Error(`${script} ${args.join(" ")}: ${error.message}\n${output()}`);
  };
  return {
    stdout,
    stderr,
    /** Waits until stdout matches `pattern`. */
    said: (pattern: RegExp, what: string) => stdout.waitFor(pattern, what).catch(explain),
    /** Waits until stderr matches `pattern`. */
    complained: (pattern: RegExp, what: string) => stderr.waitFor(pattern, what).catch(explain),
    /** Types `text` into the example. */
    type: (text: string) => stdin.write(new TextEncoder().encode(text)),
    endInput,
    /** Sends the example `signal` (SIGINT: Ctrl-C). */
    signal: (signal: Deno.Signal) => child.kill(signal),
    /** The exit code, once the example has exited and all its output is read. */
    async exited(): Promise<number> {
      const { code } = await within(BOUND, "the example exits", child.status).catch(explain);
      await Promise.all([stdout.done, stderr.done]);
      await endInput();
      return code;
    },
    /** For `finally`: kills the example if it still runs, and releases its pipes. */
    async dispose(): Promise<void> {
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited already.
      }
      await endInput();
      await child.status;
      await Promise.all([stdout.done, stderr.done]);
    },
  };
}

type Example = ReturnType<typeof startExample>;

/** Runs `body` with an empty working folder and a list of examples it starts, all cleaned up after. */
async function withExamples(
  body: (
    start: (script: string, args: string[], options: Omit<ExampleOptions, "cwd">) => Example,
    cwd: string,
  ) => Promise<void>,
): Promise<void> {
  const cwd = await Deno.makeTempDir({ prefix: "immortal-examples-" });
  const started: Example[] = [];
  try {
    await body((script, args, options) => {
      const example = startExample(script, args, { ...options, cwd });
      started.push(example);
      return example;
    }, cwd);
  } finally {
    for (const example of started) await example.dispose();
    await Deno.remove(cwd, { recursive: true });
  }
}

function isLeave(event: RelayEvent, nickname: string): boolean {
  return event.type === "leave" && event.nickname === nickname;
}

Deno.test("examples: a missing or wrong secret, no relay there, a bad settings file: one line on stderr, exit 1", async () => {
  await using relay = startRelay({ secret: SECRET });
  const nobody = `http://127.0.0.1:${freePort()}`;
  await withExamples(async (start, cwd) => {
    /** Asserts the example exits 1 having said exactly one line, `error: ...` matching `pattern`. */
    const failsWith = async (example: Example, pattern: RegExp) => {
      await example.endInput();
      const code = await example.exited();
      assert.equal(code, 1, example.stderr.text);
      assert.match(example.stderr.text, /^error: [^\n]+\n$/);
      assert.match(example.stderr.text, pattern);
    };
    const runs: Promise<void>[] = [];
    for (
      const [script, ...args] of [
        ["relay_send_line.ts", "lab", "max"],
        ["relay_numbers.ts", "agent", "lab"],
        ["relay_chat.ts", "lab", "max"],
      ]
    ) {
      const refused =
        /^error: cannot join lab at http:\/\/127\.0\.0\.1:\d+: missing or wrong relay secret$/m;
      runs.push(
        failsWith(start(script, args, { url: relay.url }), refused),
        failsWith(start(script, args, { url: relay.url, secret: "wrong" }), refused),
        failsWith(
          start(script, args, { url: nobody }),
          new RegExp(`^error: cannot join lab at ${nobody}: nothing listens at `),
        ),
      );
    }
    await Promise.all(runs);

    // A typo in immortal-relay.properties names the file and line.
    await Deno.writeTextFile(`${cwd}/immortal-relay.properties`, "# relay\nsecrte = x\n");
    await Promise.all(
      ["relay_send_line.ts", "relay_numbers.ts", "relay_chat.ts"].map((script) =>
        failsWith(
          start(script, [], { url: relay.url, secret: SECRET }),
          /^error: .*immortal-relay\.properties:2: unknown key "secrte"/,
        )
      ),
    );
  });
});

Deno.test("examples: Ctrl-C and SIGTERM say bye: the others hear 'left', and the nickname is free at once", async () => {
  await using relay = startRelay({ secret: SECRET });
  await using bob = await RelayNode.connect(relay.url, {
    session: "lab",
    nickname: "bob",
    secret: SECRET,
  });
  const heard = recordEvents(bob);
  await withExamples(async (start) => {
    const options = { url: relay.url, secret: SECRET };
    /** Starts `script` as max, stops it with `signal`, and checks bob heard max leave with a bye. */
    const leavesOn = async (
      signal: Deno.Signal,
      script: string,
      args: string[],
      joined: RegExp,
    ) => {
      const leaves = heard.events.filter((e) => isLeave(e, "max")).length;
      const example = start(script, args, options);
      // The nickname it got says whether the last max said bye: without, it is taken still.
      await example.said(joined, "max joins");
      example.signal(signal);
      assert.equal(await example.exited(), 0, example.stderr.text);
      assert.equal(example.stderr.text, "");
      await heard.until(
        () => heard.events.filter((e) => isLeave(e, "max")).length > leaves,
        `bob hears max leave on ${signal}`,
      );
      assert.deepEqual(heard.events.filter((e) => isLeave(e, "max")).at(-1), {
        type: "leave",
        nickname: "max",
        reason: "left",
      });
    };
    await leavesOn(
      "SIGINT",
      "relay_chat.ts",
      ["lab", "max"],
      /^\* you are max in lab; here: bob$/m,
    );
    // Restarted at once, max is max again, not max(1).
    await leavesOn(
      "SIGTERM",
      "relay_chat.ts",
      ["lab", "max"],
      /^\* you are max in lab; here: bob$/m,
    );
    await leavesOn("SIGINT", "relay_send_line.ts", ["lab", "max"], /^joined lab as max;/m);
    await leavesOn("SIGTERM", "relay_send_line.ts", ["lab", "max"], /^joined lab as max;/m);
  });
  await bob.close();
  await heard.done();
});

Deno.test("examples: relay_numbers.ts bridge leaves with a bye on SIGINT", async () => {
  await using relay = startRelay();
  await using peer = await RelayNode.connect(relay.url, { session: "lab", nickname: "peer" });
  const heard = recordEvents(peer);
  await withExamples(async (start) => {
    const bridge = start("relay_numbers.ts", ["bridge", "lab"], { url: relay.url });
    await bridge.said(/^bridge \(the bridge\) waiting for agents in lab$/m, "the bridge joins");
    const agent = start("relay_numbers.ts", ["agent", "lab"], { url: relay.url });
    await agent.said(/the bridge says the sum is \d+/, "the bridge's answer");
    assert.equal(await agent.exited(), 0, agent.stderr.text);
    bridge.signal("SIGINT");
    assert.equal(await bridge.exited(), 0, bridge.stderr.text);
    await heard.until(
      () => heard.events.some((e) => isLeave(e, "bridge")),
      "peer hears the bridge leave",
    );
    assert.deepEqual(heard.events.find((e) => isLeave(e, "bridge")), {
      type: "leave",
      nickname: "bridge",
      reason: "left",
    });
  });
  await peer.close();
  await heard.done();
});

Deno.test("relay_chat.ts: a command is never broadcast: a malformed /to, an unknown /command; // sends a line starting with /", async () => {
  await using relay = startRelay({ secret: SECRET });
  await using bob = await RelayNode.connect(relay.url, {
    session: "lab",
    nickname: "bob",
    secret: SECRET,
  });
  const heard = recordEvents(bob);
  await withExamples(async (start) => {
    const max = start("relay_chat.ts", ["lab", "max"], { url: relay.url, secret: SECRET });
    await max.said(/^\* you are max in lab; here: bob$/m, "max joins");
    await max.type("/to\n/to bob\n/to bob   \n/x hello all\n/\n/who\n//shrug\n/to bob psst\n");
    await max.complained(/(^usage: \/to NAME text\n){3}/m, "three usage lines");
    await max.complained(
      /^unknown command \/x, nothing sent: try \/to NAME text, \/who, \/quit;/m,
      "/x refused",
    );
    await max.complained(/^unknown command \/, nothing sent/m, "/ refused");
    await max.said(/^\* here: bob$/m, "/who answered");
    // The last line has no line break: end of input sends it, then leaves.
    await max.type("hello\r\nbye all");
    await max.endInput();
    await heard.until(() => heard.events.some((e) => isLeave(e, "max")), "bob hears max leave");
    assert.equal(await max.exited(), 0, max.stderr.text);
    // Everything max sent, in order: nothing of the commands, a CR dropped.
    assert.deepEqual(
      heard.events.flatMap((e) => e.type === "message" ? [[e.text, e.to ?? "all"]] : []),
      [["/shrug", "all"], ["psst", "bob"], ["hello", "all"], ["bye all", "all"]],
    );
    assert.deepEqual(heard.events.find((e) => isLeave(e, "max")), {
      type: "leave",
      nickname: "max",
      reason: "left",
    });
  });
  await bob.close();
  await heard.done();
});

Deno.test("examples: a node the relay will not take back after a blip ends with one line, exit 1", async () => {
  await using first = startRelay({ secret: SECRET });
  const port = first.addr.port;
  await withExamples(async (start) => {
    const options = { url: first.url, secret: SECRET };
    const examples = [
      start("relay_chat.ts", ["lab", "chat"], options),
      start("relay_send_line.ts", ["lab", "line"], options),
      start("relay_numbers.ts", ["bridge", "lab"], options),
    ];
    await examples[0].said(/you are chat in lab/, "the chat joins");
    await examples[1].said(/joined lab as line/, "send_line joins");
    await examples[2].said(/bridge \(the bridge\) waiting/, "the bridge joins");
    // The relay comes back on the same port with another secret: the nodes are refused for good.
    await first.shutdown();
    await using second = startRelay({ secret: "another secret", port });
    assert.equal(second.url, first.url);
    for (const example of examples) {
      assert.equal(await example.exited(), 1, example.stderr.text);
      assert.match(
        example.stderr.text,
        /^error: cannot rejoin lab: missing or wrong relay secret\n$/m,
      );
    }
  });
});
