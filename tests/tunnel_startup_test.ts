/**
 * How the tunnel client starts: it listens even while its server is down
 * (and carries connections once the server is up), and a peer that answers
 * but cannot be used (another kind of server, TLS on one side only, a wrong
 * key) is one fatal line at start, not a retry loop. And the client hears
 * why the server could not carry a connection.
 */

import assert from "node:assert/strict";
import { connect, ImmortalError, TunnelServer } from "../mod.ts";
import { spawnCli } from "./_cli_process.ts";
import { freePort } from "./_helpers.ts";
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
        `Tunnel server unreachable \\(cannot connect to 127\\.0\\.0\\.1:${serverPort}: Connection refused`,
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
        /does not speak the immortal protocol \(unknown frame type 0x48\): is it an immortal server\?$/m,
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
    ],
  );
  try {
    await client.waitFor(/Tunnel server unreachable|still not available/, "the first retry");
    assert.equal(await client.stop(), 0);
    const retries = client.log.split("\n").filter((line) => /still not available/.test(line));
    assert.ok(retries.length <= 2, `${retries.length} retries logged at once:\n${client.log}`);
  } finally {
    await client.stop();
    await Deno.remove(path);
  }
});
