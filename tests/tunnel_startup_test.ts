/**
 * How the tunnel client starts: it listens even while its server is down
 * (and carries connections once the server is up), and a peer that answers
 * but cannot be used (another kind of server, TLS on one side only, a wrong
 * key) is one fatal line at start, not a retry loop. And the client hears
 * why the server could not carry a connection. Through a relay: both ends
 * wait for a relay that is not up yet, and a server waits for its name.
 * A permission Deno was not given is one line at start, never retried.
 */

import assert from "node:assert/strict";
import { connect, ImmortalError, listen, RelayNode, serveRelay, TunnelServer } from "../mod.ts";
import { spawnCli } from "./_cli_process.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { freePort, within } from "./_helpers.ts";
import { recordEvents, startRelay } from "./_relay.ts";
import { makeTestCerts } from "./_tls.ts";
import { echoTarget } from "./_tunnel_helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLI = `${ROOT}cli/tunnel.ts`;

/** A fresh random key, as `tunnel keygen` makes one (hex). */
function generateKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function keyFile(): Promise<{ path: string; key: string }> {
  const key = generateKey();
  const path = await Deno.makeTempFile({ prefix: "immortal-key-" });
  await Deno.writeTextFile(path, `${key}\n`);
  return { path, key };
}

Deno.test("tunnel client: started while its server is down, it listens, says so, and carries a connection once the server is up", async () => {
  const { path, key } = await keyFile();
  const listenPort = freePort();
  const serverPort = freePort();
  const client = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    ["client", String(listenPort), "127.0.0.1", String(serverPort), "--key-file", path],
  );
  const echo = echoTarget();
  let server: TunnelServer | undefined;
  try {
    await client.waitFor(/Tunnel client on 127\.0\.0\.1:\d+/, "the client listening");
    await client.waitFor(
      new RegExp(
        `Tunnel server not reached \\(cannot connect to 127\\.0\\.0\\.1:${serverPort}: Connection refused`,
      ),
      "the client saying the server is unreachable",
    );
    // An application may connect already: its connection waits for the server.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: listenPort });
    server = new TunnelServer({
      hostname: "127.0.0.1",
      port: serverPort,
      target: { hostname: "127.0.0.1", port: echo.port },
      key,
    });
    await conn.write(new TextEncoder().encode("through a late server"));
    await conn.closeWrite();
    assert.equal(await new Response(conn.readable).text(), "through a late server");
    await echo.done;
    await client.waitFor(/the tunnel is up/, "the client saying the tunnel is up");
    assert.equal(await client.stop(), 0, client.log);
  } finally {
    await client.stop();
    await server?.close();
    await Deno.remove(path);
  }
});

