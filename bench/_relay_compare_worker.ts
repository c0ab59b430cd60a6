// Load generator for bench/relay_compare.ts: many WebSocket nodes in rooms,
// one sender per room, speaking either our relay protocol or Socket.IO's
// (Engine.IO v4 / Socket.IO v5 over WebSocket). Prints one JSON line per event.
//
//   deno run --allow-net=127.0.0.1 bench/_relay_compare_worker.ts '<config JSON>'
//
// (then a newline on stdin after each event line, see proceed()).
//
// Config: {protocol: "immortal" | "socketio", port, nodes, size, steps:
// [offered deliveries/s, ...], seconds, warmup, drain, stopBelow}: after a step
// that delivered less than `stopBelow` of its messages, the higher steps are
// skipped.
//
// Like bench/_relay_load_worker.ts, the nodes speak WebSocket over raw TCP with
// a minimal client of ours (handshake, masked text frames out with an all-zero
// mask, frame headers scanned in), so that the server, not the generator, is
// what is measured. Everything but the wire format is shared by both
// protocols: the pacing, the message text, and the receiving side's parsing,
// counting and clock.
//
// Message text: "<step> <seq> <sent µs>" — the step it belongs to, the
// sender's number for it in that step (0, 1, ...), and performance.now() in
// microseconds at the send. Both servers carry it as the last string of the
// frame they deliver (ours `{"t":"msg","from":…,"offset":…,"text":"…"}`,
// Socket.IO's `42["msg","…"]`), so one byte-level parser reads both. The
// receive time is taken once per TCP read (every frame of that read arrived at
// once), so latency = read time - send time, on one clock.
//
// Accounting, per step: each receiver keeps a bitmap of the seqs it got from
// its room's sender; a seq seen twice is a duplicate, a message of an earlier
// step is late (it was counted lost there), and after the send window the
// generator waits (at most `drain` seconds, or 1 s without progress) until
// every expected delivery (9 per message in rooms of 10) has arrived. What has
// not arrived by then is lost.

import {
  BatchWriter,
  clientTextFrame,
  frameAt,
  readServerFrames,
  upgradeRequest,
} from "./_ws_client.ts";

interface Config {
  protocol: "immortal" | "socketio";
  port: number;
  nodes: number;
  size: number;
  steps: number[];
  seconds: number;
  warmup: number;
  drain: number;
  stopBelow: number;
}

const cfg: Config = JSON.parse(Deno.args[0] ?? "null");
if (
  !cfg || (cfg.protocol !== "immortal" && cfg.protocol !== "socketio") || !(cfg.nodes > 0) ||
  !(cfg.size >= 2) || !Array.isArray(cfg.steps) || !(cfg.seconds > 0)
) {
  console.error("usage: _relay_compare_worker.ts '<config JSON>' (started by relay_compare.ts)");
  Deno.exit(2);
}
const SIO = cfg.protocol === "socketio";
const N = cfg.nodes;
const SIZE = cfg.size;
const ROOMS = Math.ceil(N / SIZE);
const decoder = new TextDecoder();
const emit = (o: Record<string, unknown>) => console.log(JSON.stringify(o));

// After each event line but "stopped" and "done", the worker waits for a line
// on stdin: the orchestrator reads the processes' CPU and memory first, so its
// samples bound exactly the step (and nothing it does lands inside a step).
const stdin = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
let stdinText = "";
async function proceed(): Promise<void> {
  const timer = setTimeout(() => {
    console.error("worker: no word from relay_compare.ts in 30 s");
    Deno.exit(4);
  }, 30_000);
  while (!stdinText.includes("\n")) {
    const { value, done } = await stdin.read();
    if (done) Deno.exit(4); // relay_compare.ts is gone
    stdinText += value;
  }
  clearTimeout(timer);
  stdinText = stdinText.slice(stdinText.indexOf("\n") + 1);
}

// Whole run bounded: connect, warm-up, steps with their drains, and slack.
const budget = 180 + cfg.warmup + cfg.drain + 3 +
  cfg.steps.length * (cfg.seconds + cfg.drain + 3);
setTimeout(() => {
  console.error(`worker: still running after ${budget} s, giving up`);
  Deno.exit(3);
}, budget * 1000);

const PONG = SIO ? clientTextFrame("3") : clientTextFrame('{"t":"pong"}');
const message = SIO
  ? (text: string) => clientTextFrame(`42["msg","${text}"]`)
  : (text: string) => clientTextFrame(`{"t":"msg","text":"${text}"}`);

// --- Per-step accounting (indexed by node) --------------------------------
let step = -1; // 0 is the warm-up, 1.. the steps
const sentBy = new Uint32Array(ROOMS);
const bits: (Uint8Array | undefined)[] = new Array(N);
const unique = new Uint32Array(N);
let uniqueTotal = 0;
let duplicates = 0;
let late = 0;
let unexpected = 0; // a message to a sender, or unparseable text
let lastDelivery = 0;
let latencies = new Float64Array(1 << 16);
let latencyCount = 0;
let closed = 0;
let serverErrors = 0;

