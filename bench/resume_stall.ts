// How long an application waiting for a reply is held up when the link under
// an ImmortalConn fails. A client sends a small request and waits for its echo,
// one at a time, through a fault proxy, while faults are fired on a timer:
//
//   reset:     every link gets an RST once a second for `--seconds` s;
//   blackhole: `--holes` times, the link silently stops forwarding (no FIN, no
//              RST), `--gap` s after the previous resume; only heartbeats can
//              tell the session the link is dead.
//
//   deno run --allow-net=127.0.0.1 bench/resume_stall.ts \
//     [--seconds=20] [--holes=5] [--gap=2] [--warmup=2] [--factor=10] [--floor-ms=5] \
//     [--only=reset,blackhole]
//
// A stall is a round trip above max(--factor × the healthy median, --floor-ms),
// the healthy median being measured first for `--warmup` s without faults; the
// floor keeps scheduling and GC hiccups of a sub-millisecond round trip out of
// the count, and the warm-up's own count above the threshold shows what is left
// of them. Independently of any threshold, what each fault cost the
// application ("hit") is the longest round trip in flight when it fired or
// started within the next 250 ms: the one in flight may still complete on
// bytes already past the proxy, and it is the next one that waits for the
// resume (a black hole shows this every time). `downtimeMs` of
// the client's `resumed` events says how long the session had no link; a stall
// also includes the time it took to notice the loss.
//
// Server, client and proxy share one process: the figures are resume costs in
// milliseconds, far above what sharing one event loop adds. Only API that also
// exists at commit c341f45 is used, so the same file measures the code before
// and after the reconnect changes.
import { connect, type ImmortalConn, listen } from "../mod.ts";
import { FaultProxy } from "../tests/_fault_proxy.ts";
import { delay } from "../tests/_helpers.ts";

/** `--name=value` from the command line, or `fallback`. */
function option(name: string, fallback: string): string {
  const prefix = `--${name}=`;
  return Deno.args.find((arg) => arg.startsWith(prefix))?.slice(prefix.length) ?? fallback;
}

const RESET_SECONDS = Number(option("seconds", "20"));
const HOLES = Number(option("holes", "5"));
const HOLE_GAP_MS = Number(option("gap", "2")) * 1000;
const WARMUP_MS = Number(option("warmup", "2")) * 1000;
const FACTOR = Number(option("factor", "10"));
const FLOOR_MS = Number(option("floor-ms", "5"));
const ONLY = option("only", "reset,blackhole").split(",");
// Longer than any resume either version can take with default settings; a
// round trip this long means the session is gone, and the run is abandoned.
const MAX_ROUND_TRIP_MS = 60_000;
// After the last fault, round trips go on this long so its stall is counted.
const TAIL_MS = 1_000;
const REQUEST_BYTES = 8;
// Far shorter than the 1 s between faults, far longer than the gap between
// a fault and the round trip that waits for its resume.
const HIT_WINDOW_MS = 250;

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
}

/** Reads exactly `buffer.length` bytes: a read may return part of a reply. */
async function readFull(conn: ImmortalConn, buffer: Uint8Array): Promise<void> {
  let filled = 0;
  while (filled < buffer.length) {
    const n = await conn.read(buffer.subarray(filled));
    if (n === null) throw new Error("the session ended in the middle of a reply");
    filled += n;
  }
}

/** Echoes until the session ends; a read error just means the bench closed it. */
async function echo(conn: ImmortalConn): Promise<void> {
  const buffer = new Uint8Array(4096);
  try {
    for (let n; (n = await conn.read(buffer)) !== null;) await conn.write(buffer.subarray(0, n));
  } catch {
    // Closed by the bench at the end of the scenario.
  }
}

/**
 * Request/response round trips, one outstanding, until `stop()` says so.
 * Each request carries a sequence number that must come back unchanged:
 * a lost, duplicated or reordered byte across a resume fails the run.
 */
