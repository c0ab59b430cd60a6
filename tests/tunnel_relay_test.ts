/**
 * Tunnels by name through a relay, as users run them: both tunnel ends are
 * CLI processes that only make outgoing connections (to the relay; the server
 * also to its target), the relay is a CLI process that gets SIGKILLed and
 * restarted mid-transfer, and real OpenSSH/rsync run through it all.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { RelayNode, serveRelay } from "../mod.ts";
import { spawnCli } from "./_cli_process.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { recordEvents } from "./_relay.ts";
import { freePort, within } from "./_helpers.ts";
import { startSshd } from "./_sshd.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const TUNNEL = `${ROOT}cli/tunnel.ts`;
const RELAY = `${ROOT}cli/relay.ts`;
const FAST = ["--heartbeat", "200", "--dead-link", "1000"];
const FAST_CLIENT = [...FAST, "--backoff-initial", "20", "--backoff-max", "200"];

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

async function writeRandomFile(path: string, mib: number): Promise<void> {
  using file = await Deno.open(path, { write: true, create: true });
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < mib; i++) {
    // getRandomValues fills at most 64 KiB per call.
    for (let off = 0; off < chunk.length; off += 65536) {
      crypto.getRandomValues(chunk.subarray(off, off + 65536));
    }
    await file.write(chunk);
  }
}

/** The relay CLI on `port`, with `secret`. */
function startRelayCli(port: number, secret: string) {
  return spawnCli(
    [`--allow-net=127.0.0.1:${port}`],
    RELAY,
    ["--hostname", "127.0.0.1", "--port", String(port), "--secret", secret],
  );
}

/** Runs the tunnel CLI to completion (for commands that end, or fail). */
/**
 * Runs the tunnel CLI to its end, in `extra.cwd` or an empty folder of its
 * own: an immortal-relay.properties where the tests run (a developer's) is
 * none of its business.
 */
async function runTunnel(
  args: string[],
  net: string,
  extra: { deno?: string[]; env?: Record<string, string>; cwd?: string } = {},
) {
  const cwd = extra.cwd ?? await Deno.makeTempDir({ prefix: "immortal-tunnel-run-" });
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", `--allow-net=${net}`, "--allow-read", ...extra.deno ?? [], TUNNEL, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...extra.env },
    cwd,
  }).output();
  if (extra.cwd === undefined) await Deno.remove(cwd, { recursive: true });
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

