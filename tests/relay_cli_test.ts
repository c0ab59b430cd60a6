/**
 * cli/relay.ts as a user runs it, with scoped permissions, and the examples
 * against it, configured by an immortal-relay.properties file.
 */

import assert from "node:assert/strict";
import { loadRelayConfig } from "../mod.ts";
import { parseRelayArgs } from "../cli/relay.ts";
import { freePort, within } from "./_helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLI = `${ROOT}cli/relay.ts`;

function deno(
  args: string[],
  cwd = ROOT,
  stdin: "piped" | "null" = "null",
  env: Record<string, string> = {},
) {
  return new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    stdin,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  });
}

/** A long-running process whose stdout+stderr are collected; `waitFor` a pattern in them. */
function spawn(args: string[], cwd = ROOT, env: Record<string, string> = {}) {
  const child = deno(args, cwd, "piped", env).spawn();
  let text = "";
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const t of s.pipeThrough(new TextDecoderStream())) text += t;
  };
  const reading = Promise.all([pump(child.stdout), pump(child.stderr)]);
  return {
    child,
    get text() {
      return text;
    },
    waitFor(pattern: RegExp, what: string) {
      return within(
        20_000,
        what,
        (async () => {
          while (!pattern.test(text)) await new Promise((r) => setTimeout(r, 25));
        })(),
      ).catch((error) => {
        throw new Error(`${error.message}\n--- output so far:\n${text}`);
      });
    },
    async stop(signal: Deno.Signal = "SIGTERM") {
      try {
        child.kill(signal);
      } catch {
        // Exited already.
      }
      const { code } = await child.status;
      await child.stdin.close().catch(() => {});
      await reading;
      return code;
    },
  };
}

Deno.test("relay CLI: --help, and one clear line with a non-zero exit for every bad input", async () => {
  const help = await deno(["run", CLI, "--help"]).output();
  assert.equal(help.code, 0);
  assert.match(new TextDecoder().decode(help.stdout), /--secret-file PATH/);
  const bad = await Deno.makeTempDir({ prefix: "immortal-relay-cli-" });
  await Deno.writeTextFile(
    `${bad}/immortal-relay.properties`,
    "url = http://x\nthis is not a setting\n",
  );
  const cases: [string[], RegExp, string?][] = [
    [["--port", "99999"], /--port must be a port number 0-65535/],
    [["--bogus"], /^error: unknown flag --bogus$/m],
    [["extra"], /^error: unexpected argument "extra"$/m],
    [["--rate", "-5"], /--rate needs a value; for one that starts with "-", write --rate=VALUE/],
    [["--port"], /^error: --port needs a value$/m],
    [["--no-chat-page=yes"], /--no-chat-page takes no value/],
    [["--overflow", "maybe"], /--overflow must be disconnect or drop/],
    [["--rate=-5"], /--rate must be a positive number/],
    [["--max-nodes", "1.5"], /--max-nodes must be a positive integer/],
    [["--history-length", "0"], /--history-length must be a positive/],
    [["--history-age", "soon"], /--history-age must be a whole number of milliseconds/],
    [["--redis-timeout", "0"], /--redis-timeout must be a whole number of milliseconds from 1/],
    [
      ["--keep-alive", "10000000000"],
      /--keep-alive must be a whole number of milliseconds from 1 to 2147483647/,
    ],
    [["--redis", "localhost:6379"], /--redis must be a URL like redis:\/\/127\.0\.0\.1:6379/],
    [["--cluster-address", "127.0.0.1:9000"], /--cluster-address .* needs --redis/],
    [
      ["--redis", "redis://127.0.0.1:1", "--cluster-address", "0.0.0.0:9000"],
      /--cluster-address: .*an address they reach, not "0\.0\.0\.0"/,
    ],
    [["--redis", "redis://127.0.0.1:1", "--cluster-address", "a:b:c"], /must be host:port/],
    [["--secret-file", "/nonexistent/secret"], /cannot read secret file/],
    [["--tls-cert", "/nonexistent/cert.pem"], /needs both --tls-cert and --tls-key/],
    [["--log-level", "loud"], /--log-level must be one of/],
    [[], /immortal-relay.properties:2: expected "key = value"/, bad],
  ];
  try {
    for (const [args, message, cwd] of cases) {
      const out = await deno([
        "run",
        "--allow-read",
        "--allow-env",
        "--allow-net=127.0.0.1",
        CLI,
        ...args,
      ], cwd)
        .output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 2, `${args.join(" ")}: exit ${out.code}\n${stderr}`);
      assert.match(stderr, message);
      assert.doesNotMatch(stderr, /^\s+at /m, `stack trace for: ${args.join(" ")}`);
    }
    // A port taken by someone else: one line, exit 1.
    const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const out = await deno([
      "run",
      `--allow-net=127.0.0.1:${taken.addr.port}`,
      CLI,
      "--hostname",
      "127.0.0.1",
      "--port",
      String(taken.addr.port),
    ]).output();
    taken.close();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    assert.match(stderr, /error: cannot listen on 127.0.0.1:\d+: .*in use/i);
    assert.doesNotMatch(stderr, /^\s+at /m);
  } finally {
    await Deno.remove(bad, { recursive: true });
  }
});

