// Relay load: many WebSocket nodes in many sessions against one relay process.
//
//   deno run --allow-net=127.0.0.1 --allow-run --allow-read bench/relay_load.ts
//   deno run --allow-net=127.0.0.1 --allow-run --allow-read --allow-write=/tmp bench/relay_load.ts --cluster
//
// Runs cli/relay.ts in its own process and a load generator in another (file
// descriptor limits raised to the hard limit with `ulimit -n` in bash). Reports: nodes connected
// and the relay's memory per node; deliveries per second at several offered
// rates (sessions of 10: each message reaches 9 nodes); p50/p99 delivery
// latency at 1,000 nodes. With --cluster: 1,000 nodes against one in-memory
// relay, one relay on Redis, and two relays on Redis (a real redis-server on
// loopback), same rates, same run.
import { delay } from "../lib/_util.ts";
import { freePort } from "../tests/_helpers.ts";
import { startRedis } from "../tests/_redis.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const deno = Deno.execPath();

async function rssKiB(pid: number): Promise<number> {
  const out = await new Deno.Command("ps", {
    args: ["-o", "rss=", "-p", String(pid)],
    stdout: "piped",
  })
    .output();
  return Number(new TextDecoder().decode(out.stdout).trim());
}

/** A relay process on `port`; with `redis`, one of a cluster sharing its sessions there. */
function startRelay(port: number, redis?: { url: string; port: number }) {
  // In a cluster a relay also listens, on a port of its own choosing, for the
  // pipes other relays hand over to it.
  const net = redis ? "127.0.0.1" : `127.0.0.1:${port}`;
  const flags = `--allow-net=${net}`;
  const relay = new Deno.Command("bash", {
    args: [
      "-c",
      `ulimit -n "$(ulimit -Hn)" && exec "${deno}" run ${flags} cli/relay.ts --open --hostname 127.0.0.1 --port ${port} --max-nodes 100000 --max-sessions 100000 --rate 100000 --log-level warning${
        redis ? ` --redis ${redis.url}` : ""
      }`,
    ],
    cwd: ROOT,
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  return relay;
}

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await delay(50);
    }
  }
  throw new Error("the relay did not start");
}

/**
 * `nodes` nodes in sessions of `size` against `relays` relay processes
 * (node i on relay i mod relays, so with two, every session spans both),
 * sharing Redis if given; one JSON result per phase.
 */
async function run(
  nodes: number,
  size: number,
  rates: number[],
  seconds: number,
  cluster: { relays: number; redis?: { url: string; port: number } } = { relays: 1 },
) {
  const ports = Array.from({ length: cluster.relays }, () => freePort());
  const relays = ports.map((port) => startRelay(port, cluster.redis));
  try {
    await Promise.all(ports.map(waitForPort));
  } catch (error) {
    // Those that did start are stopped, not left running.
    for (const relay of relays) {
      try {
        relay.kill("SIGTERM");
      } catch {
        // Exited already.
      }
      await relay.status;
    }
    throw error;
  }
  const rss = async () =>
    (await Promise.all(relays.map((r) => rssKiB(r.pid)))).reduce((a, b) => a + b);
  const idle = await rss();
  const urls = ports.map((port) => `http://127.0.0.1:${port}`).join(",");
  const worker = new Deno.Command("bash", {
    args: [
      "-c",
      `ulimit -n "$(ulimit -Hn)" && exec "${deno}" run --allow-net=127.0.0.1 bench/_relay_load_worker.ts ${urls} ${nodes} ${size} ${
        rates.join(",")
      } ${seconds}`,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const results = [];
  let buffered = "";
  for await (const text of worker.stdout.pipeThrough(new TextDecoderStream())) {
    buffered += text;
    const lines = buffered.split("\n");
    buffered = lines.pop()!;
    for (const line of lines) {
      const result = JSON.parse(line);
      if (result.phase === "connected") {
        const now = await rss();
        result.relayRssMiB = now / 1024;
        result.perNodeKiB = (now - idle) / nodes;
      }
      console.error(JSON.stringify(result));
      results.push(result);
    }
  }
  await worker.status;
  for (const relay of relays) {
    relay.kill("SIGTERM");
    await relay.status;
  }
  return results;
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const row = (label: string, r: Record<string, number>) =>
  `| ${label} | ${fmt(r.sentPerSecond)} | ${fmt(r.expectedPerSecond)} | ${
    fmt(r.deliveriesPerSecond)
  } | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} |`;

if (Deno.args.includes("--cluster")) {
  let failed = false;
  try {
    await compareClusters();
  } catch (error) {
    console.error(`relay_load: ${(error as Error).message}`);
    failed = true;
  }
  Deno.exit(failed ? 1 : 0);
}

/** In memory, one relay on Redis, two relays on Redis: same nodes, same rates, same run. */
async function compareClusters(): Promise<void> {
  // Stopped when this returns or throws (Deno.exit would skip it: it leaked a redis-server once).
  await using redis = await startRedis({ persist: false });
  const rates = [1_000, 3_000, 5_000, 7_000];
  const configs = [
    ["1 relay, in memory", { relays: 1 }],
    ["1 relay on Redis", { relays: 1, redis }],
    ["2 relays on Redis", { relays: 2, redis }],
  ] as const;
  const all = [];
  for (const [label, cluster] of configs) {
    all.push([label, await run(1_000, 10, rates, 5, cluster)] as const);
  }
  console.log(
    "| relays | offered msg/s | deliveries/s offered | deliveries/s done | p50 ms | p99 ms |",
  );
  console.log(
    "| ------ | ------------- | -------------------- | ----------------- | ------ | ------ |",
  );
  for (const [label, results] of all) {
    for (const r of results.filter((r) => r.phase === "load")) console.log(row(label, r));
  }
  console.log("");
  for (const [label, results] of all) {
    console.log(
      `${label}: 1,000 nodes, RSS ${results[0].relayRssMiB.toFixed(0)} MiB in all, ${
        results[0].perNodeKiB.toFixed(1)
      } KiB per node`,
    );
  }
}

const big = await run(10_000, 10, [10_000, 25_000, 40_000], 5);
const small = await run(1_000, 10, [1_000, 5_000], 5);
console.log(
  `10,000 nodes: connected ${big[0].nodes} in ${big[0].seconds.toFixed(1)} s; relay RSS ${
    big[0].relayRssMiB.toFixed(0)
  } MiB, ${big[0].perNodeKiB.toFixed(1)} KiB per node\n`,
);
console.log(
  "| nodes | offered msg/s | deliveries/s (offered) | deliveries/s (done) | p50 ms | p99 ms |",
);
console.log(
  "| ----- | ------------- | ---------------------- | ------------------- | ------ | ------ |",
);
for (const [nodes, results] of [[10_000, big], [1_000, small]] as const) {
  for (const r of results.filter((r) => r.phase === "load")) console.log(row(fmt(nodes), r));
}