Deno.test("rsync of 64 MiB over OpenSSH through a relay-named tunnel (both ends outgoing-only) survives two SIGKILLs and restarts of the relay, each after another 20 MiB", async () => {
  const sshd = await startSshd();
  const relayPort = freePort();
  let relay = startRelayCli(relayPort, "s3cret");
  await relay.waitFor(/Relay listening/, "the relay starting");
  // Between the tunnel ends and the relay: counts the bytes, so the kills
  // come by progress; it also stays up while the relay is down.
  const proxy = await FaultProxy.start({ targetPort: relayPort });
  const url = `http://127.0.0.1:${proxy.port}`;
  const keyFile = `${sshd.dir}/tunnel.key`;
  await Deno.writeTextFile(keyFile, (await runTunnel(["keygen"], "127.0.0.1")).stdout);
  const relayFlags = ["--relay", url, "--session", "lab", "--relay-secret", "s3cret"];
  // The server may reach the relay and its target, nothing else: it listens nowhere.
  const server = spawnCli(
    [`--allow-net=127.0.0.1:${proxy.port},127.0.0.1:${sshd.port}`, `--allow-read=${keyFile}`],
    TUNNEL,
    [
      "server",
      ...relayFlags,
      "--name",
      "lab-ssh",
      "127.0.0.1",
      String(sshd.port),
      ...FAST,
      "--key-file",
      keyFile,
    ],
  );
  await server.waitFor(/Tunnel server lab-ssh on the relay/, "the tunnel server");
  const localPort = freePort();
  const client = spawnCli(
    [`--allow-net=127.0.0.1:${proxy.port},127.0.0.1:${localPort}`, `--allow-read=${keyFile}`],
    TUNNEL,
    [
      "client",
      String(localPort),
      ...relayFlags,
      "--to",
      "lab-ssh",
      ...FAST_CLIENT,
      "--key-file",
      keyFile,
    ],
  );
  let restarts = 0;
  let restarting: Promise<void> = Promise.resolve();
  try {
    await client.waitFor(/Tunnel client on/, "the tunnel client");
    const src = `${sshd.dir}/source.bin`;
    const dst = `${sshd.dir}/copy.bin`;
    await writeRandomFile(src, 64);
    const rsync = new Deno.Command("rsync", {
      args: ["-e", ["ssh", ...sshd.sshArgs(localPort)].join(" "), src, `127.0.0.1:${dst}`],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    using _kills = proxy.cutEvery({
      bytes: 20 << 20,
      max: 2,
      fault: () => {
        // SIGKILL: no goodbye to anyone. A fresh relay comes up on the same
        // port, knowing nothing of the sessions, nodes or pipes before it.
        restarting = restarting.then(async () => {
          await relay.stop("SIGKILL");
          relay = startRelayCli(relayPort, "s3cret");
          await relay.waitFor(/Relay listening/, "the relay restarting");
          restarts++;
        });
        return 1;
      },
    });
    const out = await within(180_000, "rsync", rsync.output());
    await restarting;
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `rsync failed: ${stderr}\n--- client:\n${client.log}`);
    assert.equal(restarts, 2, "the relay was killed and restarted twice");
    assert.equal(await sha256File(dst), await sha256File(src), "the copy differs");
    // The tunnel's session resumed through the new relays: the client said so.
    assert.match(client.log, /resumed|Resumed/);
    // Logs name the peer: the server by name, each link by the relay it goes through.
    assert.doesNotMatch(client.log + server.log, / with \?| via \?|lab-ssh:0/);
    assert.match(
      client.log,
      new RegExp(
        `opened as client with lab-ssh \\(through the relay at 127\\.0\\.0\\.1:${proxy.port}\\)`,
      ),
    );
    // And the server names the client by its name, not by the relay's address.
    assert.match(
      server.log,
      /Session \w+ opened as server with tunnel-client \(through the relay at /,
    );
    // One session from start to end: the client's start-up check is the tunnel's
    // session (a probe opened and closed showed at the server as a failed one).
    assert.equal(server.log.match(/Session \w+ opened as server/g)?.length, 1, server.log);
    // Said once at each end: the session's line, not the tunnel's too.
    assert.doesNotMatch(client.log + server.log, /Tunnel session \w+ (from|open to) /);
    assert.doesNotMatch(server.log, /aborted by the peer/);
  } finally {
    await restarting.catch(() => {});
    assert.equal(await client.stop(), 0, client.log);
    assert.equal(await server.stop(), 0, server.log);
    await relay.stop();
    await proxy.close();
    await sshd[Symbol.asyncDispose]();
  }
});

Deno.test("tunnel CLI through a relay: a client started first waits for its server; a relay that comes back with another secret: both ends say it dropped them, and exit 1", async () => {
  const relayPort = freePort();
  let relay = startRelayCli(relayPort, "s3cret");
  await relay.waitFor(/Relay listening/, "the relay starting");
  const url = `http://127.0.0.1:${relayPort}`;
  const common = ["--relay", url, "--session", "lab", "--key", "k"];
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const localPort = freePort();
  // The client first: it waits for its server to join (boot order). Its
  // relay secret comes from the environment, the server's from a flag.
  const client = spawnCli(
    [
      `--allow-net=127.0.0.1:${relayPort},127.0.0.1:${localPort}`,
      "--allow-env=IMMORTAL_RELAY_SECRET",
    ],
    TUNNEL,
    ["client", String(localPort), ...common, "--to", "lab", ...FAST_CLIENT],
    { env: { IMMORTAL_RELAY_SECRET: "s3cret" } },
  );
  await client.waitFor(/No tunnel server lab in session lab yet; waiting/, "the client waiting");
  // It listens already, as a direct client does: a connection made now
  // waits for the server (it was refused), and is carried once it is there.
  const early = await Deno.connect({ hostname: "127.0.0.1", port: localPort });
  await early.write(new TextEncoder().encode("early"));
  const server = spawnCli(
    [`--allow-net=127.0.0.1:${relayPort},127.0.0.1:${target.addr.port}`],
    TUNNEL,
    [
      "server",
      ...common,
      "--relay-secret",
      "s3cret",
      "--name",
      "lab",
      "127.0.0.1",
      String(target.addr.port),
      ...FAST,
    ],
  );
  try {
    await server.waitFor(/Tunnel server lab on the relay/, "the tunnel server");
    await client.waitFor(/the tunnel is up/, "the tunnel client");
    {
      using carried = await within(30_000, "the early connection at the target", target.accept());
      const got = new Uint8Array(5);
      for (let n = 0; n < got.length;) {
        const read = await carried.read(got.subarray(n));
        assert.notEqual(read, null, "the early connection ended before its bytes");
        n += read!;
      }
      assert.equal(new TextDecoder().decode(got), "early");
    }
    early.close();
    // Secrets given as flags: each program says where they show, and what keeps them private.
    const shown = (flag: string, instead: string) =>
      new RegExp(
        `${flag} is on the command line, where any user of this machine can read it \\(ps\\); ${instead} keeps it private`,
      );
    for (const end of [server, client]) assert.match(end.log, shown("--key", "--key-file"));
    assert.match(server.log, shown("--relay-secret", "--relay-secret-file"));
    assert.doesNotMatch(client.log, /--relay-secret is on the command line/);
    await relay.waitFor(shown("--secret", "--secret-file or IMMORTAL_RELAY_SECRET"), "a warning");
    assert.equal(await relay.stop(), 0);
    relay = startRelayCli(relayPort, "another secret");
    await relay.waitFor(/Relay listening/, "the relay back, with another secret");
    // Each says why; one whose secret no flag gave says where it came from.
    const dropped = (from: string) =>
      new RegExp(
        `^error: the relay at \\S+ dropped us: missing or wrong relay secret${from}$`,
        "m",
      );
    for (
      const [end, from] of [
        [server, ""],
        [client, " \\(the secret came from env IMMORTAL_RELAY_SECRET\\)"],
      ] as const
    ) {
      await end.waitFor(dropped(from), "the end saying why");
      assert.equal((await end.child.status).code, 1, end.log);
    }
  } finally {
    await server.stop();
    await client.stop();
    await relay.stop();
    target.close();
  }
});

Deno.test("tunnel CLI through a relay: keygen, and one clear line for a missing key, a wrong relay secret, an unknown name, a taken name and a wrong key", async () => {
  const key = (await runTunnel(["keygen"], "127.0.0.1")).stdout.trim();
  assert.match(key, /^[0-9a-f]{64}$/);
  assert.notEqual(key, (await runTunnel(["keygen"], "127.0.0.1")).stdout.trim());
  // A word too many is bad input, said as all bad input is.
  const extra = await runTunnel(["keygen", "extra"], "127.0.0.1");
  assert.equal(extra.code, 2);
  assert.equal(
    extra.stderr,
    'error: keygen takes no arguments, got "extra"\nRun with --help for usage.\n',
  );

  await using relay = serveRelay({ hostname: "127.0.0.1", port: 0, secret: "s", onListen() {} });
  const url = `http://127.0.0.1:${relay.addr.port}`;
  const net = `127.0.0.1`;
  const common = ["--relay", url, "--session", "t", "--relay-secret", "s"];

  const noKey = await runTunnel(["client", "2345", ...common, "--to", "x"], net);
  assert.equal(noKey.code, 2);
  assert.match(noKey.stderr, /through a relay a key is required.*tunnel keygen/);

  const wrongSecret = await runTunnel(
    [
      "client",
      String(freePort()),
      "--relay",
      url,
      "--session",
      "t",
      "--relay-secret",
      "nope",
      "--to",
      "x",
      "--key",
      key,
    ],
    net,
  );
  assert.equal(wrongSecret.code, 1, wrongSecret.stderr);
  assert.match(
    wrongSecret.stderr,
    /^error: the relay at .* refused us: missing or wrong relay secret$/m,
  );

  const unknown = await runTunnel([
    "client",
    String(freePort()),
    ...common,
    "--to",
    "nobody",
    "--relay-wait",
    "0",
    "--key",
    key,
  ], net);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /^error: no tunnel server "nobody" in session t of /m);

  // No secret given: the relay's own variable serves, where it may be read,
  // and the line that says it is missing says where it may come from.
  const noSecret = ["client", String(freePort()), "--relay", url, "--session", "t"];
  const toNobody = ["--to", "nobody", "--relay-wait", "0", "--key", key];
  const missing = await runTunnel([...noSecret, ...toNobody], net, {
    env: { IMMORTAL_RELAY_SECRET: "s" },
  });
  assert.equal(missing.code, 1, missing.stderr);
  assert.match(
    missing.stderr,
    /^error: the relay at .* refused us: missing or wrong relay secret; give it with --relay-secret-file, or in IMMORTAL_RELAY_SECRET \(run with --allow-env=IMMORTAL_RELAY_SECRET, or add IMMORTAL_RELAY_SECRET to permissions\.tunnel-client\.env in deno\.json\)$/m,
  );
  // A secret set for another relay (the url beside it) is not sent to this one.
  const elsewhere = await Deno.makeTempDir({ prefix: "immortal-tunnel-run-" });
  try {
    await Deno.writeTextFile(
      `${elsewhere}/immortal-relay.properties`,
      "url = https://relay.example\nsecret = s\n",
    );
    const other = await runTunnel([...noSecret, ...toNobody], net, { cwd: elsewhere });
    assert.equal(other.code, 1, other.stderr);
    assert.match(
      other.stderr,
      /^error: the relay at .* refused us: missing or wrong relay secret \(the secret in \S+immortal-relay\.properties:2 is for https:\/\/relay\.example, set beside it, not this relay: not sent\)$/m,
    );
    // The url beside the secret decides, not one set elsewhere (a variable over the file's).
    const mixed = await runTunnel([...noSecret, ...toNobody], net, {
      cwd: elsewhere,
      deno: ["--allow-env=IMMORTAL_RELAY_URL"],
      env: { IMMORTAL_RELAY_URL: url },
    });
    assert.match(mixed.stderr, /is for https:\/\/relay\.example, set beside it, not this relay/);
  } finally {
    await Deno.remove(elsewhere, { recursive: true });
  }
  const fromEnv = await runTunnel([...noSecret, ...toNobody], net, {
    deno: ["--allow-env=IMMORTAL_RELAY_SECRET"],
    env: { IMMORTAL_RELAY_SECRET: "s" },
  });
  assert.equal(fromEnv.code, 1, fromEnv.stderr);
  assert.match(
    fromEnv.stderr,
    /Joined session t of the relay at \S+ as tunnel-client \(\w+; relay secret from env IMMORTAL_RELAY_SECRET\)$/m,
  );
  assert.match(fromEnv.stderr, /^error: no tunnel server "nobody" in session t of /m);
  const wrongEnv = await runTunnel([...noSecret, ...toNobody], net, {
    deno: ["--allow-env=IMMORTAL_RELAY_SECRET"],
    env: { IMMORTAL_RELAY_SECRET: "nope" },
  });
  assert.match(
    wrongEnv.stderr,
    /^error: the relay at .* refused us: missing or wrong relay secret \(the secret came from env IMMORTAL_RELAY_SECRET\)$/m,
  );

  // A tunnel server named "srv", then a second one under the same name, and a client with the wrong key.
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const server = spawnCli(
    [`--allow-net=127.0.0.1`],
    TUNNEL,
    ["server", ...common, "--name", "srv", "127.0.0.1", String(target.addr.port), "--key", key],
  );
  try {
    await server.waitFor(/Tunnel server srv on the relay/, "the tunnel server");
    const taken = await runTunnel(
      ["server", ...common, "--name", "srv", "127.0.0.1", "22", "--key", key, "--name-wait", "0"],
      net,
    );
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /^error: the name "srv" is taken in session t/m);
    const wrongKey = await runTunnel(
      ["client", String(freePort()), ...common, "--to", "srv", "--key", "wrong"],
      net,
    );
    assert.equal(wrongKey.code, 1);
    assert.match(wrongKey.stderr, /^error: tunnel server srv: .*(key|auth|proof)/m);
    for (const out of [noKey, wrongSecret, unknown, taken, wrongKey]) {
      assert.doesNotMatch(out.stderr, /\n\s+at /, "a stack trace");
    }
  } finally {
    assert.equal(await server.stop(), 0, server.log);
    target.close();
  }
});