class Pinger {
  #conn: ImmortalConn;
  #seq = 0;
  #request = new Uint8Array(REQUEST_BYTES);
  #reply = new Uint8Array(REQUEST_BYTES);

  constructor(conn: ImmortalConn) {
    this.#conn = conn;
  }

  /** Round trips (start, ms) while `keepGoing()` holds (checked between round trips). */
  async run(keepGoing: () => boolean): Promise<RoundTrip[]> {
    const rtts: RoundTrip[] = [];
    const view = new DataView(this.#request.buffer);
    const replyView = new DataView(this.#reply.buffer);
    while (keepGoing()) {
      const seq = ++this.#seq;
      view.setFloat64(0, seq);
      const started = performance.now();
      // Closing the session makes the pending read reject: the watchdog
      // bounds a round trip that would otherwise wait forever.
      const watchdog = setTimeout(() => this.#conn.close(), MAX_ROUND_TRIP_MS);
      try {
        await this.#conn.write(this.#request);
        await readFull(this.#conn, this.#reply);
      } finally {
        clearTimeout(watchdog);
      }
      rtts.push({ started, ms: performance.now() - started });
      const got = replyView.getFloat64(0);
      if (got !== seq) throw new Error(`reply ${got} to request ${seq}: the stream is corrupt`);
    }
    return rtts;
  }
}

/** Resolves on the session's next `resumed` event, or rejects after `ms`. */
function nextResume(conn: ImmortalConn, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      conn.removeEventListener("resumed", on);
      reject(new Error(`no resume within ${ms} ms`));
    }, ms);
    const on = () => {
      clearTimeout(timer);
      conn.removeEventListener("resumed", on);
      resolve();
    };
    conn.addEventListener("resumed", on);
  });
}

interface RoundTrip {
  /** `performance.now()` when the request was written. */
  started: number;
  /** Round-trip time. */
  ms: number;
}

/** Fires faults at the proxy; resolves to when each one hit a link (`performance.now()`). */
type Injector = (proxy: FaultProxy, client: ImmortalConn) => Promise<number[]>;

const injectors: Record<string, { label: string; inject: Injector }> = {
  reset: {
    label: `RST every 1 s, ${RESET_SECONDS} s`,
    async inject(proxy) {
      const faults: number[] = [];
      for (let i = 0; i < RESET_SECONDS; i++) {
        await delay(1000);
        const at = performance.now();
        // 0 when the previous link is gone and the next not yet up: no fault.
        if (proxy.reset() > 0) faults.push(at);
      }
      return faults;
    },
  },
  blackhole: {
    label: `black hole × ${HOLES}, ${HOLE_GAP_MS / 1000} s apart`,
    async inject(proxy, client) {
      const faults: number[] = [];
      for (let i = 0; i < HOLES; i++) {
        await delay(HOLE_GAP_MS);
        const resumed = nextResume(client, MAX_ROUND_TRIP_MS);
        const at = performance.now();
        if (proxy.blackhole() === 0) {
          resumed.catch(() => {}); // no link was hit: no resume to wait for
          continue;
        }
        faults.push(at);
        await resumed;
      }
      return faults;
    },
  },
};

interface Result {
  label: string;
  healthyMedianMs: number;
  thresholdMs: number;
  warmupStalls: number;
  faults: number;
  roundTrips: number;
  stalls: number[];
  /** Per fault, the round trip it delayed. */
  hits: number[];
  downtimes: number[];
}

/**
 * The longest round trip in flight at `at` or started within `HIT_WINDOW_MS`
 * after it (see the file's header for why not just the one in flight).
 */
function hitBy(rtts: RoundTrip[], at: number): number {
  let longest = NaN;
  for (const rtt of rtts) {
    if (rtt.started > at + HIT_WINDOW_MS) break;
    if (rtt.started + rtt.ms > at && !(rtt.ms <= longest)) longest = rtt.ms;
  }
  return longest;
}

