import assert from "node:assert/strict";
import net from "node:net";
import { FaultProxy } from "./_fault_proxy.ts";
import { spawnCli } from "./_cli_process.ts";
import { freePort, within } from "./_helpers.ts";
import { makeTestCerts } from "./_tls.ts";
import { echoTarget, echoThrough } from "./_tunnel_helpers.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLI = `${ROOT}cli/tunnel.ts`;

async function run(args: string[], permissions = ["--allow-net=127.0.0.1"]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, CLI, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test("tunnel CLI: --help, and one clear line with a non-zero exit for every bad input", async () => {
  const help = await run(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /tunnel server <listenPort> <forwardHost> <forwardPort>/);
  assert.match(help.stdout, /tunnel client <listenPort> <serverHost> <serverPort>/);

  // deno.json's permission set is loaded, and it is scoped: a port outside it is refused, in one
  // line that names the whole --allow-net the command needs.
  const scoped = await run(["server", "2100", "127.0.0.1", "22"], ["-P=tunnel-server"]);
  assert.equal(scoped.code, 1, scoped.stderr);
  assert.match(
    scoped.stderr,
    /^error: no net permission to listen on 0\.0\.0\.0:2100: run with --allow-net=0\.0\.0\.0:2100,127\.0\.0\.1:22, or add 0\.0\.0\.0:2100,127\.0\.0\.1:22 to permissions\.tunnel-server\.net in deno\.json$/m,
  );
  assert.doesNotMatch(scoped.stderr, /^\s+at /m);

  const certs = await makeTestCerts();
  // A server whose certificate the client below does not trust.
  const tlsServer = Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...certs });
  // The CA's own certificate served: what `openssl req -x509` alone makes.
  const caServer = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: certs.caCert,
    key: certs.caKey,
  });
  const accepting = Promise.all([tlsServer, caServer].map(async (listener) => {
    for await (const conn of listener) {
      conn.handshake().catch(() => {}).finally(() => conn.close());
    }
  }));
  try {
    // A port taken already: the listen error names it.
    using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const busy = String(taken.addr.port);
    const cases: [string[], RegExp, number][] = [
      [[], /missing command/, 2],
      [
        ["server", busy, "127.0.0.1", "22", "--listen-host", "127.0.0.1"],
        new RegExp(`^error: cannot listen on 127\\.0\\.0\\.1:${busy}: Address already in use`, "m"),
        1,
      ],
      [
        ["client", busy, "127.0.0.1", "2000"],
        new RegExp(`^error: cannot listen on 127\\.0\\.0\\.1:${busy}: Address already in use`, "m"),
        1,
      ],
      [
        [
          "server",
          String(freePort()),
          "127.0.0.1",
          "22",
          "--listen-host",
          "127.0.0.1",
          "--tls-cert",
          `${certs.dir}/cert.pem`,
          "--tls-key",
          `${certs.dir}/ca_key.pem`,
        ],
        /^error: the TLS key does not belong to the certificate \(KeyMismatch\)$/m,
        1,
      ],
      [["relay", "1", "h", "2"], /unknown command "relay"/, 2],
      [["server", "99999", "h", "22"], /<listenPort> must be a port number/, 2],
      [["server", "2000", "h"], /missing <forwardPort>/, 2],
      [
        ["server", "-1", "h", "22"],
        /^error: -1: negative numbers are not taken \(a port, a count\?\)$/m,
        2,
      ],
      [["client", "2000", "", "2001"], /^error: <serverHost> is empty\nRun with --help/m, 2],
      [["client", "2000", "127.0.0.1", "x"], /<serverPort> must be a port number/, 2],
      [["server", "2000", "h", "22", "--bogus"], /^error: unknown flag --bogus$/m, 2],
      [
        ["client", "2000", "h", "22", "--stats", "-1"],
        /--stats needs a value; for one that starts with "-", write --stats=VALUE/,
        2,
      ],
      [
        ["client", "2000", "h", "22", "--stats=-1"],
        /--stats must be 0 or a number of seconds/,
        2,
      ],
      [
        ["client", "2000", "h", "22", "--stats", "1e10"],
        /--stats must be 0 or a number of seconds/,
        2,
      ],
      // Plain digits only, as every number of the CLIs: 1e3 is a typo more often than not.
      [["client", "2000", "h", "22", "--stats", "1e3"], /in plain digits/, 2],
      [["client", "2000", "h", "22", "--stats", " 5"], /in plain digits/, 2],
      [["client", "2000", "h", "22", "--stats", "0.0004"], /from 0.001/, 2],
      [["server", "2000", "h", "22", "--key-file", "/nonexistent/key"], /cannot read key file/, 2],
      [["server", "2000", "h", "22", "--tls-cert", `${certs.dir}/cert.pem`], /needs both/, 2],
      [
        ["server", "2000", "h", "22", "--tls-ca", `${certs.dir}/ca.pem`],
        /--tls-ca is for the client/,
        2,
      ],
      [
        [
          "server",
          "2000",
          "h",
          "22",
          "--tls-cert",
          `${certs.dir}/key.pem`,
          "--tls-key",
          `${certs.dir}/key.pem`,
        ],
        /holds no PEM certificate/,
        2,
      ],
      [
        [
          "client",
          String(freePort()),
          "127.0.0.1",
          String(tlsServer.addr.port),
          "--tls-ca",
          `${certs.dir}/other_ca.pem`,
        ],
        /^error: the tunnel server at 127\.0\.0\.1:\d+ cannot be used: TLS with 127\.0\.0\.1:\d+ failed \(.*\): its certificate is not trusted \(give the CA that signed it: tls\.caCerts, --tls-ca on the command line\)$/m,
        1,
      ],
      [
        // The CA is right; the name is not (before, this too said "give the CA").
        [
          "client",
          String(freePort()),
          "127.0.0.1",
          String(tlsServer.addr.port),
          "--tls-ca",
          `${certs.dir}/ca.pem`,
          "--tls-name",
          "wrong.test",
        ],
        /^error: the tunnel server at 127\.0\.0\.1:\d+ cannot be used: TLS with 127\.0\.0\.1:\d+ failed \(.*"wrong\.test".*\): its certificate is for another name \(give the name it carries: tls\.serverName, --tls-name on the command line\)$/m,
        1,
      ],
      [
        [
          "client",
          String(freePort()),
          "127.0.0.1",
          String(caServer.addr.port),
          "--tls-ca",
          `${certs.dir}/ca.pem`,
        ],
        /^error: the tunnel server at 127\.0\.0\.1:\d+ cannot be used: TLS with 127\.0\.0\.1:\d+ failed \(.*CaUsedAsEndEntity.*\): it is a CA certificate, which TLS does not take as a server's/m,
        1,
      ],
    ];
    for (const [args, message, code] of cases) {
      const result = await run(args, ["--allow-net=127.0.0.1", "--allow-read"]);
      assert.equal(result.code, code, `${args.join(" ")}: exit ${result.code}\n${result.stderr}`);
      assert.match(result.stderr, message);
      assert.doesNotMatch(result.stderr, /^\s+at /m, `stack trace for: ${args.join(" ")}`);
    }
  } finally {
    tlsServer.close();
    caServer.close();
    await accepting;
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("tunnel CLI: TLS and a key file under exactly scoped permissions; the link's fate is told in words; SIGTERM exits cleanly", async () => {
  const certs = await makeTestCerts();
  await Deno.writeTextFile(`${certs.dir}/tunnel.key`, "correct horse battery staple\n");
  const target = echoTarget();
  const serverPort = freePort();
  const clientPort = freePort();
  const proxy = await FaultProxy.start({ targetPort: serverPort });
  try {
    const server = spawnCli(
      [
        `--allow-net=127.0.0.1:${serverPort},127.0.0.1:${target.port}`,
        `--allow-read=${certs.dir}`,
      ],
      CLI,
      [
        "server",
        String(serverPort),
        "127.0.0.1",
        String(target.port),
        "--listen-host",
        "127.0.0.1",
        "--key-file",
        `${certs.dir}/tunnel.key`,
        "--tls-cert",
        `${certs.dir}/cert.pem`,
        "--tls-key",
        `${certs.dir}/key.pem`,
        // Sealed sessions inside TLS too: both ends say so at start.
        "--encrypt",
      ],
    );
    await server.waitFor(
      /Tunnel server on 127.0.0.1:\d+ \(TLS\), .* \(encrypted sessions only\)/,
      "server start",
    );
    const client = spawnCli(
      [`--allow-net=127.0.0.1:${clientPort},127.0.0.1:${proxy.port}`, `--allow-read=${certs.dir}`],
      CLI,
      [
        "client",
        String(clientPort),
        "127.0.0.1",
        String(proxy.port),
        "--key-file",
        `${certs.dir}/tunnel.key`,
        "--tls-ca",
        `${certs.dir}/ca.pem`,
        "--encrypt",
      ],
    );
    await client.waitFor(
      /Tunnel client on 127.0.0.1:\d+, via the server at .* \(TLS\) \(encrypted sessions\)/,
      "client start",
    );

    const conn = await Deno.connect({ hostname: "127.0.0.1", port: clientPort });
    const encoder = new TextEncoder();
    await conn.write(encoder.encode("before the cut, "));
    await client.waitFor(/Session [0-9a-f]{8} opened as client with /, "tunnel connected");
    // The log says the link carries the session: it is live, so exactly one cut lands.
    assert.equal(proxy.reset(), 1, "no link to cut");
    await client.waitFor(/lost its link/, "link lost");
    await client.waitFor(/resumed after \d+ ms via .*, \d+ bytes replayed/, "resume");
    await conn.write(encoder.encode("after the cut"));
    await conn.closeWrite();
    const reply = await new Response(conn.readable).text();
    assert.equal(reply, "before the cut, after the cut");
    await target.done;

    assert.equal(await client.stop(), 0, client.log);
    assert.equal(await server.stop(), 0, server.log);
    assert.match(server.log, /SIGTERM: closing the tunnel/);
    assert.doesNotMatch(server.log + client.log, /^\s+at /m);
  } finally {
    await proxy.close();
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("tunnel CLI runs from a URL: help and a real short session", async () => {
  // The repository, served over plain HTTP as a web server would.
  const files = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    if (path.includes("..")) return new Response("bad path", { status: 400 });
    try {
      const body = await Deno.readFile(`${ROOT}${path.slice(1)}`);
      const type = path.endsWith(".json") ? "application/json" : "application/typescript";
      return new Response(body, { headers: { "content-type": type } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  const base = `http://127.0.0.1:${files.addr.port}`;
  const remote = [
    `--allow-import=127.0.0.1:${files.addr.port}`,
    // A remote module has no deno.json of its own: its import map comes from the same server.
    `--import-map=${base}/deno.json`,
    `--reload=${base}`,
  ];
  try {
    const help = await new Deno.Command(Deno.execPath(), {
      args: ["run", ...remote, `${base}/cli/tunnel.ts`, "--help"],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    assert.equal(help.code, 0, new TextDecoder().decode(help.stderr));
    assert.match(new TextDecoder().decode(help.stdout), /tunnel server <listenPort>/);

    const target = echoTarget();
    const serverPort = freePort();
    const clientPort = freePort();
    const server = spawnCli(
      [...remote, `--allow-net=127.0.0.1:${serverPort},127.0.0.1:${target.port}`],
      `${base}/cli/tunnel.ts`,
      [
        "server",
        String(serverPort),
        "127.0.0.1",
        String(target.port),
        "--listen-host",
        "127.0.0.1",
      ],
    );
    await server.waitFor(/Tunnel server on/, "server start");
    const client = spawnCli(
      [...remote, `--allow-net=127.0.0.1:${clientPort},127.0.0.1:${serverPort}`],
      `${base}/cli/tunnel.ts`,
      ["client", String(clientPort), "127.0.0.1", String(serverPort)],
    );
    await client.waitFor(/Tunnel client on/, "client start");
    assert.equal(await echoThrough(clientPort, "from a URL"), "from a URL");
    await target.done;
    assert.equal(await client.stop(), 0, client.log);
    assert.equal(await server.stop(), 0, server.log);
  } finally {
    await files.shutdown();
  }
});

Deno.test("tunnel server out of descriptors: it backs off, logs a line, not thousands, and serves again once they free up", async () => {
  const target = echoTarget();
  const serverPort = freePort();
  const clientPort = freePort();
  // 64 descriptors: the runtime takes some, idle connections take the rest.
  const server = spawnCli(
    [`--allow-net=127.0.0.1:${serverPort},127.0.0.1:${target.port}`],
    CLI,
    ["server", String(serverPort), "127.0.0.1", String(target.port), "--listen-host", "127.0.0.1"],
    { wrap: ["prlimit", "--nofile=64:64"] },
  );
  const attack: net.Socket[] = [];
  try {
    await server.waitFor(/Tunnel server on/, "server start");
    // Without a key the server is an open proxy to its target, and says so loudly.
    await server.waitFor(/warning\s+NO KEY: this tunnel server is OPEN/, "the open-proxy warning");
    // Connections that never say a word hold a descriptor each until the
    // handshake deadline: the kernel queues the rest, and accept fails. From
    // ten addresses, each under the per-source limit of pending handshakes.
    for (let i = 0; i < 120; i++) {
      const socket = net.connect({
        host: "127.0.0.1",
        port: serverPort,
        localAddress: `127.0.0.${2 + i % 10}`,
      });
      socket.on("error", () => {});
      attack.push(socket);
    }
    await server.waitFor(/Accepting a link failed: .*(Too many open files|os error 24)/, "EMFILE");
    for (const socket of attack.splice(0)) socket.destroy();
    const client = spawnCli(
      [`--allow-net=127.0.0.1:${clientPort},127.0.0.1:${serverPort}`],
      CLI,
      ["client", String(clientPort), "127.0.0.1", String(serverPort)],
    );
    await client.waitFor(/Tunnel client on/, "client start");
    assert.equal(await echoThrough(clientPort, "after the flood"), "after the flood");
    await target.done;
    assert.equal(await client.stop(), 0, client.log);
    // Spinning on a failing accept wrote a line per try: hundreds of thousands.
    const failures = server.log.match(/Accepting a link failed/g)?.length ?? 0;
    assert.ok(failures <= 3, `${failures} lines about failed accepts:\n${server.log}`);
  } finally {
    for (const socket of attack) socket.destroy();
    assert.equal(await server.stop(), 0, server.log);
  }
});

Deno.test("tunnel client out of descriptors: it says so in a line, backs off, and serves again once they free up", async () => {
  // An echo target for every connection: the flood's streams reach it too.
  const targetListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held = new Set<Deno.Conn>();
  const serving = (async () => {
    for await (const conn of targetListener) {
      held.add(conn);
      conn.readable.pipeTo(conn.writable).catch(() => {}).finally(() => held.delete(conn));
    }
  })();
  const serverPort = freePort();
  const clientPort = freePort();
  const server = spawnCli(
    [`--allow-net=127.0.0.1:${serverPort},127.0.0.1:${targetListener.addr.port}`],
    CLI,
    [
      "server",
      String(serverPort),
      "127.0.0.1",
      String(targetListener.addr.port),
      "--listen-host",
      "127.0.0.1",
    ],
  );
  await server.waitFor(/Tunnel server on/, "server start");
  // 64 descriptors for the client: the runtime takes some, local connections the rest.
  const client = spawnCli(
    [`--allow-net=127.0.0.1:${clientPort},127.0.0.1:${serverPort}`],
    CLI,
    ["client", String(clientPort), "127.0.0.1", String(serverPort)],
    { wrap: ["prlimit", "--nofile=64:64"] },
  );
  const flood: net.Socket[] = [];
  try {
    // The session is up before the flood: it needs no descriptor after it.
    await client.waitFor(/Session \S+ opened as client/, "client start");
    const floodedAt = performance.now();
    for (let i = 0; i < 120; i++) {
      const socket = net.connect({ host: "127.0.0.1", port: clientPort });
      socket.on("error", () => {});
      flood.push(socket);
    }
    // Before, the first failed accept ended the client's accept loop without
    // a word: the port stayed bound, and nothing was ever served on it again.
    await within(
      60_000,
      "the failed accept logged",
      client.waitFor(
        /Accepting a local connection failed: .*(Too many open files|os error 24)/,
        "EMFILE",
      ),
    );
    for (const socket of flood.splice(0)) socket.destroy();
    assert.equal(
      await within(60_000, "an echo after the flood", echoThrough(clientPort, "after the flood")),
      "after the flood",
    );
    // A line, then a line and a summary per 10 s while it lasts; not a line per try.
    const intervals = Math.ceil((performance.now() - floodedAt) / 10_000);
    const failures = client.log.match(/Accepting a local connection failed/g)?.length ?? 0;
    assert.ok(
      failures <= 2 * intervals + 1,
      `${failures} lines about failed accepts:\n${client.log}`,
    );
  } finally {
    for (const socket of flood) socket.destroy();
    assert.equal(await client.stop(), 0, client.log);
    assert.equal(await server.stop(), 0, server.log);
    targetListener.close();
    await serving.catch(() => {});
    for (const conn of held) {
      try {
        conn.close();
      } catch {
        // Closed by its echo already.
      }
    }
  }
});