Deno.test("tunnel CLI through a relay: a tunnel server SIGKILLed and started again gets its name back once the relay has the old one gone (its key makes its claim), not after the relay's reservation", async () => {
  const key = (await runTunnel(["keygen"], "127.0.0.1")).stdout.trim();
  // A reservation far longer than any wait here: only the claim gives the name back.
  await using relay = serveRelay({
    hostname: "127.0.0.1",
    port: 0,
    secret: "s",
    reclaimWindow: 600_000,
    onListen() {},
  });
  // Someone stays in the session, as in a lab: the claim, not an empty room, is tested.
  await using keeper = await RelayNode.connect(`http://127.0.0.1:${relay.addr.port}`, {
    session: "t",
    nickname: "keeper",
    secret: "s",
  });
  const seen = recordEvents(keeper);
  const joins = (nickname: string) =>
    seen.events.filter((e) => e.type === "join" && e.nickname === nickname).length;
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const args = [
    "server",
    ...["--relay", `http://127.0.0.1:${relay.addr.port}`, "--session", "t", "--relay-secret", "s"],
    ...["--name", "srv", "127.0.0.1", String(target.addr.port), "--key", key],
  ];
  const first = spawnCli(["--allow-net=127.0.0.1"], TUNNEL, args);
  let second: ReturnType<typeof spawnCli> | undefined;
  try {
    await first.waitFor(/Tunnel server srv on the relay/, "the tunnel server");
    await first.stop("SIGKILL"); // no goodbye: the relay keeps the name for the old one
    second = spawnCli(["--allow-net=127.0.0.1"], TUNNEL, [...args, "--name-wait", "60"]);
    await second.waitFor(/Tunnel server srv on the relay/, "the restarted server, under its name");
    await seen.until(() => joins("srv") === 2, "the session hearing srv back");
    // While the old one was still a member, the new one waited joined under a
    // suffix, once: not a join and a leave every second for the session to see.
    assert.ok(joins("srv(1)") <= 1, `srv(1) joined ${joins("srv(1)")} times`);
  } finally {
    await first.stop();
    if (second) assert.equal(await second.stop(), 0, second.log);
    target.close();
  }
});

