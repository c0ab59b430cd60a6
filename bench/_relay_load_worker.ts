// Load generator for bench/relay_load.ts: many WebSocket nodes, then paced
// senders. Prints one JSON line per phase.
//
// The nodes speak WebSocket over raw TCP with a minimal client of our own
// (handshake, masked text frames out, frame headers scanned in): the relay is
// what is measured, and a generator that builds an event object per message
// saturated its core long before the relay did (profiled: the relay sat ~80%
// idle behind Deno's WebSocket client).
//
// Args: url[,url...] nodes sessionSize rate1,rate2,... seconds (node i joins
// through url i mod the number of urls).
import {
  BatchWriter,
  clientTextFrame,
  frameAt,
  readServerFrames,
  upgradeRequest,
} from "./_ws_client.ts";

const [urlsArg, nodesArg, sizeArg, ratesArg, secondsArg] = Deno.args;
const URLS = urlsArg.split(",").map((url) => new URL(url));
const NODES = Number(nodesArg);
const SIZE = Number(sizeArg);
const RATES = ratesArg.split(",").map(Number);
const SECONDS = Number(secondsArg);
const decoder = new TextDecoder();

let delivered = 0;
let latencies: number[] = [];
let sampleEvery = 1;
const PONG = clientTextFrame('{"t":"pong"}');

class Node extends BatchWriter {}

/** Scans server frames in `data` (from `start`); returns where an incomplete frame begins. */
function scan(node: Node, data: Uint8Array, onWelcome: () => void): number {
  let at = 0;
  for (let f; (f = frameAt(data, at)) !== null;) {
    const { start: p, end } = f;
    const len = end - p;
    // Frames start with {"t":" — the next byte tells the type.
    const kind = data[p + 6];
    if (kind === 0x6d /* m: msg */) {
      delivered++;
      if (delivered % sampleEvery === 0) {
        const text = decoder.decode(data.subarray(p, p + len));
        const at = text.lastIndexOf('"text":"') + 8;
        const ts = Number(text.slice(at, text.indexOf('"', at)));
        latencies.push(performance.timeOrigin + performance.now() - ts);
      }
    } else if (kind === 0x70 && data[p + 7] === 0x69 /* pi: ping */) {
      node.send(PONG);
    } else if (kind === 0x77 /* w: welcome */) {
      onWelcome();
    }
    at = end;
  }
  return at;
}

async function open(i: number): Promise<Node> {
  const { hostname, port } = URLS[i % URLS.length];
  const conn = await Deno.connect({ hostname, port: Number(port) });
  conn.setNoDelay(true);
  const node = new Node(conn);
  node.send(upgradeRequest("/relay/ws", `${hostname}:${port}`));
  const session = `s${Math.floor(i / SIZE)}`;
  node.send(clientTextFrame(JSON.stringify({ t: "hello", session, nickname: `n${i % SIZE}` })));
  const welcomed = Promise.withResolvers<Node>();
  readServerFrames(conn, () => true, (data) => scan(node, data, () => welcomed.resolve(node)));
  return welcomed.promise;
}

const started = performance.now();
const nodes: Node[] = [];
for (let i = 0; i < NODES; i += 200) {
  const batch = [];
  for (let j = i; j < Math.min(NODES, i + 200); j++) batch.push(open(j));
  nodes.push(...await Promise.all(batch));
}
console.log(JSON.stringify({
  phase: "connected",
  nodes: nodes.length,
  seconds: (performance.now() - started) / 1000,
}));

const sessions = Math.ceil(NODES / SIZE);
for (const rate of RATES) {
  // `rate` messages per second in total, from the first node of each session in
  // turn; each reaches SIZE - 1 others.
  delivered = 0;
  latencies = [];
  sampleEvery = Math.max(1, Math.round(rate * (SIZE - 1) / 20_000));
  let sent = 0;
  let next = 0;
  const t0 = performance.now();
  const tick = setInterval(() => {
    const due = Math.floor((performance.now() - t0) / 1000 * rate) - sent;
    for (let k = 0; k < due; k++) {
      // The send time rides in the text: the relay passes on only what a message is.
      nodes[(next++ % sessions) * SIZE].send(
        clientTextFrame(`{"t":"msg","text":"${performance.timeOrigin + performance.now()}"}`),
      );
    }
    sent += Math.max(0, due);
  }, 5);
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  clearInterval(tick);
  const elapsed = (performance.now() - t0) / 1000;
  await new Promise((r) => setTimeout(r, 500)); // the tail, for the latency sample
  latencies.sort((a, b) => a - b);
  const pct = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))];
  console.log(JSON.stringify({
    phase: "load",
    rate,
    sentPerSecond: sent / elapsed,
    deliveriesPerSecond: delivered / (elapsed + 0.5),
    expectedPerSecond: sent * (SIZE - 1) / elapsed,
    p50: pct(0.5),
    p99: pct(0.99),
  }));
}
for (const node of nodes) node.conn.close();
Deno.exit(0);