const receivers = (room: number) => Math.min(N, (room + 1) * SIZE) - room * SIZE - 1;

function record(node: number, data: Uint8Array, p: number, len: number, now: number): void {
  // The text is the frame's last JSON string: the frame ends `"}` or `"]`.
  const q = p + len - 2;
  if (data[q] !== 0x22) {
    unexpected++;
    return;
  }
  let o = q - 1;
  while (o > p && data[o] !== 0x22) o--;
  let i = o + 1;
  let s = 0;
  for (; i < q && data[i] !== 0x20; i++) s = s * 10 + data[i] - 48;
  let seq = 0;
  for (i++; i < q && data[i] !== 0x20; i++) seq = seq * 10 + data[i] - 48;
  let ts = 0;
  for (i++; i < q; i++) ts = ts * 10 + data[i] - 48;
  if (s !== step) {
    late++;
    return;
  }
  if (node % SIZE === 0) {
    unexpected++;
    return;
  }
  let map = bits[node];
  if (map === undefined || seq >> 3 >= map.length) {
    const bigger = new Uint8Array(Math.max(64, (seq >> 3) * 2));
    if (map) bigger.set(map);
    map = bits[node] = bigger;
  }
  const bit = 1 << (seq & 7);
  if (map[seq >> 3] & bit) {
    duplicates++;
    return;
  }
  map[seq >> 3] |= bit;
  unique[node]++;
  uniqueTotal++;
  lastDelivery = now;
  if (latencyCount === latencies.length) {
    const bigger = new Float64Array(latencies.length * 2);
    bigger.set(latencies);
    latencies = bigger;
  }
  latencies[latencyCount++] = now - ts / 1000;
}

class Node extends BatchWriter {
  constructor(readonly index: number, conn: Deno.TcpConn) {
    super(conn);
  }
}

/**
 * Scans the server's frames in `data`; returns where an incomplete frame
 * begins. `ready` is called on our `welcome` or Socket.IO's CONNECT answer.
 */
function scan(node: Node, data: Uint8Array, now: number, ready: (error?: string) => void): number {
  let at = 0;
  for (let f; (f = frameAt(data, at)) !== null;) {
    const { opcode, start: p, end } = f;
    const len = end - p;
    at = end;
    if (opcode === 0x8) {
      const code = len >= 2 ? (data[p] << 8) | data[p + 1] : 1005;
      ready(`closed by the server: ${code} ${decoder.decode(data.subarray(p + 2, p + len))}`);
      continue;
    }
    if (opcode !== 0x1 || len === 0) continue;
    if (SIO) {
      const type = data[p];
      if (type === 0x34 /* 4: message */) {
        const sio = data[p + 1];
        if (sio === 0x32 /* 2: EVENT */) record(node.index, data, p, len, now);
        else if (sio === 0x30 /* 0: CONNECT */) ready();
        else ready(`socket.io: ${decoder.decode(data.subarray(p, p + len))}`);
      } else if (type === 0x32 /* 2: ping */) {
        node.send(PONG);
      } else if (type === 0x30 /* 0: open */) {
        // Socket.IO CONNECT to the main namespace, with the room as auth.
        node.send(clientTextFrame(`40{"room":"r${Math.floor(node.index / SIZE)}"}`));
      } else if (type === 0x31 /* 1: close */) {
        ready("engine.io: close packet");
      }
    } else {
      // Frames start with {"t":" — the next byte tells the type.
      const kind = data[p + 6];
      if (kind === 0x6d /* m: msg */) {
        record(node.index, data, p, len, now);
      } else if (kind === 0x70 && data[p + 7] === 0x69 /* pi: ping */) {
        node.send(PONG);
      } else if (kind === 0x77 /* w: welcome */) {
        ready();
      } else if (kind === 0x65 /* e: error */) {
        if (serverErrors++ < 5) {
          console.error(`relay: ${decoder.decode(data.subarray(p, p + len))}`);
        }
      }
    }
  }
  return at;
}

async function open(i: number): Promise<Node> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: cfg.port });
  conn.setNoDelay(true);
  const node = new Node(i, conn);
  const path = SIO ? "/socket.io/?EIO=4&transport=websocket" : "/relay/ws";
  node.send(upgradeRequest(path, `127.0.0.1:${cfg.port}`));
  if (!SIO) {
    const session = `s${Math.floor(i / SIZE)}`;
    node.send(clientTextFrame(JSON.stringify({ t: "hello", session, nickname: `n${i % SIZE}` })));
  }
  const joined = Promise.withResolvers<Node>();
  let isReady = false;
  const ready = (error?: string) => {
    if (error === undefined && !isReady) {
      isReady = true;
      joined.resolve(node);
    } else if (error !== undefined) {
      if (isReady && !node.closed && closed++ < 5) console.error(`node ${i}: ${error}`);
      node.closed = true;
      joined.reject(new Error(`node ${i}: ${error}`));
    }
  };
  (async () => {
    await readServerFrames(
      conn,
      (status) => {
        if (status.startsWith("HTTP/1.1 101")) return true;
        ready(`no upgrade: ${status}`);
        return false;
      },
      (data, now) => scan(node, data, now, ready),
    );
    ready("connection ended");
  })();
  const timer = setTimeout(() => ready("no welcome within 20 s"), 20_000);
  try {
    return await joined.promise;
  } finally {
    clearTimeout(timer);
  }
}