Deno.test("tunnel CLI through a relay: a server cut off until the relay calls it gone, whose name another server with its key claimed meanwhile, says so and exits 1 instead of serving under a suffix nobody reaches", async () => {
  const key = (await runTunnel(["keygen"], "127.0.0.1")).stdout.trim();
  await using relay = serveRelay({ hostname: "127.0.0.1", port: 0, secret: "s", onListen() {} });
  await using keeper = await RelayNode.connect(`http://127.0.0.1:${relay.addr.port}`, {
    session: "t",
    nickname: "keeper",
    secret: "s",
  });
  const seen = recordEvents(keeper);
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // The first server reaches the relay through a path the test cuts.
  const path = await FaultProxy.start({ targetPort: relay.addr.port });
  const args = (url: string) => [
    "server",
    ...["--relay", url, "--session", "t", "--relay-secret", "s"],
    ...["--name", "srv", "127.0.0.1", String(target.addr.port), "--key", key],
  ];
  const first = spawnCli(["--allow-net=127.0.0.1"], TUNNEL, args(`http://127.0.0.1:${path.port}`));
  let second: ReturnType<typeof spawnCli> | undefined;
  try {
    await first.waitFor(/Tunnel server srv on the relay/, "the first server");
    second = spawnCli(["--allow-net=127.0.0.1"], TUNNEL, [
      ...args(`http://127.0.0.1:${relay.addr.port}`),
      "--name-wait",
      "120",
    ]);
    await second.waitFor(/The name "srv" is held/, "the second server waiting for the name");
    path.refuseNew(true);
    path.reset();
    await second.waitFor(/Tunnel server srv on the relay/, "the second server taking the name");
    path.refuseNew(false);
    const { code } = await within(30_000, "the first server exiting", first.child.status);
    assert.equal(code, 1, first.log);
    await first.stop(); // the whole log read
    assert.match(
      first.log,
      /^error: the name "srv" was taken in session t while the relay could not reach us .*: as "srv\(1\)" no client reaches this one$/m,
    );
    assert.ok(seen.events.some((e) => e.type === "leave" && e.nickname === "srv"));
  } finally {
    await first.stop();
    if (second) assert.equal(await second.stop(), 0, second.log);
    await path.close();
    target.close();
  }
});

