// Throughput of tunnels through a relay against the direct tunnel, same run:
// iperf3 through each path (issue #11: through the relay >= 0.5x direct;
// encryption costs <= 30%).
//
//   deno run --allow-net=127.0.0.1 --allow-run --allow-read bench/relay_tunnel.ts [seconds] [--delay=MS] [--cluster]
//
// Every tunnel end and the relay run in their own processes, as deployed:
// - direct: cli/tunnel.ts server + client over TCP, plain and --encrypt;
// - through the relay: cli/relay.ts, and both tunnel ends joined to it,
//   each over WebSocket or HTTP-streaming links, sessions plain (library
//   setting, for the comparison) or encrypted (what the CLI always does).
import { freePort } from "../tests/_helpers.ts";
import { loadBalancer } from "../tests/_load_balancer.ts";
import { delayProxy } from "./_delay_proxy.ts";
import { iperf, spawn, stopAll, waitForPort } from "./_processes.ts";

const args = Deno.args.filter((arg) => !arg.startsWith("--"));
const SECONDS = Number(args[0] ?? "5");
/** `--delay=MS`: every path's link crosses a proxy that delays it MS each way (a long path). */
const DELAY_MS = Number(Deno.args.find((arg) => arg.startsWith("--delay="))?.slice(8) ?? "0");
if (!Number.isInteger(SECONDS) || SECONDS < 1 || !Number.isInteger(DELAY_MS) || DELAY_MS < 0) {
  console.error("usage: relay_tunnel.ts [seconds] [--delay=MS] [--cluster]");
  Deno.exit(2);
}
/**
 * `--cluster`: the relay paths again through two relays sharing sessions on
 * Redis, behind a balancer that sends each connection to the next relay in
 * turn (no stickiness: an end's POSTs reach either relay).
 */
const CLUSTER = Deno.args.includes("--cluster");
const proxies: Deno.Listener[] = [];

/** `port` itself, or with --delay a delaying proxy's port in front of it. */
function across(port: number): number {
  if (DELAY_MS === 0) return port;
  const proxyPort = freePort();
  proxies.push(delayProxy(proxyPort, port, DELAY_MS));
  return proxyPort;
}
const ROOT = new URL("..", import.meta.url).pathname;
const deno = Deno.execPath();

/** Waits for a child's first stdout line ("ready"). */
async function ready(child: Deno.ChildProcess): Promise<void> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const { value } = await reader.read();
  reader.releaseLock();
  if (!value?.includes("ready")) throw new Error(`not ready: ${value}`);
}

function spawnPiped(args: string[]): Deno.ChildProcess {
  return new Deno.Command(deno, { args, stdout: "piped", stderr: "inherit" }).spawn();
}

function quietChild(args: string[]): Deno.ChildProcess {
  return new Deno.Command(deno, { args, stdout: "null", stderr: "inherit" }).spawn();
}

async function direct(target: number, encrypt: boolean): Promise<number> {
  const serverPort = freePort();
  const clientPort = freePort();
  const quiet = ["--log-level", "warning", "--key", "bench-key", ...(encrypt ? ["--encrypt"] : [])];
  ends.push(quietChild([
    "run",
    `--allow-net=127.0.0.1`,
    `${ROOT}cli/tunnel.ts`,
    "server",
    String(serverPort),
    "127.0.0.1",
    String(target),
    "--listen-host",
    "127.0.0.1",
    ...quiet,
  ]));
  await waitForPort(serverPort);
  ends.push(quietChild([
    "run",
    `--allow-net=127.0.0.1`,
    `${ROOT}cli/tunnel.ts`,
    "client",
    String(clientPort),
    "127.0.0.1",
    String(across(serverPort)),
    ...quiet,
  ]));
  await waitForPort(clientPort);
  return clientPort;
}

const ends: Deno.ChildProcess[] = [];
let sessions = 0;

async function viaRelay(
  target: number,
  relayUrl: string,
  encrypt: boolean,
  transport: "websocket" | "http",
): Promise<number> {
  const clientPort = freePort();
  const script = `${ROOT}bench/_relay_tunnel_end.ts`;
  const mode = encrypt ? "encrypt" : "plain";
  // A session of its own per path: the last path's nicknames may still be
  // held for a while (to be reclaimed), and its ends must not be dialed.
  const session = `bench-${++sessions}`;
  const server = spawnPiped([
    "run",
    "--allow-net=127.0.0.1",
    script,
    "server",
    relayUrl,
    String(target),
    mode,
    transport,
    session,
  ]);
  ends.push(server);
  await ready(server);
  const client = spawnPiped([
    "run",
    "--allow-net=127.0.0.1",
    script,
    "client",
    relayUrl,
    String(clientPort),
    mode,
    transport,
    session,
  ]);
  ends.push(client);
  await ready(client);
  return clientPort;
}