const started = performance.now();
const nodes: Node[] = [];
try {
  for (let i = 0; i < N; i += 200) {
    const batch = [];
    for (let j = i; j < Math.min(N, i + 200); j++) batch.push(open(j));
    nodes.push(...await Promise.all(batch));
  }
} catch (error) {
  console.error(`worker: connecting failed: ${(error as Error).message}`);
  Deno.exit(1);
}
emit({ phase: "connected", nodes: nodes.length, seconds: (performance.now() - started) / 1000 });
await proceed();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const talking = Array.from({ length: ROOMS }, (_, r) => r).filter((r) => receivers(r) > 0);

/** One step: `offered` deliveries/s for `seconds`, then the drain; its result. */
async function run(index: number, offered: number, seconds: number) {
  step = index;
  sentBy.fill(0);
  bits.fill(undefined);
  unique.fill(0);
  uniqueTotal =
    duplicates =
    late =
    unexpected =
    latencyCount =
      0;
  lastDelivery = 0;
  const closedBefore = closed;
  // Offered deliveries/s over the rooms' receivers: messages/s in all.
  const perMessage = talking.reduce((n, r) => n + receivers(r), 0) / talking.length;
  const rate = offered / perMessage;
  emit({ phase: "start", step: index, offered });
  await proceed();
  let sent = 0;
  let next = 0;
  let expected = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const tick = () => {
    const now = Math.min(performance.now(), end);
    const due = Math.floor((now - t0) / 1000 * rate) - sent;
    for (let k = 0; k < due; k++) {
      const room = talking[next++ % talking.length];
      const seq = sentBy[room]++;
      expected += receivers(room);
      nodes[room * SIZE].send(
        message(`${index} ${seq} ${Math.round(performance.now() * 1000)}`),
      );
    }
    sent += Math.max(0, due);
  };
  const timer = setInterval(tick, 5);
  await sleep(seconds * 1000);
  clearInterval(timer);
  tick();
  const sendEnd = performance.now();
  // Drain: until every expected delivery is in, 1 s without progress, or the cap.
  const cap = sendEnd + cfg.drain * 1000;
  let seen = uniqueTotal;
  let progressAt = performance.now();
  while (uniqueTotal < expected && performance.now() < cap) {
    await sleep(10);
    if (uniqueTotal !== seen) {
      seen = uniqueTotal;
      progressAt = performance.now();
    } else if (performance.now() - progressAt > 1000) break;
  }
  const drained = performance.now();
  const lat = latencies.subarray(0, latencyCount).sort();
  const pct = (p: number) =>
    lat.length === 0 ? null : lat[Math.min(lat.length - 1, Math.floor(lat.length * p))];
  const window = Math.max(sendEnd, lastDelivery) - t0;
  return {
    step: index,
    offered,
    seconds: (sendEnd - t0) / 1000,
    sent,
    sentPerSecond: sent / ((sendEnd - t0) / 1000),
    expected,
    delivered: uniqueTotal,
    // Deliveries of this step's messages over the time from its first send to
    // its last delivery (or the end of sending, if later).
    deliveredPerSecond: uniqueTotal / (window / 1000),
    fraction: expected === 0 ? 1 : uniqueTotal / expected,
    lost: expected - uniqueTotal,
    duplicates,
    late,
    unexpected,
    closed: closed - closedBefore,
    tailMs: lastDelivery === 0 ? null : Math.max(0, lastDelivery - sendEnd),
    drainMs: drained - sendEnd,
    p50: pct(0.5),
    p99: pct(0.99),
    max: lat.length === 0 ? null : lat[lat.length - 1],
  };
}

if (cfg.warmup > 0) {
  emit({ phase: "warmup", ...await run(0, cfg.steps[0] ?? 1000, cfg.warmup) });
  await proceed();
}
for (let i = 0; i < cfg.steps.length; i++) {
  const result = await run(i + 1, cfg.steps[i], cfg.seconds);
  emit({ phase: "step", ...result });
  await proceed();
  // A server that could not deliver most of a step even after the drain is
  // past saturation: higher steps would only queue behind its backlog.
  if (result.fraction < cfg.stopBelow && i + 1 < cfg.steps.length) {
    emit({ phase: "stopped", after: cfg.steps[i], skipped: cfg.steps.slice(i + 1) });
    break;
  }
}
for (const node of nodes) {
  node.closed = true;
  try {
    node.conn.close();
  } catch {
    // Already closed.
  }
}
emit({ phase: "done" });
Deno.exit(0);