Deno.test("tunnel CLI through a relay: a client at start fails at once, in one line, on a server name that refuses its pipes; one whose server does not answer yet stops at once on SIGTERM", async () => {
  const key = (await runTunnel(["keygen"], "127.0.0.1")).stdout.trim();
  await using relay = serveRelay({ hostname: "127.0.0.1", port: 0, secret: "s", onListen() {} });
  const url = `http://127.0.0.1:${relay.addr.port}`;
  // A member named like a server, that takes no pipes (a chat node, say).
  await using _mute = await RelayNode.connect(url, { session: "t", nickname: "mute", secret: "s" });
  // One that takes pipes and never answers on them (a server stuck at start).
  await using stuck = await RelayNode.connect(url, {
    session: "t",
    nickname: "stuck",
    secret: "s",
  });
  const stuckPipes = stuck.pipeAcceptor();
  const client = (to: string) =>
    spawnCli(["--allow-net=127.0.0.1"], TUNNEL, [
      "client",
      String(freePort()),
      ...["--relay", url, "--session", "t", "--relay-secret", "s", "--to", to, "--key", key],
    ]);
  const refused = client("mute");
  const { code } = await within(30_000, "the refused client exiting", refused.child.status);
  await refused.stop();
  assert.equal(code, 1, refused.log);
  assert.match(refused.log, /^error: tunnel server mute: .*(refuse|accept)/m);
  assert.doesNotMatch(refused.log, /trying again/);

  const waiting = client("stuck");
  const pipe = await within(30_000, "the client's pipe", stuckPipes.accept());
  try {
    assert.equal(await within(10_000, "the client stopping", waiting.stop()), 0, waiting.log);
    assert.doesNotMatch(waiting.log, /^error:/m);
  } finally {
    pipe.close();
    stuckPipes.close();
  }
});