async function stopEnds(): Promise<void> {
  for (const child of ends.splice(0)) {
    child.kill("SIGTERM");
    // An end whose link broke may hang in its graceful close: it does not hold up the run.
    const stuck = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited meanwhile.
      }
    }, 5000);
    await child.status;
    clearTimeout(stuck);
    try {
      await child.stdout.cancel();
    } catch {
      // Not piped, or read by `ready`.
    }
  }
}

/** A relay process on `port`; with `redis`, one of a cluster. */
function spawnRelay(port: number, redis?: string): void {
  spawn(deno, [
    "run",
    redis ? "--allow-net=127.0.0.1" : `--allow-net=127.0.0.1:${port}`,
    `${ROOT}cli/relay.ts`,
    "--open",
    "--hostname",
    "127.0.0.1",
    "--port",
    String(port),
    "--log-level",
    "warning",
    ...(redis ? ["--redis", redis] : []),
  ]);
}

/** Two relays on a fresh redis-server behind a round-robin balancer; the balancer's URL. */
async function startCluster(): Promise<{ url: string; balancer: AsyncDisposable }> {
  const redisPort = freePort();
  spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", ""]);
  await waitForPort(redisPort);
  const ports = [freePort(), freePort()];
  for (const port of ports) spawnRelay(port, `redis://127.0.0.1:${redisPort}`);
  await Promise.all(ports.map(waitForPort));
  const balancer = loadBalancer(ports);
  return { url: `http://127.0.0.1:${across(balancer.port)}`, balancer };
}

async function main(): Promise<void> {
  const iperfPort = freePort();
  spawn("iperf3", ["-s", "-B", "127.0.0.1", "-p", String(iperfPort)]);
  const relayPort = freePort();
  spawnRelay(relayPort);
  await Promise.all([waitForPort(iperfPort), waitForPort(relayPort)]);
  let cluster: { url: string; balancer: AsyncDisposable } | null = null;
  const relayUrl = `http://127.0.0.1:${across(relayPort)}`;
  const rows: [string, number][] = [];
  const measure = async (name: string, start: () => Promise<number>) => {
    const port = await start();
    const gbits = await iperf(port, SECONDS);
    rows.push([name, gbits]);
    console.log(`${name.padEnd(44)} ${gbits.toFixed(2)} Gbit/s`);
    await stopEnds();
  };
  try {
    console.log(
      `iperf3 ${SECONDS} s per path${DELAY_MS ? `, links delayed ${DELAY_MS} ms each way` : ""}\n`,
    );
    await measure("direct tunnel, plain", () => direct(iperfPort, false));
    await measure("direct tunnel, --encrypt", () => direct(iperfPort, true));
    /** The relay paths through `url`: which link transports, which sessions. */
    const relayPaths: ["WebSocket" | "HTTP-streaming", boolean][] = [
      ["WebSocket", false],
      ["WebSocket", true],
      ["HTTP-streaming", false],
      ["HTTP-streaming", true],
    ];
    const throughRelay = async (label: string, url: string, paths = relayPaths) => {
      for (const [links, encrypt] of paths) {
        await measure(
          `${label}, ${links} links, ${encrypt ? "encrypted" : "plain"}`,
          () => viaRelay(iperfPort, url, encrypt, links === "WebSocket" ? "websocket" : "http"),
        );
      }
    };
    await throughRelay("relay tunnel", relayUrl);
    if (CLUSTER) {
      cluster = await startCluster();
      const plainOnly = relayPaths.filter(([, encrypt]) => !encrypt);
      await throughRelay("2 relays, round robin", cluster.url, plainOnly);
    }
  } finally {
    await stopEnds();
    await cluster?.balancer[Symbol.asyncDispose]();
    await stopAll();
    for (const proxy of proxies) proxy.close();
  }
  const base = rows[0][1];
  console.log("\n| path | Gbit/s | vs direct plain |\n| --- | --- | --- |");
  for (const [name, gbits] of rows) {
    console.log(`| ${name} | ${gbits.toFixed(2)} | ${(gbits / base).toFixed(2)} |`);
  }
}

await main();
