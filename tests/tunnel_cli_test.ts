import assert from "node:assert/strict";

const CLI = new URL("../cli/tunnel.ts", import.meta.url).pathname;

async function run(args: string[], permissions = ["--allow-net=127.0.0.1"]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, CLI, ...args],
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

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close();
  return port;
}

Deno.test("tunnel CLI: --help, and one clear line with a non-zero exit for every bad input", async () => {
  const help = await run(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /tunnel server <listenPort> <forwardHost> <forwardPort>/);
  assert.match(help.stdout, /tunnel client <listenPort> <serverHost> <serverPort>/);

  const cases: [string[], RegExp, number][] = [
    [[], /missing command/, 2],
    [["relay", "1", "h", "2"], /unknown command "relay"/, 2],
    [["server", "99999", "h", "22"], /<listenPort> must be a port number/, 2],
    [["server", "2000", "h"], /missing <forwardPort>/, 2],
    [["client", "2000", "127.0.0.1", "x"], /<serverPort> must be a port number/, 2],
    [["server", "2000", "h", "22", "--bogus"], /Unknown option '--bogus'/, 2],
    [["server", "2000", "h", "22", "--key-file", "/nonexistent/key"], /cannot read key file/, 2],
    [
      ["client", String(freePort()), "127.0.0.1", String(freePort())],
      /cannot reach the tunnel server/,
      1,
    ],
  ];
  for (const [args, message, code] of cases) {
    const result = await run(args, ["--allow-net=127.0.0.1", "--allow-read"]);
    assert.equal(result.code, code, `${args.join(" ")}: exit ${result.code}\n${result.stderr}`);
    assert.match(result.stderr, message);
    assert.doesNotMatch(result.stderr, /^\s+at /m, `stack trace for: ${args.join(" ")}`);
  }
});

Deno.test("tunnel CLI: a real session through server and client processes, then SIGTERM", async () => {
  const target = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const echo = (async () => {
    const conn = await target.accept();
    await conn.readable.pipeTo(conn.writable);
  })();
  const serverPort = freePort();
  const clientPort = freePort();
  const spawn = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net=127.0.0.1", CLI, ...args],
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
  const server = spawn([
    "server",
    String(serverPort),
    "127.0.0.1",
    String(target.addr.port),
    "--listen-host",
    "127.0.0.1",
    "--key",
    "k",
  ]);
  const serverLog = server.stderr.pipeThrough(new TextDecoderStream()).getReader();
  assert.match((await serverLog.read()).value!, /Tunnel server on 127.0.0.1:\d+/);
  const client = spawn([
    "client",
    String(clientPort),
    "127.0.0.1",
    String(serverPort),
    "--key",
    "k",
  ]);
  const clientLog = client.stderr.pipeThrough(new TextDecoderStream()).getReader();
  assert.match((await clientLog.read()).value!, /Tunnel client on 127.0.0.1:\d+/);

  const conn = await Deno.connect({ hostname: "127.0.0.1", port: clientPort });
  await conn.write(new TextEncoder().encode("through the tunnel"));
  await conn.closeWrite();
  const reply = await new Response(conn.readable).text();
  assert.equal(reply, "through the tunnel");
  await echo;
  target.close();

  for (const child of [client, server]) child.kill("SIGTERM");
  assert.equal((await client.status).code, 0);
  assert.equal((await server.status).code, 0);
  const rest = async (r: ReadableStreamDefaultReader<string>) => {
    let text = "";
    for (let c = await r.read(); !c.done; c = await r.read()) text += c.value;
    return text;
  };
  const [serverText, clientText] = await Promise.all([rest(serverLog), rest(clientLog)]);
  assert.match(serverText, /SIGTERM: closing the tunnel/);
  assert.match(clientText, /Tunnel [0-9a-f]{8} connected for local client/);
});