Deno.test("tunnel CLI through a relay: pipes given up while the server was stopped (SIGSTOP) are no warnings once it continues, however many", async () => {
  const key = (await runTunnel(["keygen"], "127.0.0.1")).stdout.trim();
  // The relay waits 300 ms for the offered end of a pipe: dials to a stopped server give up soon.
  await using relay = serveRelay({
    hostname: "127.0.0.1",
    port: 0,
    secret: "s",
    authTimeout: 300,
    onListen() {},
  });
  const url = `http://127.0.0.1:${relay.addr.port}`;
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const server = spawnCli(["--allow-net=127.0.0.1"], TUNNEL, [
    "server",
    ...["--relay", url, "--session", "t", "--relay-secret", "s", "--name", "srv"],
    ...["127.0.0.1", String(target.addr.port), "--key", key, "--log-level", "debug"],
  ]);
  await using dialer = await RelayNode.connect(url, { session: "t", nickname: "d", secret: "s" });
  try {
    await server.waitFor(/Tunnel server srv on the relay/, "the tunnel server");
    server.child.kill("SIGSTOP");
    try {
      // Three pipes offered to it while it cannot take them; each gives up at the relay.
      for (let i = 0; i < 3; i++) {
        await assert.rejects(
          within(20_000, "a pipe dial", dialer.pipeDialer("srv")(AbortSignal.timeout(20_000))),
          /did not answer the pipe/,
        );
      }
    } finally {
      server.child.kill("SIGCONT");
    }
    await server.waitFor(
      /(The pipe from d was given up before this node took it[^]*){3}/,
      "the server finding the three pipes gone",
    );
    assert.doesNotMatch(server.log, /Could not accept the pipe/);
  } finally {
    await server.stop();
    target.close();
  }
});