Deno.test("tunnel client: a peer that is not an immortal tunnel server, TLS on one side only, or a wrong key is one fatal line at start", async () => {
  const { path, key } = await keyFile();
  const certs = await makeTestCerts();
  const http = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("hi"),
  );
  const target = { hostname: "127.0.0.1", port: 9 };
  const plain = new TunnelServer({ hostname: "127.0.0.1", port: 0, target, key });
  const tls = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    target,
    key,
    tls: { cert: certs.cert, key: certs.key },
  });
  const other = new TunnelServer({ hostname: "127.0.0.1", port: 0, target, key: generateKey() });
  try {
    const cases: [string, number, string[], RegExp][] = [
      [
        "an HTTP server",
        http.addr.port,
        [],
        /answers in HTTP, not the immortal protocol: is it a web server, or a relay\? \(a tunnel server on a relay is reached by name: --relay on the command line\)$/m,
      ],
      [
        "a TLS tunnel server, without --tls",
        tls.addr.port,
        [],
        /cannot be used: server refused: this server speaks TLS: connect with TLS$/m,
      ],
      [
        "a plain tunnel server, with --tls",
        plain.addr.port,
        ["--tls-ca", `${certs.dir}/ca.pem`],
        /cannot be used: TLS with 127\.0\.0\.1:\d+ failed \(.*\): is it a plain \(non-TLS\) server\?$/m,
      ],
      ["a server with another key", other.addr.port, [], /cannot be used: .*key/m],
    ];
    for (const [what, port, extra, message] of cases) {
      const client = spawnCli(
        [`--allow-net=127.0.0.1`, `--allow-read=${path},${certs.dir}`],
        CLI,
        ["client", String(freePort()), "127.0.0.1", String(port), "--key-file", path, ...extra],
      );
      const code = await client.child.status.then((status) => status.code);
      await client.stop();
      assert.equal(code, 1, `${what}: ${client.log}`);
      const errors = client.log.split("\n").filter((line) => line.startsWith("error:"));
      assert.equal(errors.length, 1, `${what}: ${client.log}`);
      assert.match(errors[0], /^error: the tunnel server at 127\.0\.0\.1:\d+ cannot be used: /);
      assert.match(errors[0], message, what);
      assert.doesNotMatch(client.log, /^\s+at /m, `${what}: a stack trace`);
    }
    // The library says the same with a code to act on.
    const codes = [];
    const attempts: [number, { caCerts: string[] } | undefined][] = [
      [http.addr.port, undefined],
      [tls.addr.port, undefined],
      [plain.addr.port, { caCerts: [certs.caCert] }],
    ];
    for (const [port, tlsOption] of attempts) {
      const error = await connect({ hostname: "127.0.0.1", port, key, tls: tlsOption }).then(
        (conn) => conn.close(),
        (error) => error,
      );
      assert.ok(error instanceof ImmortalError);
      codes.push(error.code);
    }
    assert.deepEqual(codes, ["protocol", "protocol", "tls"]);
  } finally {
    await http.shutdown();
    await plain.close();
    await tls.close();
    await other.close();
    await Deno.remove(path);
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("tunnel client: an immortal server that is no tunnel server (it does not greet as one) is one fatal line at start, not 'the tunnel is up'", async () => {
  const { path, key } = await keyFile();
  // An immortal listener whose application answers in its own way.
  const listener = listen({ hostname: "127.0.0.1", port: 0, key });
  const serving = (async () => {
    for await (const conn of listener) {
      conn.write(new TextEncoder().encode("HTTP/1.1 400 Bad Request\r\n\r\n")).catch(() => {});
    }
  })();
  try {
    const client = spawnCli(
      [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
      CLI,
      ["client", String(freePort()), "127.0.0.1", String(listener.addr.port), "--key-file", path],
    );
    const code = await within(30_000, "the client exiting", client.child.status).then((s) =>
      s.code
    );
    await client.stop();
    assert.equal(code, 1, client.log);
    assert.doesNotMatch(client.log, /the tunnel is up/);
    assert.match(
      client.log,
      /^error: the tunnel server at 127\.0\.0\.1:\d+ cannot be used: the peer does not speak stream multiplexing \(bad greeting\)$/m,
    );
  } finally {
    listener.close();
    await serving;
    await Deno.remove(path);
  }
});

Deno.test("tunnel client: an immortal server that takes the session and never writes gets a warning, not 'the tunnel is up', and the client keeps waiting", async () => {
  const { path, key } = await keyFile();
  const listener = listen({ hostname: "127.0.0.1", port: 0, key });
  const taken: { close(): void }[] = [];
  const serving = (async () => {
    for await (const conn of listener) taken.push(conn); // and never a byte back
  })();
  const client = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    ["client", String(freePort()), "127.0.0.1", String(listener.addr.port), "--key-file", path],
  );
  try {
    await client.waitFor(
      /The server at 127\.0\.0\.1:\d+ took the session but has not answered as a tunnel server after 5 s: is it one\? Still waiting/,
      "the warning",
    );
    assert.doesNotMatch(client.log, /the tunnel is up|error:/);
  } finally {
    await client.stop();
    listener.close();
    await serving;
    for (const conn of taken) conn.close();
    await Deno.remove(path);
  }
});

Deno.test("tunnel client: a server that ends the session before it greets (stopping as we came) is tried again, and the tunnel is up once a tunnel server answers", async () => {
  const { path, key } = await keyFile();
  const listener = listen({ hostname: "127.0.0.1", port: 0, key });
  const port = listener.addr.port;
  const client = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    ["client", String(freePort()), "127.0.0.1", String(port), "--key-file", path],
  );
  let server: TunnelServer | undefined;
  try {
    // The first session: taken, then ended before any greeting.
    const first = await listener.accept();
    first.close();
    listener.close();
    await client.waitFor(
      /The tunnel server 127\.0\.0\.1:\d+ ended the session before answering \(the peer aborted the connection: closed by the application\); trying again/,
      "the client saying it tries again",
    );
    server = new TunnelServer({
      hostname: "127.0.0.1",
      port,
      key,
      target: { hostname: "127.0.0.1", port: freePort() }, // never reached
    });
    await client.waitFor(/the tunnel is up/, "the tunnel up");
    assert.doesNotMatch(client.log, /error:/);
  } finally {
    await client.stop();
    listener.close();
    await server?.close();
    await Deno.remove(path);
  }
});

