// Relay load: many WebSocket nodes in many sessions against one relay process.
//
//   deno run --allow-net=127.0.0.1 --allow-run --allow-read bench/relay_load.ts
//
// Runs cli/relay.ts in its own process and a load generator in another (file
// descriptor limits raised to the hard limit with `ulimit -n` in bash). Reports: nodes connected
// and the relay's memory per node; deliveries per second at several offered
// rates (sessions of 10: each message reaches 9 nodes); p50/p99 delivery
// latency at 1,000 nodes.
import { delay } from "../lib/_util.ts";
import { freePort } from "../tests/_helpers.ts";

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

function startRelay(port: number) {
  const relay = new Deno.Command("bash", {
    args: [
      "-c",
      `ulimit -n "$(ulimit -Hn)" && exec "${deno}" run --allow-net=127.0.0.1:${port} cli/relay.ts --hostname 127.0.0.1 --port ${port} --max-nodes 100000 --max-sessions 100000 --rate 100000 --log-level warning`,
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

async function run(nodes: number, size: number, rates: number[], seconds: number) {
  const port = freePort();
  const relay = startRelay(port);
  await waitForPort(port);
  const idle = await rssKiB(relay.pid);
  const worker = new Deno.Command("bash", {
    args: [
      "-c",
      `ulimit -n "$(ulimit -Hn)" && exec "${deno}" run --allow-net=127.0.0.1:${port} bench/_relay_load_worker.ts http://127.0.0.1:${port} ${nodes} ${size} ${
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
        result.relayRssMiB = (await rssKiB(relay.pid)) / 1024;
        result.perNodeKiB = ((await rssKiB(relay.pid)) - idle) / nodes;
      }
      console.error(JSON.stringify(result));
      results.push(result);
    }
  }
  await worker.status;
  relay.kill("SIGTERM");
  await relay.status;
  return results;
}

const big = await run(10_000, 10, [10_000, 25_000, 40_000], 5);
const small = await run(1_000, 10, [1_000, 5_000], 5);
const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
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
  for (const r of results.filter((r) => r.phase === "load")) {
    console.log(
      `| ${fmt(nodes)} | ${fmt(r.sentPerSecond)} | ${fmt(r.expectedPerSecond)} | ${
        fmt(r.deliveriesPerSecond)
      } | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} |`,
    );
  }
}
