// Throughput of one ImmortalConn over a long fat path, simulated in process
// (tests/_delayed_link.ts: a fixed one-way delay and a bottleneck rate each
// way), to show whether the session's window fills the path.
//
//   deno run bench/window_throughput.ts \
//     [--delay-ms=50] [--rates=50,200] [--mb=200] [--max-unacked=BYTES]
//
// For each rate (MB/s, 1 MB = 10^6 bytes), the client writes `--mb` MB in
// 256 KiB chunks and half-closes; the time runs from the first write to the
// server's end of stream. Reported: MB/s and its ratio to the path's rate; the
// peak of the sender's `stats.unackedBytes` (what the window let out) and that
// peak over the round trip, the rate such a window allows; its mean over the
// transfer (sampled every 10 ms), which tells a window held open from one that
// only touched its peak; the process's RSS before the run and at its peak.
// "bare path" is the same transfer over one link of the simulated path with no
// session, 256 KiB writes one at a time: the ceiling the simulation itself
// reaches on this machine (its bottleneck waits on timers, which fire late on a
// busy machine), to read the session's figure against.
// `--max-unacked` is passed to both ends as `maxUnackedBytes`; without it the
// library's default (or its own sizing) applies.
import { connect, type ImmortalConn, listen } from "../mod.ts";
import { delayedPath } from "../tests/_delayed_link.ts";

/** `--name=value` from the command line, or `fallback`. */
function option(name: string, fallback: string): string {
  const prefix = `--${name}=`;
  return Deno.args.find((arg) => arg.startsWith(prefix))?.slice(prefix.length) ?? fallback;
}

const DELAY_MS = Number(option("delay-ms", "50"));
const RATES = option("rates", "50,200").split(",").map(Number);
const TOTAL = Number(option("mb", "200")) * 1e6;
const MAX_UNACKED = option("max-unacked", "");
const CHUNK = 256 * 1024;
// Sampling period of the peaks: short enough to see a window that swings
// within a round trip (100 ms at the default delay).
const SAMPLE_MS = 10;
const MB = 1e6;
const MIB = 1024 * 1024;

interface Result {
  rate: number;
  bareMBps: number;
  seconds: number;
  unackedPeak: number;
  unackedMean: number;
  rssBefore: number;
  rssPeak: number;
}

/** Reads to end of stream; resolves to the byte count. */
async function drain(conn: ImmortalConn): Promise<number> {
  const buffer = new Uint8Array(CHUNK);
  let bytes = 0;
  for (let n; (n = await conn.read(buffer)) !== null;) bytes += n;
  return bytes;
}

/** MB/s of the simulated path alone: one link, no session, one write at a time. */
async function barePath(rate: number): Promise<number> {
  const { dialer, acceptor } = delayedPath({ delayMs: DELAY_MS, bytesPerSecond: rate * MB });
  const accepted = acceptor.accept();
  const near = await dialer(new AbortController().signal);
  const far = await accepted;
  try {
    const started = performance.now();
    const received = (async () => {
      const buffer = new Uint8Array(CHUNK);
      let bytes = 0;
      while (bytes < TOTAL) {
        const n = await far.read(buffer);
        if (n === null) break;
        bytes += n;
      }
      return bytes;
    })();
    const chunk = new Uint8Array(CHUNK);
    for (let sent = 0; sent < TOTAL; sent += CHUNK) {
      await near.write(chunk.subarray(0, Math.min(CHUNK, TOTAL - sent)));
    }
    if (await received !== TOTAL) throw new Error("the bare path lost bytes");
    return TOTAL / ((performance.now() - started) / 1000) / MB;
  } finally {
    near.close();
    far.close();
    acceptor.close();
  }
}