Deno.test("tunnel client: a connection the server could not carry is logged with why (the target refused)", async () => {
  const { path, key } = await keyFile();
  const closed = freePort();
  const server = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    target: { hostname: "127.0.0.1", port: closed },
    key,
  });
  const listenPort = freePort();
  const client = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    ["client", String(listenPort), "127.0.0.1", String(server.addr.port), "--key-file", path],
  );
  try {
    await client.waitFor(/the tunnel is up/, "the tunnel up");
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: listenPort });
    // The server refuses the stream: the local connection ends without a byte.
    assert.equal(await new Response(conn.readable).text(), "");
    await client.waitFor(
      new RegExp(
        `Tunneled connection from 127\\.0\\.0\\.1:\\d+ failed: stream refused: cannot reach 127\\.0\\.0\\.1:${closed}: Connection refused`,
      ),
      "the reason in the client's log",
    );
  } finally {
    await client.stop();
    await server.close();
    await Deno.remove(path);
  }
});

Deno.test("tunnel client: waiting for a server that is down never spins, whatever the backoff settings", async () => {
  const { path } = await keyFile();
  const client = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    [
      "client",
      String(freePort()),
      "127.0.0.1",
      String(freePort()),
      "--key-file",
      path,
      // A first wait longer than the 30 s a connection may wait.
      "--backoff-initial",
      "60000",
      "--backoff-max",
      "60000",
      // Each opening that fails says so at debug level: a spin would show.
      "--log-level",
      "debug",
    ],
  );
  try {
    await client.waitFor(/Tunnel server not reached/, "the first retry");
    assert.equal(await client.stop(), 0);
    const retries = client.log.split("\n").filter((line) =>
      /Tunnel server (not reached|still not reached)/.test(line)
    );
    assert.ok(retries.length <= 2, `${retries.length} retries logged at once:\n${client.log}`);
  } finally {
    await client.stop();
    await Deno.remove(path);
  }
});

/** Stats blocks as printed (each ends with its "open connection(s)" line), the rtt left out. */
function statsBlocks(log: string): string[] {
  const blocks: string[] = [];
  let block: string[] = [];
  // Log lines: after their time and level.
  for (const line of log.split("\n").flatMap((l) => /\binfo +(stats .*)$/.exec(l)?.[1] ?? [])) {
    block.push(line.replace(/, rtt .* ms$/, ""));
    if (/open connection\(s\);/.test(line)) {
      blocks.push(block.join("\n"));
      block = [];
    }
  }
  return blocks;
}

/** Waits for a CLI to exit by itself (bounded), and returns its code. */
async function exitCode(cli: ReturnType<typeof spawnCli>, what: string): Promise<number> {
  const { code } = await within(30_000, what, cli.child.status);
  await cli.stop();
  return code;
}

