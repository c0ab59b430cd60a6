// How long an application waiting for a reply is held up when the relay
// between two nodes restarts. Two RelayNodes (default settings) of one relay
// run an immortal session over relay pipes (`connectTo`/`listen`, default
// session settings); the client sends 8 bytes and waits for their echo, one
// at a time, while the relay is shut down and, `--down` ms later, served again
// on the same port, `--restarts` times, `--gap` s after the previous resume.
//
//   deno run --allow-net=127.0.0.1 bench/relay_restart_stall.ts \
//     [--restarts=8] [--gap=1] [--down=0]
//
// Per restart: the stall (the longest round trip in flight across it: what
// the application waited), when both nodes were back (the later "connected"
// state of the two), and when the session resumed (its `resumed` event). The
// gap between the last two is what the session itself adds once both nodes
// are back: it cannot resume before.
//
// Relay, nodes and echo share one process: the figures are resume costs in
// milliseconds, far above what sharing one event loop adds. Only API that
// also exists at commit ab9f8f1 is used, so the same file measures the code
// before and after pipe dials waited for their node.
import {
  type ImmortalConn,
  RelayNode,
  type RelayServer,
  type ResumedEvent,
  serveRelay,
} from "../mod.ts";

/** `--name=value` from the command line, or `fallback`. */
function option(name: string, fallback: string): string {
  const prefix = `--${name}=`;
  return Deno.args.find((arg) => arg.startsWith(prefix))?.slice(prefix.length) ?? fallback;
}

const RESTARTS = Number(option("restarts", "8"));
const GAP_MS = Number(option("gap", "1")) * 1000;
const DOWN_MS = Number(option("down", "0"));
const SECRET = "bench";
const KEY = "bench-key";

function serve(port: number): RelayServer {
  return serveRelay({ hostname: "127.0.0.1", port, secret: SECRET, onListen() {} });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Reads exactly `buffer.length` bytes: a read may return part of a reply. */
async function readFull(conn: ImmortalConn, buffer: Uint8Array): Promise<void> {
  for (let filled = 0; filled < buffer.length;) {
    const n = await conn.read(buffer.subarray(filled));
    if (n === null) throw new Error("the session ended in the middle of a reply");
    filled += n;
  }
}

let relay = serve(0);
const port = relay.addr.port;
const url = `http://127.0.0.1:${port}`;
const join = (nickname: string) =>
  RelayNode.connect(url, { session: "bench", nickname, secret: SECRET });
const lab = await join("lab");
const listener = lab.listen({ key: KEY });
const laptop = await join("laptop");
const client = await laptop.connectTo("lab", { key: KEY });
const server = await listener.accept();
const echoing = (async () => {
  const buffer = new Uint8Array(4096);
  try {
    for (let n; (n = await server.read(buffer)) !== null;) {
      await server.write(buffer.subarray(0, n));
    }
  } catch {
    // Closed at the end.
  }
})();

// When each node is connected again, and when the session resumed.
const backAt = new Map<RelayNode, number>();
for (const node of [lab, laptop]) {
  (async () => {
    for await (const event of node.events) {
      if (event.type === "state" && event.state === "connected") {
        backAt.set(node, performance.now());
      }
    }
  })();
}
let downtime = 0;
let resumedAt = 0;
client.addEventListener("resumed", (event) => {
  downtime = (event as ResumedEvent).downtimeMs;
  resumedAt = performance.now();
});

// Round trips, one at a time, each with its start and end.
let running = true;
const trips: { start: number; end: number }[] = [];
const pinging = (async () => {
  const request = new Uint8Array(8);
  const reply = new Uint8Array(8);
  while (running) {
    const start = performance.now();
    await client.write(request);
    await readFull(client, reply);
    trips.push({ start, end: performance.now() });
  }
})();

const rows: { stall: number; nodeBack: number; resumed: number; downtime: number }[] = [];
await new Promise((resolve) => setTimeout(resolve, GAP_MS));
for (let i = 0; i < RESTARTS; i++) {
  resumedAt = 0;
  const restartAt = performance.now();
  await relay.shutdown();
  if (DOWN_MS > 0) await new Promise((resolve) => setTimeout(resolve, DOWN_MS));
  relay = serve(port);
  // Until the session resumed and a round trip completed after it.
  while (resumedAt === 0 || (trips.at(-1)?.end ?? 0) < resumedAt) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const across = trips.filter((t) => t.end >= restartAt);
  rows.push({
    stall: Math.max(...across.map((t) => t.end - Math.max(t.start, restartAt))),
    nodeBack: Math.max(backAt.get(lab)!, backAt.get(laptop)!) - restartAt,
    resumed: resumedAt - restartAt,
    downtime,
  });
  await new Promise((resolve) => setTimeout(resolve, GAP_MS));
}
running = false;
await pinging;

const fmt = (ms: number) => ms.toFixed(0).padStart(6);
console.log("restart  stall ms  nodes back ms  session resumed ms  downtime ms");
rows.forEach((r, i) =>
  console.log(
    `${String(i + 1).padStart(7)}  ${fmt(r.stall)}    ${fmt(r.nodeBack)}        ${
      fmt(r.resumed)
    }          ${fmt(r.downtime)}`,
  )
);
const stalls = rows.map((r) => r.stall);
const after = rows.map((r) => r.resumed - r.nodeBack);
console.log(
  `stall median ${median(stalls).toFixed(0)} ms, worst ${Math.max(...stalls).toFixed(0)} ms; ` +
    `session resumed after both nodes were back: median ${median(after).toFixed(0)} ms, worst ${
      Math.max(...after).toFixed(0)
    } ms`,
);

client.close();
server.close();
listener.close();
await echoing;
await laptop.close();
await lab.close();
await relay.shutdown();