async function runScenario(label: string, inject: Injector): Promise<Result> {
  // A fresh listener, proxy and session per scenario, so that one scenario's
  // leftovers (holed links, late events) cannot touch the next.
  const listener = listen({ hostname: "127.0.0.1", port: 0 });
  // Cast: the listener's address was typed `Deno.Addr` before c341f45's successors.
  const proxy = await FaultProxy.start({ targetPort: (listener.addr as Deno.NetAddr).port });
  let client: ImmortalConn | undefined;
  let server: ImmortalConn | undefined;
  try {
    const accepted = listener.accept();
    client = await connect({ hostname: "127.0.0.1", port: proxy.port });
    server = await accepted;
    const echoing = echo(server);
    const downtimes: number[] = [];
    client.addEventListener("resumed", (event) => {
      // The event's class differs between versions; both carry downtimeMs.
      const ms = (event as Event & { downtimeMs?: number }).downtimeMs;
      if (ms !== undefined) downtimes.push(ms);
    });
    const pinger = new Pinger(client);

    const warmupEnd = performance.now() + WARMUP_MS;
    const healthy = (await pinger.run(() => performance.now() < warmupEnd))
      .map((rtt) => rtt.ms).sort((a, b) => a - b);
    const healthyMedianMs = quantile(healthy, 0.5);
    const thresholdMs = Math.max(FACTOR * healthyMedianMs, FLOOR_MS);

    let faulting = true;
    const pinging = pinger.run(() => faulting);
    // Awaited below; this only keeps a failed injection from also reporting
    // the pinger's rejection (the session is closed on the way out) as unhandled.
    pinging.catch(() => {});
    let faults: number[];
    try {
      faults = await inject(proxy, client);
      await delay(TAIL_MS);
    } finally {
      faulting = false;
    }
    const rtts = await pinging;
    client.close();
    server.close();
    await echoing;
    return {
      label,
      healthyMedianMs,
      thresholdMs,
      warmupStalls: healthy.filter((rtt) => rtt > thresholdMs).length,
      faults: faults.length,
      roundTrips: rtts.length,
      stalls: rtts.map((rtt) => rtt.ms).filter((ms) => ms > thresholdMs).sort((a, b) => a - b),
      hits: faults.map((at) => hitBy(rtts, at)).sort((a, b) => a - b),
      downtimes: downtimes.sort((a, b) => a - b),
    };
  } finally {
    client?.close();
    server?.close();
    await proxy.close();
    listener.close();
  }
}

function ms(value: number): string {
  if (Number.isNaN(value)) return "–";
  return value < 10 ? value.toFixed(1) : value.toFixed(0);
}

async function main(): Promise<void> {
  const results: Result[] = [];
  for (const name of ONLY) {
    const scenario = injectors[name];
    if (!scenario) throw new Error(`unknown scenario ${name}; use reset or blackhole`);
    console.error(`${scenario.label} ...`);
    results.push(await runScenario(scenario.label, scenario.inject));
  }
  for (const r of results) {
    console.log(
      `${r.label}: ${r.roundTrips} round trips; healthy median ${
        ms(r.healthyMedianMs)
      } ms, stall threshold ${
        ms(r.thresholdMs)
      } ms (${r.warmupStalls} warm-up round trips above it)`,
    );
  }
  console.log();
  console.log(
    "| scenario | faults | resumes | stalls | stall median ms | stall worst ms | hit median ms | hit worst ms | downtime median ms | downtime worst ms |",
  );
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const r of results) {
    const cells = [
      r.label,
      String(r.faults),
      String(r.downtimes.length),
      String(r.stalls.length),
      ms(quantile(r.stalls, 0.5)),
      ms(r.stalls.at(-1) ?? NaN),
      ms(quantile(r.hits, 0.5)),
      ms(r.hits.at(-1) ?? NaN),
      ms(quantile(r.downtimes, 0.5)),
      ms(r.downtimes.at(-1) ?? NaN),
    ];
    console.log(`| ${cells.join(" | ")} |`);
  }
}

await main();