Deno.test("tunnel CLI: a net or read permission Deno was not given is one line at start naming the flag, never a retry", async () => {
  const { path } = await keyFile();
  const ca = `${path}.ca.pem`; // never read: the permission is missing
  const listen = freePort();
  const far = freePort();
  const relayPort = freePort();
  try {
    const cases: [string, string[], string[], RegExp][] = [
      [
        "a client that may not reach its server",
        [`--allow-net=127.0.0.1:${listen}`, `--allow-read=${path}`],
        ["client", String(listen), "127.0.0.1", String(far), "--key-file", path],
        new RegExp(
          `^error: no net permission to reach the tunnel server at 127\\.0\\.0\\.1:${far}: run with --allow-net=127\\.0\\.0\\.1:${listen},127\\.0\\.0\\.1:${far}, or add \\S+ to permissions\\.tunnel-(server|client)\\.net in deno\\.json$`,
          "m",
        ),
      ],
      [
        "a server that may not reach its target",
        [`--allow-net=127.0.0.1:${listen}`, `--allow-read=${path}`],
        [
          "server",
          String(listen),
          "127.0.0.1",
          String(far),
          "--listen-host",
          "127.0.0.1",
          "--key-file",
          path,
        ],
        new RegExp(
          `^error: no net permission to reach the forward target 127\\.0\\.0\\.1:${far}: run with --allow-net=127\\.0\\.0\\.1:${listen},127\\.0\\.0\\.1:${far}, or add \\S+ to permissions\\.tunnel-(server|client)\\.net in deno\\.json$`,
          "m",
        ),
      ],
      [
        "a relay-named server that may reach neither the relay nor its target",
        [`--allow-read=${path}`],
        [
          "server",
          "--relay",
          `http://127.0.0.1:${relayPort}`,
          "--session",
          "lab",
          "--name",
          "x",
          "--key-file",
          path,
          "127.0.0.1",
          String(far),
        ],
        new RegExp(
          `^error: no net permission to reach the relay at 127\\.0\\.0\\.1:${relayPort}, or to reach the forward target 127\\.0\\.0\\.1:${far}: run with --allow-net=127\\.0\\.0\\.1:${relayPort},127\\.0\\.0\\.1:${far}, or add \\S+ to permissions\\.tunnel-(server|client)\\.net in deno\\.json$`,
          "m",
        ),
      ],
      [
        "a key file it may not read",
        ["--allow-net=127.0.0.1"],
        ["client", String(listen), "127.0.0.1", String(far), "--key-file", path],
        new RegExp(
          `^error: no permission to read key file ${path}: run with --allow-read=${path}, or add \\S+ to permissions\\.tunnel-client\\.read in deno\\.json$`,
          "m",
        ),
      ],
      [
        // Every file it may not read, in one run (before: the next one on the next run).
        "a key file and a CA file it may not read",
        ["--allow-net=127.0.0.1"],
        ["client", String(listen), "127.0.0.1", String(far), "--key-file", path, "--tls-ca", ca],
        new RegExp(
          `^error: no permission to read key file ${path} \\(nor ${ca}\\): run with --allow-read=${path},${ca}, or add \\S+ to permissions\\.tunnel-client\\.read in deno\\.json$`,
          "m",
        ),
      ],
    ];
    for (const [what, permissions, args, message] of cases) {
      const cli = spawnCli(permissions, CLI, args);
      assert.equal(await exitCode(cli, what), 1, `${what}:\n${cli.log}`);
      assert.match(cli.log, message, what);
      assert.equal(cli.log.trim().split("\n").length, 1, `${what}: one line\n${cli.log}`);
      assert.doesNotMatch(cli.log, /unreachable|trying again/, what);
    }
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("tunnel CLI through a relay that is not up yet: both ends wait for it saying so once, then the tunnel is up; --stats prints changes only", async () => {
  const { path } = await keyFile();
  const echo = echoTarget();
  const relayPort = freePort();
  // The client reaches the relay through a gate that resets connections until
  // opened: it can then be let in after the server, which it needs to find there.
  const gate = await FaultProxy.start({ targetPort: relayPort });
  gate.refuseNew(true);
  const listenPort = freePort();
  const common = ["--session", "lab", "--key-file", path, "--stats", "0.02"];
  const server = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    [
      "server",
      "--relay",
      `http://127.0.0.1:${relayPort}`,
      "--name",
      "echo",
      ...common,
      "127.0.0.1",
      String(echo.port),
    ],
  );
  const client = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    [
      "client",
      String(listenPort),
      "--relay",
      `http://127.0.0.1:${gate.port}`,
      "--to",
      "echo",
      ...common,
    ],
  );
  let relay: ReturnType<typeof serveRelay> | undefined;
  try {
    const waiting =
      /Relay at http:\/\/127\.0\.0\.1:\d+ not reachable \(.*\); trying again for 30 s/;
    await server.waitFor(waiting, "the server waiting for the relay");
    await client.waitFor(waiting, "the client waiting for the relay");
    relay = serveRelay({ hostname: "127.0.0.1", port: relayPort, onListen() {} });
    await server.waitFor(/Tunnel server echo on the relay/, "the server on the relay");
    gate.refuseNew(false);
    await client.waitFor(
      /Tunnel server echo answered through the relay: the tunnel is up/,
      "the client saying the tunnel is up",
    );
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: listenPort });
    await conn.write(new TextEncoder().encode("after the relay came up"));
    await conn.closeWrite();
    assert.equal(await new Response(conn.readable).text(), "after the relay came up");
    await echo.done;
    for (const cli of [server, client]) {
      // The connections' own bytes, not the session's framing: the 23 of the
      // message each way (the server's local connection is the echo's).
      await cli.waitFor(
        /^\S+ info +stats 0 open connection\(s\); connections sent 23 B, received 23 B$/m,
        "statistics printed",
      );
      // Per session at both ends: the server's are its clients' sessions.
      await cli.waitFor(
        /^\S+ info +stats [0-9a-f]{8} \w+: \d+ B out, \d+ B in on the session, \d+ reconnects, \d+ B replayed, rtt /m,
        "a session's statistics",
      );
    }
    assert.equal(await client.stop(), 0, client.log);
    assert.equal(await server.stop(), 0, server.log);
    for (const cli of [server, client]) {
      // Said once, however many tries it took.
      assert.equal(cli.log.match(/trying again for/g)?.length, 1, cli.log);
      assert.doesNotMatch(cli.log, /^error:/m, cli.log);
      // Statistics only when they changed: never the same block twice in a row.
      const blocks = statsBlocks(cli.log);
      blocks.slice(1).forEach((block, i) => assert.notEqual(block, blocks[i], cli.log));
    }
  } finally {
    await client.stop();
    await server.stop();
    await gate.close();
    await relay?.shutdown();
    await Deno.remove(path);
  }
});

