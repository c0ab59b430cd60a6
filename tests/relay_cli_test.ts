/**
 * cli/relay.ts as a user runs it, with scoped permissions, and the examples
 * against it, configured by an immortal-relay.properties file.
 */

import assert from "node:assert/strict";
import { loadRelayConfig } from "../mod.ts";
import { parseRelayArgs } from "../cli/relay.ts";
import { grantAdvice } from "../cli/_common.ts";
import { freePort, within } from "./_helpers.ts";
import { makeTestCerts } from "./_tls.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLI = `${ROOT}cli/relay.ts`;
// Deno's cache, named for the relays run with HOME elsewhere: else they would
// look for it under that HOME, and download their dependencies again.
const DENO_DIR: string = JSON.parse(
  new TextDecoder().decode(
    (await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stderr: "null" }).output())
      .stdout,
  ),
).denoDir;

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
    env: { NO_COLOR: "1", DENO_DIR, ...env },
  });
}

/** A long-running process whose stdout+stderr are collected; `waitFor` a pattern in them. */
function spawn(args: string[], cwd = ROOT, env: Record<string, string> = {}) {
  const child = deno(args, cwd, "piped", env).spawn();
  let text = "";
  let ended = false;
  // Checked on every chunk of output, and once at its end: waits follow the output, not a timer.
  const checks = new Set<() => void>();
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const t of s.pipeThrough(new TextDecoderStream())) {
      text += t;
      for (const check of checks) check();
    }
  };
  const reading = Promise.all([pump(child.stdout), pump(child.stderr)]).finally(() => {
    ended = true;
    for (const check of checks) check();
  });
  return {
    child,
    get text() {
      return text;
    },
    async waitFor(pattern: RegExp, what: string) {
      let check = () => {};
      const seen = new Promise<void>((resolve, reject) => {
        check = () => {
          if (pattern.test(text)) resolve();
          else if (ended) reject(new Error(`${what}: the output ended without it`));
        };
      });
      checks.add(check);
      check();
      try {
        await within(20_000, what, seen);
      } catch (error) {
        throw new Error(`${(error as Error).message}\n--- output so far:\n${text}`);
      } finally {
        checks.delete(check);
      }
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

/**
 * Runs the CLI to its exit. One that serves instead (the bug some tests are
 * for) is stopped after 20 s and fails the test, its output shown.
 */
async function exitOf(args: string[], cwd = ROOT, env: Record<string, string> = {}) {
  const run = spawn(args, cwd, env);
  try {
    await within(20_000, `exit of ${args.join(" ")}`, run.child.status);
  } catch (error) {
    await run.stop();
    throw new Error(`${(error as Error).message}\n--- output:\n${run.text}`);
  }
  return { code: await run.stop(), text: run.text };
}

Deno.test("relay CLI: --help, and one clear line with a non-zero exit for every bad input", async () => {
  const help = await deno(["run", CLI, "--help"]).output();
  assert.equal(help.code, 0);
  assert.match(new TextDecoder().decode(help.stdout), /--secret-file PATH/);
  assert.match(new TextDecoder().decode(help.stdout), /--open {2,}run without a secret/);
  const bad = await Deno.makeTempDir({ prefix: "immortal-relay-cli-" });
  await Deno.writeTextFile(
    `${bad}/immortal-relay.properties`,
    "url = http://x\nthis is not a setting\n",
  );
  // A home of its own, with no immortal-relay.properties: the user's own would change the cases.
  const home = await Deno.makeTempDir({ prefix: "immortal-relay-home-" });
  const emptySecret = await Deno.makeTempDir({ prefix: "immortal-relay-empty-" });
  await Deno.writeTextFile(`${emptySecret}/immortal-relay.properties`, "secret =\nport = 0\n");
  await Deno.writeTextFile(`${emptySecret}/relay.secret`, "\nsecond line\n");
  const cases: [string[], RegExp, string?, Record<string, string>?][] = [
    [["--port", "99999"], /--port must be a port number 0-65535/],
    [["--bogus"], /^error: unknown flag --bogus$/m],
    [["extra"], /^error: unexpected argument "extra"$/m],
    [["--rate", "-5"], /--rate needs a value; for one that starts with "-", write --rate=VALUE/],
    [["--port"], /^error: --port needs a value$/m],
    [["--no-chat-page=yes"], /--no-chat-page takes no value/],
    [["--overflow", "maybe"], /--overflow must be disconnect or drop/],
    [["--rate=-5"], /--rate must be a positive number/],
    // Said of the flag, not of the library's option (exit 1 without "Run with --help").
    [["--rate", "0.3"], /--rate must be at least 0\.5 \(a burst/],
    [["--keep-alive", "900000000"], /--keep-alive must be at most 858993458 \(a node is gone/],
    [["--max-nodes", "1.5"], /--max-nodes must be a whole number from 1 to 9007199254740991/],
    [["--history-length", "0"], /--history-length must be a whole number from 1/],
    // Numbers in plain digits, exact (at most 2^53 - 1), like the durations: not what Number() takes.
    [
      ["--max-message-bytes", "1e3"],
      /^error: --max-message-bytes must be a whole number from 1 to 9007199254740991 in plain digits, got "1e3"$/m,
    ],
    [["--max-nodes", "999999999999999999999"], /--max-nodes must be a whole number from 1 to/],
    [["--max-sessions", "9007199254740992"], /--max-sessions must be a whole number from 1 to/],
    [["--max-queue-bytes", "0x10"], /--max-queue-bytes must be a whole number/],
    [["--max-unjoined", " 5"], /--max-unjoined must be a whole number/],
    [
      ["--rate", "1e2"],
      /^error: --rate must be a positive number .* in plain digits \(like 100 or 0\.5\), got "1e2"$/m,
    ],
    [["--keep-alive", "1e4"], /--keep-alive must be a whole number of milliseconds/],
    // An empty secret is refused wherever it was set, and the error says where.
    [["--secret", ""], /^error: the relay secret is empty \(--secret\)$/m],
    [
      [],
      /^error: the relay secret is empty \(env IMMORTAL_RELAY_SECRET\)$/m,
      ROOT,
      { IMMORTAL_RELAY_SECRET: "" },
    ],
    [[], /^error: the relay secret is empty \(.*\/immortal-relay\.properties:1\)$/m, emptySecret],
    [
      ["--secret-file", `${emptySecret}/relay.secret`],
      new RegExp(
        `^error: the relay secret is empty \\(${emptySecret}/relay\\.secret:1, the first line of the secret file\\)$`,
        "m",
      ),
    ],
    [
      ["--open", "--secret", "x"],
      /^error: --open is for a relay without a secret, but one is set \(--secret\)/m,
    ],
    [
      ["--open"],
      /--open is for a relay without a secret, but one is set \(env IMMORTAL_RELAY_SECRET\)/,
      ROOT,
      { IMMORTAL_RELAY_SECRET: "s3cret" },
    ],
    [["--history-age", "soon"], /--history-age must be a whole number of milliseconds/],
    [["--hostname", ""], /--hostname is empty/],
    [
      ["--max-message-bytes", "10"],
      /--max-message-bytes must be at least 512 \(a hello must fit\), got 10/,
    ],
    [
      ["--keep-alive", "10"],
      /--keep-alive must be at least 100 \(nodes could not answer in time\), got 10/,
    ],
    [
      ["--trusted-proxy", "10.0.0.2,proxy.example"],
      /--trusted-proxy takes IP addresses, got "proxy\.example"/,
    ],
    [
      ["--hostname", "300.0.0.1"],
      /--hostname must be a host name or an IP address, got "300\.0\.0\.1"/,
    ],
    [["--redis-timeout", "0"], /--redis-timeout must be a whole number of milliseconds from 1/],
    [
      ["--keep-alive", "10000000000"],
      /--keep-alive must be a whole number of milliseconds from 1 to 2147483647/,
    ],
    [["--redis", "localhost:6379"], /--redis must be a URL like redis:\/\/127\.0\.0\.1:6379/],
    // Each of these the Redis client took, to throw a stack trace or dial nowhere.
    [["--redis", "redis://127.0.0.1:99999"], /--redis must be a URL like redis:\/\/127/],
    // Said back without its password.
    [["--redis", "redis://:s3cret@127.0.0.1:99999"], /got "redis:\/\/:\*\*\*@127\.0\.0\.1:99999"/],
    [["--redis", "redis://127.0.0.1:6390/abc"], /--redis's path must be a database number/],
    [["--redis", "redis:///0"], /--redis names no host/],
    [["--cluster-address", "127.0.0.1:9000"], /--cluster-address .* needs --redis/],
    [
      ["--redis", "redis://127.0.0.1:1", "--cluster-address", "0.0.0.0:9000"],
      /^error: --cluster-address is told to the other relays, so it must be an address they reach, not "0\.0\.0\.0"$/m,
    ],
    [["--redis", "redis://127.0.0.1:1", "--cluster-address", "a:b:c"], /must be host:port/],
    [["--secret-file", "/nonexistent/secret"], /cannot read secret file/],
    [["--tls-cert", "/nonexistent/cert.pem"], /needs both --tls-cert and --tls-key/],
    [["--log-level", "loud"], /--log-level must be one of/],
    [[], /immortal-relay.properties:2: expected "key = value"/, bad],
  ];
  try {
    for (const [args, message, cwd, env] of cases) {
      const out = await exitOf(
        ["run", "--allow-read", "--allow-env", "--allow-net=127.0.0.1", CLI, ...args],
        cwd,
        { HOME: home, ...env },
      );
      assert.equal(out.code, 2, `${args.join(" ")}: exit ${out.code}\n${out.text}`);
      assert.match(out.text, message);
      assert.doesNotMatch(out.text, /^\s+at /m, `stack trace for: ${args.join(" ")}`);
      assert.doesNotMatch(out.text, /Relay listening/);
      assert.doesNotMatch(out.text, /s3cret/, "a secret said back");
    }
    // A port taken by someone else: one line, exit 1.
    const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    let out;
    try {
      const port = String(taken.addr.port);
      out = await exitOf(
        [
          "run",
          `--allow-net=127.0.0.1:${port}`,
          CLI,
          "--open",
          "--hostname",
          "127.0.0.1",
          "--port",
          port,
        ],
      );
    } finally {
      taken.close();
    }
    assert.equal(out.code, 1, out.text);
    assert.match(out.text, /error: cannot listen on 127.0.0.1:\d+: .*in use/i);
    assert.doesNotMatch(out.text, /^\s+at /m);
  } finally {
    for (const dir of [bad, home, emptySecret]) await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("relay CLI without a secret runs, and says loudly that it is open: asked with --open, or finding none where it could look", async () => {
  const home = await Deno.makeTempDir({ prefix: "immortal-relay-home-" });
  const run = async (
    flags: string[],
    args: string[],
    warning: RegExp,
    signal: Deno.Signal = "SIGTERM",
  ) => {
    const port = freePort();
    const relay = spawn(
      ["run", `--allow-net=127.0.0.1:${port}`, ...flags, CLI, ...args, "--hostname", "127.0.0.1"]
        .concat(["--port", String(port)]),
      ROOT,
      { HOME: home },
    );
    try {
      await relay.waitFor(/Relay listening on http:\/\/127.0.0.1:\d+/, "relay start");
      // The warning is its own log line: wait for it rather than assume it came with the first.
      await relay.waitFor(warning, "the open-relay warning");
      // The limits a refusal is measured against, defaults here.
      await relay.waitFor(
        /Limits: 10000 sessions of 1000 nodes; messages up to 65536 bytes, 100 a second a node; 1048576 bytes queued for a node, then it is disconnected; keep-alive every 10000 ms/,
        "the limits",
      );
      await relay.waitFor(
        /Kept for nodes coming back: 1000 messages or 4194304 bytes a session \(268435456 in all\), for 120000 ms; connections without a joined node: 512 at most, 60000 ms idle/,
        "the rest of the limits",
      );
      const health = await fetch(`http://127.0.0.1:${port}/healthz`);
      assert.deepEqual(await health.json(), { status: "ok", sessions: 0, nodes: 0 });
    } finally {
      assert.equal(await relay.stop(signal), 0, relay.text);
    }
    assert.match(relay.text, new RegExp(`${signal}: shutting the relay down`));
  };
  try {
    // Under a scoped --allow-net alone, it may look nowhere: --open says an open relay is meant.
    await run([], ["--open"], /NO RELAY SECRET \(--open\): this relay is OPEN to anyone/);
    // Allowed to look everywhere a secret may be set, and none there: open, for development.
    await run(
      ["--allow-env=IMMORTAL_RELAY_SECRET,HOME", `--allow-read=${ROOT},${home}`],
      [],
      /NO RELAY SECRET: this relay is OPEN .*Fine for local development/,
    );
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("relay CLI: finding no secret where it was allowed to look, but not allowed everywhere, it does not start open; it names the place and what to grant", async () => {
  const dir = await Deno.makeTempDir({ prefix: "immortal-relay-perm-" });
  const config = `${dir}/immortal-relay.properties`;
  await Deno.writeTextFile(config, "secret = s3cret\n");
  const relay = (flags: string[], env: Record<string, string> = {}) => {
    const port = String(freePort());
    return exitOf(
      ["run", `--allow-net=127.0.0.1:${port}`, ...flags, CLI, "--hostname", "127.0.0.1"]
        .concat(["--port", port]),
      ROOT,
      { HOME: dir, ...env },
    );
  };
  /** The one error line of `text`, after checking that the relay exited 1 and never listened. */
  const errorLine = ({ code, text }: { code: number; text: string }) => {
    assert.equal(code, 1, text);
    assert.doesNotMatch(text, /Relay listening|OPEN/);
    const lines = text.split("\n").filter((line) => line.startsWith("error: "));
    assert.equal(lines.length, 1, text);
    return lines[0];
  };
  const escaped = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  try {
    // The relay's own permission set in deno.json (deno task relay) reads HOME, but has no way
    // to name a file in it: the secret in ~/immortal-relay.properties is not read. Say so, with
    // what to do under deno task, where words after the task name go to the relay, not to deno.
    const home = escaped(config);
    assert.match(
      errorLine(await relay(["--config", `${ROOT}deno.json`, "-P=relay"])),
      new RegExp(
        `^error: no relay secret found, but this relay was not allowed to look at ${home}: ` +
          `run with --allow-read=${home}, or add ${home} to permissions\\.relay\\.read in deno\\.json; ` +
          `or give --open for a relay open to anyone$`,
      ),
    );
    // No --allow-env: the variable is set, but the relay may not read it. It names it, and how.
    const line = errorLine(await relay([], { IMMORTAL_RELAY_SECRET: "s3cret" }));
    assert.match(line, /not allowed to look at env IMMORTAL_RELAY_SECRET, /);
    assert.match(line, /: run with --allow-env=IMMORTAL_RELAY_SECRET,HOME --allow-read=/);
    assert.doesNotMatch(line, /set --secret, --secret-file or IMMORTAL_RELAY_SECRET/);
    // With the permissions, the secret is used.
    const port = freePort();
    const allowed = spawn(
      [
        "run",
        `--allow-net=127.0.0.1:${port}`,
        "--allow-env=IMMORTAL_RELAY_SECRET,HOME",
        `--allow-read=${config}`,
        CLI,
        "--hostname",
        "127.0.0.1",
        "--port",
        String(port),
      ],
      ROOT,
      { HOME: dir },
    );
    try {
      await allowed.waitFor(
        new RegExp(`Relay secret required \\(from ${home}:1\\)`),
        "the secret from the home directory's file",
      );
    } finally {
      assert.equal(await allowed.stop(), 0, allowed.text);
    }
    assert.doesNotMatch(allowed.text, /quote/);
    // A properties file takes a value as written: quotes around it are part of the secret.
    await Deno.writeTextFile(config, 'secret = "s3cret"\n');
    const quotedPort = freePort();
    const quoted = spawn(
      ["run", `--allow-net=127.0.0.1:${quotedPort}`, "--allow-env=IMMORTAL_RELAY_SECRET,HOME"]
        .concat([`--allow-read=${config}`, CLI, "--hostname", "127.0.0.1"])
        .concat(["--port", String(quotedPort)]),
      ROOT,
      { HOME: dir },
    );
    try {
      await quoted.waitFor(
        new RegExp(
          `The relay secret from ${home}:1 starts and ends with a quote: the quotes are part of it`,
        ),
        "the warning of a quoted secret",
      );
    } finally {
      assert.equal(await quoted.stop(), 0, quoted.text);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("relay CLI: a permission it lacks is said as deno's flag and as deno.json's permission set, for deno task", async () => {
  const dir = await Deno.makeTempDir({ prefix: "immortal-relay-grant-" });
  try {
    await Deno.writeTextFile(`${dir}/relay.secret`, "s3cret\n");
    const port = String(freePort());
    const listen = await exitOf(
      ["run", "--allow-net=127.0.0.1:1", CLI, "--open", "--hostname", "127.0.0.1", "--port", port],
    );
    assert.equal(listen.code, 1, listen.text);
    assert.match(
      listen.text,
      new RegExp(
        `^error: cannot listen on 127\\.0\\.0\\.1:${port}: no net permission: run with ` +
          `--allow-net=127\\.0\\.0\\.1:${port}, or add 127\\.0\\.0\\.1:${port} to permissions\\.relay\\.net in deno\\.json$`,
        "m",
      ),
    );
    assert.doesNotMatch(listen.text, /run again with the --allow-net flag/);
    const secretFile = `${dir}/relay.secret`;
    for (
      const [extra, set] of [[[], "relay"], [["--redis", "redis://127.0.0.1:1"], "relay-redis"]]
    ) {
      const read = await exitOf(
        ["run", "--allow-net=127.0.0.1", CLI, "--secret-file", secretFile, ...extra],
      );
      assert.equal(read.code, 1, read.text);
      assert.ok(
        read.text.includes(
          `error: no permission to read secret file ${secretFile}: run with --allow-read=${secretFile}, ` +
            `or add ${secretFile} to permissions.${set}.read in deno.json\n`,
        ),
        read.text,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // Flags merged per kind (deno keeps one list per flag); deno.json takes no $HOME.
  assert.equal(
    grantAdvice(
      ["--allow-env=A", "--allow-env=HOME --allow-read=$HOME/x", "--allow-read=/y"],
      "relay",
    ),
    "run with --allow-env=A,HOME --allow-read=$HOME/x,/y, " +
      "or add A,HOME to permissions.relay.env and /y to permissions.relay.read in deno.json",
  );
  assert.equal(grantAdvice(["--allow-read=/y"]), "run with --allow-read=/y");
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
    // Its own log line, after the first: waited for, not assumed to have come with it.
    await relay.waitFor(
      /Relay secret required \(from .*immortal-relay.properties:2\)/,
      "the secret from the file",
    );

    const example = (name: string, ...args: string[]) => {
      const p = spawn(["run", net, read, env, `${ROOT}examples/${name}`, ...args], dir);
      processes.push(p);
      return p;
    };
    const bridge = example("relay_numbers.ts", "bridge", "lab");
    await bridge.waitFor(/bridge \(the bridge\) waiting/, "bridge start");
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
    // A secret variable set to nothing is a secret set, empty, for the relay to refuse;
    // another variable set to nothing is no setting.
    const empty = loadRelayConfig({
      cwd,
      home,
      env: { IMMORTAL_RELAY_SECRET: "", IMMORTAL_RELAY_PORT: "" },
    });
    assert.equal(empty.secret, "");
    assert.equal(empty.sources.secret, "env IMMORTAL_RELAY_SECRET");
    assert.equal(empty.port, 9000);
    await Deno.writeTextFile(`${home}/immortal-relay.properties`, "port = 70000\n");
    assert.throws(() => loadRelayConfig({ cwd, home, env: {} }), /:1: port must be 0-65535/);
    // A setting the program has (a flag) is not looked for: a wrong value
    // where the flag overrides it stops nothing.
    const flagged = loadRelayConfig({
      cwd,
      home,
      env: { IMMORTAL_RELAY_PORT: "abc" },
      given: ["port"],
    });
    assert.equal(flagged.port, undefined);
    assert.equal(flagged.url, "http://cwd");
    // A key set twice in one file: the last line wins, and is named.
    await Deno.writeTextFile(
      `${home}/immortal-relay.properties`,
      "secret = s\nport = 1\nsecret = t\n",
    );
    const twice = loadRelayConfig({ cwd, home, env: {} });
    assert.equal(twice.secret, "t");
    assert.equal(twice.sources.secret, `${home}/immortal-relay.properties:3`);
    // A flag's name written as a key is an unknown key, named, not a malformed line.
    await Deno.writeTextFile(`${home}/immortal-relay.properties`, "port = 9000\nmax-nodes = 3\n");
    assert.throws(
      () => loadRelayConfig({ cwd, home, env: {} }),
      /:2: unknown key "max-nodes" \(use url, secret/,
    );
  } finally {
    await Deno.remove(cwd, { recursive: true });
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("relay CLI: a flag's setting is not read from the environment, so a wrong value there stops nothing", () => {
  const before = Deno.env.get("IMMORTAL_RELAY_PORT");
  Deno.env.set("IMMORTAL_RELAY_PORT", "abc");
  try {
    assert.throws(() => parseRelayArgs(["--open"]), /IMMORTAL_RELAY_PORT: port must be 0-65535/);
    const config = parseRelayArgs(["--open", "--port", "0"]);
    assert.ok(config !== "help");
    assert.equal(config.serve.port, 0);
  } finally {
    if (before === undefined) Deno.env.delete("IMMORTAL_RELAY_PORT");
    else Deno.env.set("IMMORTAL_RELAY_PORT", before);
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

Deno.test("relay CLI: numbers up to 2^53 - 1 in plain digits reach the relay's settings; a rate may be a fraction", () => {
  const config = parseRelayArgs([
    "--max-message-bytes",
    "1000",
    "--max-nodes",
    "9007199254740991",
    "--rate",
    "0.5",
  ]);
  assert.ok(config !== "help");
  const { maxMessageBytes, maxNodesPerSession, rate } = config.serve;
  assert.deepEqual({ maxMessageBytes, maxNodesPerSession, rate }, {
    maxMessageBytes: 1000,
    maxNodesPerSession: Number.MAX_SAFE_INTEGER,
    rate: 0.5,
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
    "--total-history-bytes",
    "1048576",
  ]);
  assert.ok(config !== "help");
  const { historyLength, historyBytes, historyAge, totalHistoryBytes } = config.serve;
  assert.deepEqual({ historyLength, historyBytes, historyAge, totalHistoryBytes }, {
    historyLength: 50,
    historyBytes: 65536,
    historyAge: 30000,
    totalHistoryBytes: 1048576,
  });
});

Deno.test("relay CLI: --trusted-proxy reaches the relay's settings, an IPv6 address in brackets too", () => {
  const config = parseRelayArgs(["--open", "--trusted-proxy", "10.0.0.2, [::1]"]);
  assert.ok(config !== "help");
  assert.deepEqual(config.serve.trustedProxies, ["10.0.0.2", "::1"]);
});

Deno.test("relay CLI: the metrics token from IMMORTAL_RELAY_METRICS_TOKEN guards /metrics (a flag wins over it; set to nothing, it is an error)", async () => {
  const run = async (args: string[], token: string, works: string, refused: string) => {
    const port = freePort();
    const relay = spawn(
      ["run", `--allow-net=127.0.0.1:${port}`, "--allow-env=IMMORTAL_RELAY_METRICS_TOKEN", CLI]
        .concat(["--open", "--hostname", "127.0.0.1", "--port", String(port), ...args]),
      ROOT,
      { IMMORTAL_RELAY_METRICS_TOKEN: token },
    );
    try {
      await relay.waitFor(/\/metrics takes the metrics token \(from [^)]+\)/, "the token's source");
      const metrics = (bearer: string) =>
        fetch(`http://127.0.0.1:${port}/metrics`, {
          headers: { authorization: `Bearer ${bearer}` },
        });
      const ok = await metrics(works);
      assert.equal(ok.status, 200);
      assert.match(await ok.text(), /^immortal_relay_nodes /m);
      const no = await metrics(refused);
      assert.equal(no.status, 401);
      await no.body?.cancel();
    } finally {
      assert.equal(await relay.stop(), 0, relay.text);
    }
    return relay.text;
  };
  const fromEnv = await run([], "from-env", "from-env", "wrong");
  assert.match(
    fromEnv,
    /\/metrics takes the metrics token \(from env IMMORTAL_RELAY_METRICS_TOKEN\)/,
  );
  const fromFlag = await run(["--metrics-token", "from-flag"], "from-env", "from-flag", "from-env");
  assert.match(fromFlag, /\(from --metrics-token\)/);
  const empty = await exitOf(
    ["run", "--allow-net=127.0.0.1", "--allow-env=IMMORTAL_RELAY_METRICS_TOKEN", CLI, "--open"],
    ROOT,
    { IMMORTAL_RELAY_METRICS_TOKEN: "" },
  );
  assert.equal(empty.code, 2, empty.text);
  assert.match(
    empty.text,
    /^error: the metrics token is empty \(env IMMORTAL_RELAY_METRICS_TOKEN\)$/m,
  );
});

Deno.test("relay and tunnel server CLIs warn at start of a CA's certificate served as their own (clients refuse it); a server certificate gets no warning", async () => {
  const certs = await makeTestCerts();
  const { dir } = certs;
  const tunnel = `${ROOT}cli/tunnel.ts`;
  const read = `--allow-read=${dir}`;
  const concern = new RegExp(
    `warning ${dir}/ca\\.pem is a CA's certificate \\(CA:TRUE, what "openssl req -x509" alone ` +
      "makes\\): TLS clients, ours included, refuse it as a server's own; serve a server " +
      "certificate it signs \\(README: TLS\\)",
  );
  try {
    for (const [cert, key] of [["ca.pem", "ca_key.pem"], ["cert.pem", "key.pem"]]) {
      const tls = ["--tls-cert", `${dir}/${cert}`, "--tls-key", `${dir}/${key}`];
      const relayPort = freePort();
      const tunnelPort = freePort();
      const relay = spawn(
        ["run", `--allow-net=127.0.0.1:${relayPort}`, read, CLI, "--open", ...tls]
          .concat(["--hostname", "127.0.0.1", "--port", String(relayPort)]),
      );
      const server = spawn(
        ["run", `--allow-net=127.0.0.1:${tunnelPort},127.0.0.1:22`, read, tunnel, "server"]
          .concat([String(tunnelPort)])
          .concat(["127.0.0.1", "22", "--listen-host", "127.0.0.1", ...tls]),
      );
      try {
        await relay.waitFor(/Relay listening on https:/, "the relay");
        await server.waitFor(/Tunnel server on .* \(TLS\)/, "the tunnel server");
        if (cert === "ca.pem") {
          await relay.waitFor(concern, "the relay's warning");
          await server.waitFor(concern, "the tunnel server's warning");
        }
      } finally {
        assert.equal(await relay.stop(), 0, relay.text);
        assert.equal(await server.stop(), 0, server.text);
      }
      if (cert === "cert.pem") {
        assert.doesNotMatch(relay.text + server.text, /CA's certificate/);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
