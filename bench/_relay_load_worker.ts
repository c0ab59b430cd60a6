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
const [urlsArg, nodesArg, sizeArg, ratesArg, secondsArg] = Deno.args;
const URLS = urlsArg.split(",").map((url) => new URL(url));
const NODES = Number(nodesArg);
const SIZE = Number(sizeArg);
const RATES = ratesArg.split(",").map(Number);
const SECONDS = Number(secondsArg);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

let delivered = 0;
let latencies: number[] = [];
let sampleEvery = 1;
const PONG = frame('{"t":"pong"}');

/** A masked client text frame (all-zero mask: the payload goes as is). */
function frame(text: string): Uint8Array {
  const payload = encoder.encode(text);
  const head = payload.length < 126 ? [0x81, 0x80 | payload.length] : [
    0x81,
    0x80 | 126,
    payload.length >> 8,
    payload.length & 255,
  ];
  const out = new Uint8Array(head.length + 4 + payload.length);
  out.set(head);
  out.set(payload, head.length + 4);
  return out;
}

class Node {
  #pending: Uint8Array[] = [];
  #writing = false;
  constructor(readonly conn: Deno.TcpConn) {}

  send(bytes: Uint8Array): void {
    this.#pending.push(bytes);
    if (!this.#writing) this.#flush();
  }

  async #flush(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending.splice(0);
        const size = batch.reduce((n, b) => n + b.length, 0);
        const all = new Uint8Array(size);
        let off = 0;
        for (const b of batch) {
          all.set(b, off);
          off += b.length;
        }
        for (let w = 0; w < all.length;) w += await this.conn.write(all.subarray(w));
      }
    } catch {
      // Closed at the end of the run.
    } finally {
      this.#writing = false;
    }
  }
}

/** Scans server frames in `data` (from `start`); returns where an incomplete frame begins. */
function scan(node: Node, data: Uint8Array, onWelcome: () => void): number {
  let at = 0;
  while (at + 2 <= data.length) {
    let len = data[at + 1] & 0x7f;
    let header = 2;
    if (len === 126) {
      if (at + 4 > data.length) break;
      len = (data[at + 2] << 8) | data[at + 3];
      header = 4;
    } else if (len === 127) {
      if (at + 10 > data.length) break;
      len = Number(new DataView(data.buffer, data.byteOffset + at + 2, 8).getBigUint64(0));
      header = 10;
    }
    if (at + header + len > data.length) break;
    const p = at + header;
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
    at = p + len;
  }
  return at;
}

async function open(i: number): Promise<Node> {
  const { hostname, port } = URLS[i % URLS.length];
  const conn = await Deno.connect({ hostname, port: Number(port) });
  conn.setNoDelay(true);
  const node = new Node(conn);
  await conn.write(encoder.encode(
    `GET /relay/ws HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  ));
  const session = `s${Math.floor(i / SIZE)}`;
  node.send(frame(JSON.stringify({ t: "hello", session, nickname: `n${i % SIZE}` })));
  const welcomed = Promise.withResolvers<Node>();
  (async () => {
    let buffer = new Uint8Array(64 * 1024);
    let filled = 0;
    let inHeaders = true;
    try {
      for (;;) {
        if (filled === buffer.length) {
          const bigger = new Uint8Array(buffer.length * 2);
          bigger.set(buffer);
          buffer = bigger;
        }
        const n = await conn.read(buffer.subarray(filled));
        if (n === null) return;
        filled += n;
        let start = 0;
        if (inHeaders) {
          const text = decoder.decode(buffer.subarray(0, filled));
          const end = text.indexOf("\r\n\r\n");
          if (end < 0) continue;
          inHeaders = false;
          start = encoder.encode(text.slice(0, end + 4)).length;
        }
        const used = start +
          scan(node, buffer.subarray(start, filled), () => welcomed.resolve(node));
        buffer.copyWithin(0, used, filled);
        filled -= used;
      }
    } catch {
      // Closed at the end of the run.
    }
  })();
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
        frame(`{"t":"msg","text":"${performance.timeOrigin + performance.now()}"}`),
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