Deno.test("tunnel CLI through a relay that never comes up: one line, then one error after --relay-wait", async () => {
  const { path } = await keyFile();
  const args = [
    "--relay",
    // A password in the URL is never written out.
    `http://me:hunter2@127.0.0.1:${freePort()}`,
    "--session",
    "lab",
    "--key-file",
    path,
  ];
  const client = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    ["client", String(freePort()), ...args, "--to", "x", "--relay-wait", "0.3"],
  );
  try {
    assert.equal(await exitCode(client, "the client giving up"), 1, client.log);
    assert.match(client.log, /not reachable .*; trying again for 0.3 s/);
    assert.match(
      client.log,
      /^error: cannot reach the relay at http:\/\/me:\*\*\*@127\.0\.0\.1:\d+ \(tried for 0\.3 s\): .*refused/m,
    );
    assert.doesNotMatch(client.log, /hunter2/);
    assert.equal(client.log.match(/^error:/gm)?.length, 1, client.log);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("tunnel server through a relay whose name is held: it waits under a stand-in name while the holder is there, and takes the name once it is free", async () => {
  const { path } = await keyFile();
  const echo = echoTarget();
  await using relay = startRelay();
  const holder = await RelayNode.connect(relay.url, { session: "lab", nickname: "lab-echo" });
  const seen = recordEvents(holder);
  const common = ["--relay", relay.url, "--session", "lab", "--key-file", path];
  const permissions = [`--allow-net=127.0.0.1`, `--allow-read=${path}`];
  /** A tunnel server for the name "lab-echo", with `extra` flags. */
  const nameServer = (...extra: string[]) =>
    spawnCli(permissions, CLI, [
      "server",
      ...common,
      "--name",
      "lab-echo",
      ...extra,
      "127.0.0.1",
      String(echo.port),
    ]);
  const server = nameServer();
  try {
    await server.waitFor(
      /The name "lab-echo" is held in session lab \(by another tunnel server, or one that just stopped\); waiting for it for up to 90 s/,
      "the server waiting for its name",
    );
    // It joined as lab-echo(1), which no client would reach, and waits there
    // for the holder to leave (rather than joining and leaving every second).
    await seen.until(
      () => seen.events.some((e) => e.type === "join" && e.nickname === "lab-echo(1)"),
      "the stand-in name joined",
    );
    // Waiting: not a tunnel server yet.
    assert.doesNotMatch(server.log, /Tunnel server lab-echo on the relay/);
    await holder.close();
    await seen.done();
    await server.waitFor(/Tunnel server lab-echo on the relay/, "the server taking its name");
    assert.match(server.log, /Joined session lab of the relay at .* as lab-echo /);

    // A second server for the name, which will not wait: one line, exit 1.
    const second = nameServer("--name-wait", "0");
    assert.equal(await exitCode(second, "the second server giving up"), 1, second.log);
    assert.match(
      second.log,
      /^error: the name "lab-echo" is taken in session lab: is another tunnel server using it\? Stop it, or give this one another --name$/m,
    );
    // A third, waiting for it, stops cleanly on SIGTERM while it waits: its
    // stand-in leaves (it was "gone", 2.5 s later, as if it had crashed).
    await using watcher = await RelayNode.connect(relay.url, { session: "lab", nickname: "w" });
    const watched = recordEvents(watcher);
    const third = nameServer();
    await third.waitFor(/waiting for it/, "the third server waiting");
    const standIn = (e: (typeof watched.events)[number]) =>
      (e.type === "join" || e.type === "leave") && e.nickname === "lab-echo(1)";
    await watched.until(() => watched.events.some(standIn), "the stand-in joined");
    assert.equal(await third.stop(), 0, third.log);
    assert.match(third.log, /SIGTERM: stopping/);
    await watched.until(
      () => watched.events.some((e) => e.type === "leave" && standIn(e)),
      "the stand-in's leave",
    );
    const leave = watched.events.find((e) => e.type === "leave" && standIn(e));
    assert.equal(leave?.type === "leave" ? leave.reason : undefined, "left");

    const listenPort = freePort();
    const client = spawnCli(permissions, CLI, [
      "client",
      String(listenPort),
      ...common,
      "--to",
      "lab-echo",
    ]);
    try {
      await client.waitFor(/the tunnel is up/, "the client through the server");
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: listenPort });
      await conn.write(new TextEncoder().encode("by its name"));
      await conn.closeWrite();
      assert.equal(await new Response(conn.readable).text(), "by its name");
      await echo.done;
    } finally {
      assert.equal(await client.stop(), 0, client.log);
    }
  } finally {
    await holder.close();
    assert.equal(await server.stop(), 0, server.log);
    await Deno.remove(path);
  }
});

Deno.test("tunnel client pointed at another kind of server that reads the hello and hangs up (PostgreSQL does): its log says so, not 'unreachable'", async () => {
  const { path } = await keyFile();
  const listenPort = freePort();
  // Reads what comes, then closes without a byte back: a database's answer to a bad startup packet.
  const hangUp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const conn of hangUp) {
      conn.read(new Uint8Array(1024)).catch(() => null).finally(() => conn.close());
    }
  })();
  const client = spawnCli(
    [`--allow-net=127.0.0.1`, `--allow-read=${path}`],
    CLI,
    ["client", String(listenPort), "127.0.0.1", String(hangUp.addr.port), "--key-file", path],
  );
  try {
    await client.waitFor(
      new RegExp(
        `Tunnel server not reached \\(127\\.0\\.0\\.1:${hangUp.addr.port} accepted the connection ` +
          "and closed it without answering: is it an immortal server\\? \\(one shedding load does that too\\)\\)",
      ),
      "the client saying what the server did",
    );
    assert.doesNotMatch(client.log, /cannot connect to|link closed during the handshake/);
  } finally {
    await client.stop();
    hangUp.close();
    await serving;
    await Deno.remove(path);
  }
});