Deno.test("relay CLI without a secret runs, under a scoped --allow-net, and says loudly that it is open", async () => {
  const port = freePort();
  const relay = spawn([
    "run",
    `--allow-net=127.0.0.1:${port}`,
    CLI,
    "--hostname",
    "127.0.0.1",
    "--port",
    String(port),
  ]);
  try {
    await relay.waitFor(/Relay listening on http:\/\/127.0.0.1:\d+/, "relay start");
    // The warning is its own log line: wait for it rather than assume it came with the first.
    await relay.waitFor(/NO RELAY SECRET.*this relay is OPEN/, "the open-relay warning");
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.deepEqual(await health.json(), { status: "ok", sessions: 0, nodes: 0 });
  } finally {
    assert.equal(await relay.stop(), 0, relay.text);
  }
  assert.match(relay.text, /SIGTERM: shutting the relay down/);
});

Deno.test("relay CLI: a secret where the relay may not look is named with the permission it needs, never reported as not set", async () => {
  const dir = await Deno.makeTempDir({ prefix: "immortal-relay-perm-" });
  const run = async (flags: string[], expect: RegExp) => {
    const port = freePort();
    const relay = spawn(
      [
        "run",
        `--allow-net=127.0.0.1:${port}`,
        ...flags,
        CLI,
        "--hostname",
        "127.0.0.1",
        "--port",
        String(port),
      ],
      dir,
      { IMMORTAL_RELAY_SECRET: "s3cret", HOME: dir },
    );
    try {
      await relay.waitFor(expect, String(expect));
    } finally {
      await relay.stop();
    }
    return relay.text;
  };
  try {
    // No --allow-env: the variable is set, but the relay may not read it. It says so, and how.
    const text = await run(
      [],
      /NO RELAY SECRET FOUND: this relay is OPEN .*not allowed to look at env IMMORTAL_RELAY_SECRET/,
    );
    assert.match(text, /run it with --allow-env=IMMORTAL_RELAY_SECRET,HOME /);
    assert.doesNotMatch(text, /set --secret, --secret-file or IMMORTAL_RELAY_SECRET/);
    // With the permission, the secret is used.
    await run(
      ["--allow-env=IMMORTAL_RELAY_SECRET"],
      /Relay secret required \(from env IMMORTAL_RELAY_SECRET\)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("relay CLI and the examples, all configured by immortal-relay.properties: numbers to a bridge, a terminal chat", async () => {
  const dir = await Deno.makeTempDir({ prefix: "immortal-relay-cfg-" });
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/immortal-relay.properties`,
    `# the relay and its nodes read this\nsecret = s3cret\nurl = http://127.0.0.1:${port}\nhostname = 127.0.0.1\nport = ${port}\n`,
  );
  const read = `--allow-read=${dir}`;
  const env =
    "--allow-env=IMMORTAL_RELAY_URL,IMMORTAL_RELAY_SECRET,IMMORTAL_RELAY_HOSTNAME,IMMORTAL_RELAY_PORT,HOME,USER";
  const net = `--allow-net=127.0.0.1:${port}`;
  const relay = spawn(["run", net, read, env, CLI], dir);
  const processes = [relay];
  try {
    await relay.waitFor(/Relay listening/, "relay start");
    assert.match(relay.text, /Relay secret required \(from .*immortal-relay.properties:2\)/);

    const example = (name: string, ...args: string[]) => {
      const p = spawn(["run", net, read, env, `${ROOT}examples/${name}`, ...args], dir);
      processes.push(p);
      return p;
    };
    const bridge = example("relay_numbers.ts", "bridge", "lab");
    await bridge.waitFor(/bridge bridge waiting/, "bridge start");
    const agent = example("relay_numbers.ts", "agent", "lab");
    await agent.waitFor(/the bridge says the sum is \d+/, "the bridge's answer");
    const sent = /sent .* and their sum (\d+)/.exec(agent.text)!;
    assert.match(agent.text, new RegExp(`the bridge says the sum is ${sent[1]}\\b`));
    await bridge.waitFor(/agent: .* sum \d+ ok/, "the bridge's check");

    const ann = example("relay_chat.ts", "room", "ann");
    await ann.waitFor(/you are ann in room/, "ann joins");
    const bob = example("relay_chat.ts", "room", "bob");
    await bob.waitFor(/you are bob in room; here: ann/, "bob joins");
    const writer = ann.child.stdin.getWriter();
    await writer.write(new TextEncoder().encode("hello bob, ça va?\n/to bob just for you\n"));
    await bob.waitFor(/ann: hello bob, ça va\?/, "bob hears ann");
    await bob.waitFor(/ann \(to you\): just for you/, "the directed message");
    await writer.write(new TextEncoder().encode("/quit\n"));
    writer.releaseLock();
    await bob.waitFor(/\* ann left/, "bob hears ann leave");
  } finally {
    for (const p of processes.reverse()) await p.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadRelayConfig: flags aside, env wins over the working directory's file, which wins over home's", async () => {
  const cwd = await Deno.makeTempDir();
  const home = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${cwd}/immortal-relay.properties`, "relay.url = http://cwd\n");
    await Deno.writeTextFile(
      `${home}/immortal-relay.properties`,
      "url=http://home\nsecret: from-home\nport = 9000\n",
    );
    const config = loadRelayConfig({ cwd, home, env: { IMMORTAL_RELAY_SECRET: "from-env" } });
    assert.equal(config.url, "http://cwd");
    assert.equal(config.secret, "from-env");
    assert.equal(config.port, 9000);
    assert.equal(config.sources.secret, "env IMMORTAL_RELAY_SECRET");
    assert.equal(config.sources.port, `${home}/immortal-relay.properties:3`);
    await Deno.writeTextFile(`${home}/immortal-relay.properties`, "port = 70000\n");
    assert.throws(() => loadRelayConfig({ cwd, home, env: {} }), /:1: port must be 0-65535/);
  } finally {
    await Deno.remove(cwd, { recursive: true });
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("relay CLI: the cluster flags reach the relay's settings", () => {
  const config = parseRelayArgs([
    "--redis",
    "redis://:pw@10.0.0.9:6379",
    "--cluster-address",
    "10.0.0.5:8081",
    "--reuse-port",
  ]);
  assert.ok(config !== "help");
  const { redis, clusterAddress, reusePort } = config.serve;
  assert.deepEqual({ redis, clusterAddress, reusePort }, {
    redis: "redis://:pw@10.0.0.9:6379",
    clusterAddress: "10.0.0.5:8081",
    reusePort: true,
  });
});

Deno.test("relay CLI: the history flags reach the relay's settings", () => {
  const config = parseRelayArgs([
    "--history-length",
    "50",
    "--history-bytes",
    "65536",
    "--history-age",
    "30000",
  ]);
  assert.ok(config !== "help");
  const { historyLength, historyBytes, historyAge } = config.serve;
  assert.deepEqual({ historyLength, historyBytes, historyAge }, {
    historyLength: 50,
    historyBytes: 65536,
    historyAge: 30000,
  });
});