async function run(rate: number): Promise<Omit<Result, "bareMBps">> {
  const options = MAX_UNACKED === "" ? {} : { maxUnackedBytes: Number(MAX_UNACKED) };
  const { dialer, acceptor } = delayedPath({ delayMs: DELAY_MS, bytesPerSecond: rate * MB });
  const listener = listen({ acceptor, ...options });
  let client: ImmortalConn | undefined;
  let server: ImmortalConn | undefined;
  let sampler: ReturnType<typeof setInterval> | undefined;
  let watchdog: ReturnType<typeof setTimeout> | undefined;
  try {
    const accepted = listener.accept();
    client = await connect({ dialer, ...options });
    server = await accepted;
    const sender = client;
    const rssBefore = Deno.memoryUsage().rss;
    let unackedPeak = 0;
    let unackedSum = 0;
    let samples = 0;
    let rssPeak = rssBefore;
    const sample = () => {
      const unacked = sender.stats.unackedBytes;
      unackedPeak = Math.max(unackedPeak, unacked);
      unackedSum += unacked;
      samples++;
      rssPeak = Math.max(rssPeak, Deno.memoryUsage().rss);
    };
    sampler = setInterval(sample, SAMPLE_MS);
    // Bounds the run: ten times the time at the path's full rate, and at
    // least a minute; closing the sessions makes the pending read and write reject.
    const limitMs = Math.max(60_000, 10 * (TOTAL / (rate * MB)) * 1000);
    watchdog = setTimeout(() => {
      client?.close();
      server?.close();
    }, limitMs);

    const started = performance.now();
    const received = drain(server);
    // One buffer for every write: `write` resolves once the bytes are held
    // for replay, so the buffer may be reused at once.
    const chunk = new Uint8Array(CHUNK).fill(0x5a);
    for (let sent = 0; sent < TOTAL; sent += CHUNK) {
      await sender.write(chunk.subarray(0, Math.min(CHUNK, TOTAL - sent)));
      // The window is fullest just after a write that had to wait.
      unackedPeak = Math.max(unackedPeak, sender.stats.unackedBytes);
    }
    await sender.closeWrite();
    const bytes = await received;
    const seconds = (performance.now() - started) / 1000;
    if (bytes !== TOTAL) throw new Error(`received ${bytes} of ${TOTAL} bytes`);
    rssPeak = Math.max(rssPeak, Deno.memoryUsage().rss);
    const unackedMean = samples === 0 ? 0 : unackedSum / samples;
    return { rate, seconds, unackedPeak, unackedMean, rssBefore, rssPeak };
  } finally {
    clearInterval(sampler);
    clearTimeout(watchdog);
    client?.close();
    server?.close();
    listener.close();
  }
}

async function main(): Promise<void> {
  const results: Result[] = [];
  for (const rate of RATES) {
    console.error(`${rate} MB/s, ${DELAY_MS} ms each way, ${TOTAL / MB} MB ...`);
    const bareMBps = await barePath(rate);
    results.push({ ...await run(rate), bareMBps });
  }
  const rttS = 2 * DELAY_MS / 1000;
  console.log(
    `${TOTAL / MB} MB one way, ${DELAY_MS} ms each way (RTT ${rttS * 1000} ms), maxUnackedBytes ${
      MAX_UNACKED || "default"
    }\n`,
  );
  console.log(
    "| path MB/s | bare path MB/s | MB/s | of path | unacked peak MiB | peak / RTT MB/s | unacked mean MiB | RSS before MiB | RSS peak MiB |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const r of results) {
    const mbps = TOTAL / r.seconds / MB;
    const cells = [
      String(r.rate),
      r.bareMBps.toFixed(1),
      mbps.toFixed(1),
      `${(100 * mbps / r.rate).toFixed(0)}%`,
      (r.unackedPeak / MIB).toFixed(1),
      (r.unackedPeak / rttS / MB).toFixed(1),
      (r.unackedMean / MIB).toFixed(1),
      (r.rssBefore / MIB).toFixed(0),
      (r.rssPeak / MIB).toFixed(0),
    ];
    console.log(`| ${cells.join(" | ")} |`);
  }
}

await main();
