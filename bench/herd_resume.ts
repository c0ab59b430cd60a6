// How N ImmortalConn sessions from one source recover when all their links
// break at once, as every session of a machine does when its NAT or Wi-Fi
// blips. This process runs the N clients (all from 127.0.0.1); they reach an
// echo server (bench/_herd_server.ts) through a fault proxy
// (bench/_herd_proxy.ts, tests/_fault_proxy.ts), each in a process of its
// own so that the server's handshakes and the proxy's forwarding do not
// compete with the clients for one event loop. Each phase breaks every link
// at once, then waits until every session has resumed:
//
//   reset-*   every link gets an RST;
//   hole-*    every link silently stops forwarding for --hole ms, and dials
//             made meanwhile get no answer either; then the path comes back;
//   *-idle    the sessions carry nothing;
//   *-traffic each session writes a 16-byte record every 50 ms, and checks
//             that every one comes back once, in order.
//
//   deno run --allow-net=127.0.0.1 --allow-read --allow-run bench/herd_resume.ts \
//     [--n=50] [--limits=default] [--phases=reset-idle,reset-traffic] [--hole=3000] [--probe=MS]
//
//   --limits  the server's per-source handshake limits: default (the
//             library's: 16 at once, 50/s), raised (1024 at once, 100000/s),
//             rate (100000/s only), src (1024 at once only), mid (64, 500/s);
//   --phases  any of reset-idle, reset-traffic, hole-idle, hole-traffic, in order;
//   --hole    how long a black hole lasts, ms;
//   --probe   the clients' backoff.probeInterval, ms (how soon a dial nobody
//             answered yet is raced; default: the library's).
//
// Output: one JSON line on stdout when every session is open, one per phase,
// one at the end (records sent and echoed, sequence errors), and a one-line
// summary of each on stderr. Per phase, times are from the fault, on this
// process's clock: when each session noticed (lostMs), dialed (firstDialMs)
// and resumed (ownClockMs; sinceRestoreMs: from the end of a hole), how many
// dials it took, what the server dropped and why, what both ends logged, the
// kernel's listen-queue drops and SYN retransmits, each process's CPU time
// and worst event-loop lateness (a busy machine, not the library, if high),
// and every 500 ms how many handshakes were in progress and how many
// sessions had resumed. Deno lets only --allow-all read /proc: `cat` reads it.
//
// The run is bounded to 115 s: opening stops, and phases are skipped, when
// they would not fit, and a watchdog stops it all at the limit. It stops
// only the two children it started, by their PIDs (ChildProcess.kill), and
// they exit by themselves when their stdin ends, should this process die.
import { configure, type LogRecord } from "@logtape/logtape";
import { connect, type Dialer, type ImmortalConn, tcpDialer } from "../mod.ts";
import { delay, renderRecord, watchTimerLateness } from "../tests/_helpers.ts";
import { TextLineStream } from "../tests/_lines.ts";
import { children, stopAll } from "./_processes.ts";
import type { FaultAnswer, LagAnswer } from "./_herd_proxy.ts";
import type { HerdLimits, MarkAnswer, ReportAnswer, StatsSample } from "./_herd_server.ts";

const started = performance.now();
const HARD_LIMIT_MS = 115_000;
const ROOT = new URL("..", import.meta.url).pathname;

/** `--name=value` from the command line, or `fallback`. */
function option(name: string, fallback: string): string {
  const prefix = `--${name}=`;
  return Deno.args.find((arg) => arg.startsWith(prefix))?.slice(prefix.length) ?? fallback;
}

const LIMITS_BY_NAME: Record<string, HerdLimits> = {
  default: {},
  raised: { maxHandshakesPerSource: 1024, maxHandshakeRatePerSource: 100_000 },
  rate: { maxHandshakeRatePerSource: 100_000 },
  src: { maxHandshakesPerSource: 1024 },
  mid: { maxHandshakesPerSource: 64, maxHandshakeRatePerSource: 500 },
};
const N = Number(option("n", "50"));
const LIMITS = option("limits", "default");
const PHASES = option("phases", "reset-idle,reset-traffic").split(",");
const HOLE_MS = Number(option("hole", "3000"));
const PROBE = option("probe", "");

/** What is wrong with the options, if anything. */
function badOption(): string | undefined {
  if (!Number.isInteger(N) || N < 1 || N > 10_000) return "--n must be an integer from 1 to 10000";
  if (!Object.hasOwn(LIMITS_BY_NAME, LIMITS)) {
    return `--limits must be one of ${Object.keys(LIMITS_BY_NAME).join(", ")}`;
  }
  const bad = PHASES.find((p) => !/^(reset|hole)-(idle|traffic)$/.test(p));
  if (bad !== undefined) return `unknown phase "${bad}": (reset|hole)-(idle|traffic)`;
  if (!(HOLE_MS >= 0 && HOLE_MS <= 60_000)) return "--hole must be from 0 to 60000 ms";
  if (PROBE !== "" && !(Number(PROBE) >= 1)) return "--probe must be at least 1 ms";
  return undefined;
}

const clientBackoff = PROBE ? { backoff: { probeInterval: Number(PROBE) } } : {};
const now = () => performance.now();
const timeLeft = () => HARD_LIMIT_MS - (now() - started);

// --- Children ---------------------------------------------------------------

/** A child process of this bench: one command line in, one JSON line out. */
class Child {
  readonly process: Deno.ChildProcess;
  readonly #name: string;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: ReadableStreamDefaultReader<string>;
  #broken = false;

  constructor(name: string, script: string, args: string[]) {
    this.#name = name;
    this.process = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net=127.0.0.1", new URL(script, import.meta.url).pathname, ...args],
      // deno.json (which maps @logtape/logtape) is found from here.
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    // _processes.ts's spawn() gives a child no stdio; its stopAll() still
    // stops these too, at the end or on a failure.
    children.push(this.process);
    this.#writer = this.process.stdin.getWriter();
    this.#lines = this.process.stdout
      .pipeThrough(new TextDecoderStream())
      .pipeThrough(new TextLineStream())
      .getReader();
  }

  /** The child's next line. */
  async next<T>(timeoutMs = 60_000): Promise<T> {
    // An answer that came after its command gave up would be taken for the
    // next command's: once one is missed, every later one fails.
    if (this.#broken) throw new Error(`${this.#name}: an earlier answer never came`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    try {
      const read = await Promise.race([this.#lines.read(), timeout]);
      if (read === "timeout" || read.done) {
        this.#broken = true;
        throw new Error(
          `${this.#name} ${read === "timeout" ? `did not answer in ${timeoutMs} ms` : "exited"}`,
        );
      }
      return JSON.parse(read.value) as T;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends `command`; resolves to the child's answer. */
  async command<T>(command: string, timeoutMs?: number): Promise<T> {
    await this.#writer.write(new TextEncoder().encode(command + "\n"));
    return await this.next<T>(timeoutMs);
  }
}

// --- Client logs ------------------------------------------------------------

// A dial storm of 500 sessions logs a lot: counting stops here, not memory.
const MAX_CLIENT_LINES = 200_000;
let clientLines: { level: string; text: string }[] = [];
await configure({
  sinks: {
    count(record: LogRecord) {
      if (clientLines.length < MAX_CLIENT_LINES) {
        clientLines.push({ level: record.level, text: renderRecord(record) });
      }
    },
  },
  loggers: [
    { category: ["immortal"], lowestLevel: "debug", sinks: ["count"] },
    { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
  ],
});

// --- Sessions ---------------------------------------------------------------

interface Session {
  idx: number;
  conn: ImmortalConn | null;
  /** When each real dial (a socket) started, since the phase's mark. */
  dials: number[];
  /** Dials swallowed by the black hole since the mark. */
  gated: number;
  reconnectingAt: number[];
  resumed: { at: number; downtime: number }[];
  /** Why the session ended ("clean" if it closed without an error); null while open. */
  closed: string | null;
  sent: number;
  received: number;
  seqErrors: number;
  /** Writes are chained so that records go out in order. */
  writing: Promise<unknown>;
  starting?: ReturnType<typeof setTimeout>;
  timer?: ReturnType<typeof setInterval>;
}

const sessions: Session[] = [];
let holed = false;
let trafficOn = false;
let connectMs: number[] = [];
let connectAborted = 0;
let connectFailed = 0;

/**
 * `base` for session `s`, counting its dials. While the hole is open a dial
 * is swallowed rather than made: the proxy holes the links it has, and a new
 * one through it would get through, where a SYN into a dead uplink gets no
 * answer at all; the session's dial loop races or aborts it.
 */
function dialerFor(s: Session, base: Dialer): Dialer {
  return async (signal) => {
    if (holed) {
      s.gated++;
      await new Promise((_, reject) => {
        // A bound of its own, in case the dial loop never aborts it.
        const timer = setTimeout(() => reject(new Error("gated dial: internal bound")), 30_000);
        signal.addEventListener("abort", () => {
          clearTimeout(timer);
          reject(new Error("aborted"));
        }, { once: true });
      });
    }
    const t = now();
    s.dials.push(t);
    try {
      const link = await base(signal);
      connectMs.push(now() - t);
      return link;
    } catch (error) {
      if (signal.aborted) connectAborted++;
      else connectFailed++;
      throw error;
    }
  };
}

const RECORD_BYTES = 16;
/** Session index, sequence number, its complement and a marker: a record out of place shows. */
function record(idx: number, seq: number): Uint8Array {
  const bytes = new Uint8Array(RECORD_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, idx);
  view.setUint32(4, seq);
  view.setUint32(8, ~seq >>> 0);
  view.setUint32(12, 0xc0ffee);
  return bytes;
}

/** Checks every echoed record until the session ends. */
async function readLoop(s: Session): Promise<void> {
  const conn = s.conn!;
  const buffer = new Uint8Array(64 * 1024);
  let carry = new Uint8Array(0);
  for (;;) {
    let n: number | null;
    try {
      n = await conn.read(buffer);
    } catch {
      return;
    }
    if (n === null) return;
    const data = new Uint8Array(carry.length + n);
    data.set(carry);
    data.set(buffer.subarray(0, n), carry.length);
    let at = 0;
    for (; at + RECORD_BYTES <= data.length; at += RECORD_BYTES) {
      const view = new DataView(data.buffer, at, RECORD_BYTES);
      const ok = view.getUint32(0) === s.idx && view.getUint32(4) === s.received &&
        view.getUint32(8) === (~s.received >>> 0) && view.getUint32(12) === 0xc0ffee;
      if (!ok) s.seqErrors++;
      s.received++;
    }
    carry = data.slice(at);
  }
}

function setTraffic(s: Session, on: boolean): void {
  clearTimeout(s.starting);
  clearInterval(s.timer);
  s.starting = s.timer = undefined;
  if (!on) return;
  // Every 50 ms, each session at its own phase of it: not all in one turn.
  s.starting = setTimeout(() => {
    s.timer = setInterval(() => {
      const seq = s.sent++;
      s.writing = s.writing.then(() => s.conn!.write(record(s.idx, seq))).catch(() => {});
    }, 50);
  }, Math.random() * 50);
}

/** Opens the N sessions, 8 at a time; bounded by attempts and by the time limit. */
async function openAll(proxyPort: number) {
  const base = tcpDialer({ hostname: "127.0.0.1", port: proxyPort });
  for (let i = 0; i < N; i++) {
    sessions.push({
      idx: i,
      conn: null,
      dials: [],
      gated: 0,
      reconnectingAt: [],
      resumed: [],
      closed: null,
      sent: 0,
      received: 0,
      seqErrors: 0,
      writing: Promise.resolve(),
    });
  }
  let next = 0;
  let openFailures = 0;
  const worker = async () => {
    while (next < N && timeLeft() > 30_000) {
      const s = sessions[next++];
      for (let attempt = 0; attempt < 200 && timeLeft() > 30_000; attempt++) {
        try {
          s.conn = await connect({
            hostname: "127.0.0.1",
            port: proxyPort,
            key: "herd",
            dialer: dialerFor(s, base),
            ...clientBackoff,
          });
          break;
        } catch {
          openFailures++;
          await delay(50);
        }
      }
      if (!s.conn) throw new Error(`could not open session ${s.idx}`);
      const conn = s.conn;
      conn.addEventListener("reconnecting", () => s.reconnectingAt.push(now()));
      conn.addEventListener(
        "resumed",
        (event) => s.resumed.push({ at: now(), downtime: event.downtimeMs }),
      );
      conn.closed.then(
        () => s.closed ??= "clean",
        (error) => s.closed ??= String(error?.message ?? error),
      );
      readLoop(s);
    }
  };
  const t = now();
  await Promise.all(Array.from({ length: 8 }, worker));
  if (sessions.some((s) => !s.conn)) {
    throw new Error("the time limit came before every session opened");
  }
  return { openMs: Math.round(now() - t), openFailures };
}

// --- Statistics -------------------------------------------------------------

/** The nearest-rank `p` quantile (0 to 1) of `xs`; NaN if empty. */
function quantile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1) + 0.5))];
}

const spread = (xs: number[]) => ({
  first: Math.round(quantile(xs, 0)),
  median: Math.round(quantile(xs, 0.5)),
  p99: Math.round(quantile(xs, 0.99)),
  last: Math.round(quantile(xs, 1)),
});

/** What a failed dial's log line says, in a few kinds. */
function classify(text: string): string {
  if (/handshakes from your address/.test(text)) return "busy (per-source in progress)";
  if (
    /closed it without|ended in the handshake|HandshakeCut|end of|without answering|closed/i.test(
      text,
    )
  ) {
    return "cut without a word (rate drop / busy pool)";
  }
  if (/no answer within/.test(text)) return "timeout (gated/black hole)";
  if (/aborted/.test(text)) return "aborted";
  return text.replace(/\d+/g, "#").slice(0, 90);
}

/** Every 500 ms after the fault: handshakes in progress at the server, drops so far, sessions resumed so far. */
function timeline(samples: StatsSample[], faultAt: number): string[] {
  const out: string[] = [];
  if (samples.length === 0) return out;
  const first = samples[0];
  const end = samples[samples.length - 1].t;
  for (let t = 0; t <= end && out.length < 140; t += 500) {
    const x = samples.find((y) => y.t >= t) ?? samples[samples.length - 1];
    const resumed = sessions.filter((s) =>
      s.resumed.some((r) => r.at > faultAt && r.at - faultAt <= t)
    ).length;
    out.push(
      `${t}ms h=${x.h} busyTold=${x.src - first.src} cut=${x.rate - first.rate} pool=${
        x.busy - first.busy
      } resumed=${resumed}`,
    );
  }
  return out;
}

// --- /proc ------------------------------------------------------------------

let msPerTick = 10;

/** A /proc file, read by `cat`: Deno lets only --allow-all read /proc itself. */
async function readProc(path: string): Promise<string> {
  const out = await new Deno.Command("cat", { args: [path], stdout: "piped", stderr: "null" })
    .output();
  return new TextDecoder().decode(out.stdout);
}

/** Kernel counters: SYNs dropped because a listen queue was full, SYN retransmissions. */
async function netstat() {
  const tcpExt = (await readProc("/proc/net/netstat")).split("\n")
    .filter((line) => line.startsWith("TcpExt:"));
  const names = tcpExt[0].split(" ");
  const values = tcpExt[1].split(" ");
  const get = (name: string) => Number(values[names.indexOf(name)]);
  return { listenDrops: get("ListenDrops"), synRetrans: get("TCPSynRetrans") };
}

/** CPU time (user + system, ms) each process has used so far. */
async function cpuNow(server: Child, proxy: Child) {
  const of = async (pid: number) => {
    try {
      // Fields after the command name, which may hold spaces: utime and stime are 12th and 13th.
      const fields = (await readProc(`/proc/${pid}/stat`)).split(") ")[1].split(" ");
      return (Number(fields[11]) + Number(fields[12])) * msPerTick;
    } catch (error) {
      console.error(`reading the CPU time of ${pid} failed: ${error}`);
      return NaN;
    }
  };
  const [client, serverMs, proxyMs] = await Promise.all([
    of(Deno.pid),
    of(server.process.pid),
    of(proxy.process.pid),
  ]);
  return { client, server: serverMs, proxy: proxyMs };
}

// --- One phase --------------------------------------------------------------

let lateness = watchTimerLateness(50);

async function phase(name: string, server: Child, proxy: Child) {
  const [kind, load] = name.split("-");
  const traffic = load === "traffic";
  if (trafficOn !== traffic) {
    trafficOn = traffic;
    for (const s of sessions) setTraffic(s, traffic);
  }
  // Steady state first: every session connected, the source's token bucket refilled.
  const settleUntil = now() + 10_000;
  await delay(3000);
  while (sessions.some((s) => s.conn!.state !== "connected") && now() < settleUntil) {
    await delay(50);
  }
  const before = await server.command<MarkAnswer>("mark");
  clientLines = [];
  connectMs = [];
  connectAborted = 0;
  connectFailed = 0;
  for (const s of sessions) {
    s.dials = [];
    s.gated = 0;
  }
  const sentBefore = sessions.reduce((a, s) => a + s.sent, 0);
  lateness[Symbol.dispose]();
  lateness = watchTimerLateness(50);
  const cpu0 = await cpuNow(server, proxy);
  const net0 = await netstat();
  const proxyAccepted0 = (await proxy.command<LagAnswer>("lag")).accepted;
  const faultAt = now();
  let restoreAt = faultAt;
  // Not awaited yet: in a dial storm this process may read the proxy's answer late.
  let answer: Promise<{ hit: number; t?: number }>;
  if (kind === "reset") {
    answer = proxy.command<FaultAnswer>("reset").catch(() => ({ hit: -1 }));
  } else {
    holed = true;
    answer = proxy.command<FaultAnswer>("hole").catch(() => ({ hit: -1 }));
    await delay(HOLE_MS);
    holed = false;
    restoreAt = now();
  }
  // Until every session has resumed (or ended), bounded.
  const deadline = now() + Math.min(90_000, timeLeft() - 15_000);
  const done = (s: Session) => s.closed !== null || s.resumed.some((r) => r.at > faultAt);
  while (!sessions.every(done) && now() < deadline) await delay(20);
  const allAt = now();
  const fault = await answer;
  const clientMaxLag = Math.round(lateness.max);
  // Lets the last resumes' log lines and counters land before they are read.
  await delay(300);
  const report = await server.command<ReportAnswer>("report");
  const proxyLag = await proxy.command<LagAnswer>("lag");
  const cpu = await cpuNow(server, proxy);
  const net1 = await netstat();

  const resumedAfter = sessions.map((s) => s.resumed.find((r) => r.at > faultAt))
    .filter((r) => r !== undefined);
  const own = resumedAfter.map((r) => r.at - faultAt);
  const sinceRestore = resumedAfter.map((r) => r.at - restoreAt);
  const downtime = resumedAfter.map((r) => r.downtime);
  const dialCounts = sessions.map((s) => s.dials.length);
  const gaps: number[] = [];
  const maxGaps: number[] = [];
  for (const s of sessions) {
    let longest = 0;
    for (let i = 1; i < s.dials.length; i++) {
      gaps.push(s.dials[i] - s.dials[i - 1]);
      longest = Math.max(longest, s.dials[i] - s.dials[i - 1]);
    }
    if (s.dials.length > 1) maxGaps.push(longest);
  }
  const failures: Record<string, number> = {};
  const clientByLevel: Record<string, number> = {};
  for (const line of clientLines) {
    clientByLevel[line.level] = (clientByLevel[line.level] ?? 0) + 1;
    const failed = line.text.match(/dial attempt \d+ failed: (.*)$/);
    if (failed) failures[classify(failed[1])] = (failures[classify(failed[1])] ?? 0) + 1;
  }
  // The server idle while sessions still waited: samples from the path's
  // return to the last resume with no handshake in progress.
  const lastResume = Math.max(...own);
  const waiting = report.samples.filter((x) => x.t <= lastResume && x.t >= restoreAt - faultAt);
  const idle = waiting.filter((x) => x.h === 0).length;
  const dropped = (k: "droppedPerSource" | "droppedRate" | "droppedBusy" | "refusedAuth") =>
    report.stats[k] - before.stats[k];
  const result = {
    phase: name,
    N,
    limits: LIMITS + (PROBE ? `+probe${PROBE}` : ""),
    linksHit: fault.hit,
    faultAtProxyMs: Math.round((fault.t ?? NaN) - (performance.timeOrigin + faultAt)),
    resumed: resumedAfter.length,
    sessionsEnded: sessions.filter((s) => s.closed !== null).length,
    allResumedMs: resumedAfter.length === N ? Math.round(allAt - faultAt) : null,
    ownClockMs: spread(own),
    sinceRestoreMs: kind === "hole" ? spread(sinceRestore) : undefined,
    downtimeMs: spread(downtime),
    lostMs: spread(
      sessions.map((s) => s.reconnectingAt.find((t) => t > faultAt))
        .filter((t) => t !== undefined).map((t) => t - faultAt),
    ),
    firstDialMs: spread(sessions.filter((s) => s.dials.length).map((s) => s.dials[0] - faultAt)),
    realDials: dialCounts.reduce((a, b) => a + b, 0),
    tcpConnect: {
      ok: connectMs.length,
      msMedian: Math.round(quantile(connectMs, 0.5)),
      msP99: Math.round(quantile(connectMs, 0.99)),
      abortedBeforeConnected: connectAborted,
      failed: connectFailed,
    },
    gatedDials: sessions.reduce((a, s) => a + s.gated, 0),
    dialsPerSession: { median: quantile(dialCounts, 0.5), max: Math.max(...dialCounts) },
    dialGapMs: gaps.length ? spread(gaps) : null,
    maxGapPerSessionMs: maxGaps.length ? spread(maxGaps) : null,
    server: {
      droppedPerSource_busyTold: dropped("droppedPerSource"),
      droppedRate_cutSilently: dropped("droppedRate"),
      droppedBusy_pool: dropped("droppedBusy"),
      refusedAuth: dropped("refusedAuth"),
      logLines: report.logLines,
      byLevel: report.byLevel,
      byTemplate: report.byTemplate,
      handshakeFailures: report.failures,
      sampleLines: report.sampleLines,
      maxHandshaking: Math.max(0, ...report.samples.map((x) => x.h)),
      idleWhileWaitingPct: waiting.length ? Math.round((100 * idle) / waiting.length) : null,
      serverSessionsEnded: report.serverClosed,
      serverMaxEventLoopLagMs: report.maxLag,
    },
    client: { logLines: clientLines.length, byLevel: clientByLevel, dialFailures: failures },
    clientMaxEventLoopLagMs: clientMaxLag,
    proxyMaxEventLoopLagMs: proxyLag.maxLag,
    kernel: {
      listenQueueDrops: net1.listenDrops - net0.listenDrops,
      synRetransmits: net1.synRetrans - net0.synRetrans,
    },
    proxyAcceptedDuringPhase: proxyLag.accepted - proxyAccepted0,
    cpuMsDuringPhase: {
      client: cpu.client - cpu0.client,
      server: cpu.server - cpu0.server,
      proxy: cpu.proxy - cpu0.proxy,
    },
    timeline: timeline(report.samples, faultAt),
    recordsSentDuringPhase: sessions.reduce((a, s) => a + s.sent, 0) - sentBefore,
  };
  console.log(JSON.stringify(result));
  const restored = result.sinceRestoreMs;
  console.error(
    `${name}: N=${N} (${result.limits}), ${result.resumed} resumed, ${result.sessionsEnded} ended; ` +
      (result.allResumedMs === null
        ? `not all resumed within ${Math.round(allAt - faultAt)} ms`
        : `all resumed ${result.allResumedMs} ms after the fault`) +
      (restored
        ? ` (${restored.last} ms after the path came back, median ${restored.median})`
        : "") +
      `; ${result.realDials} dials` +
      (kind === "hole" ? ` (+${result.gatedDials} into the hole)` : "") +
      `; server dropped ${result.server.droppedPerSource_busyTold} (per source), ` +
      `${result.server.droppedRate_cutSilently} (rate), ${result.server.droppedBusy_pool} (pool)`,
  );
}

// --- Main -------------------------------------------------------------------

async function main(): Promise<number> {
  const bad = badOption();
  if (bad !== undefined) {
    console.error(`herd_resume: ${bad}`);
    return 2;
  }
  const ticks = await new Deno.Command("getconf", { args: ["CLK_TCK"], stdout: "piped" }).output();
  msPerTick = 1000 / (Number(new TextDecoder().decode(ticks.stdout)) || 100);

  const server = new Child("the server", "./_herd_server.ts", [
    JSON.stringify(LIMITS_BY_NAME[LIMITS]),
  ]);
  const serverPort = (await server.next<{ port: number }>()).port;
  const proxy = new Child("the proxy", "./_herd_proxy.ts", [String(serverPort)]);
  const proxyPort = (await proxy.next<{ port: number }>()).port;

  try {
    const opened = await openAll(proxyPort);
    console.log(JSON.stringify({ N, limits: LIMITS, ...opened }));
    console.error(
      `opened ${N} sessions in ${opened.openMs} ms (${opened.openFailures} failed attempts)`,
    );
    for (const name of PHASES) {
      // Too little for a phase: 3 s to settle, the fault and the resumes, and
      // the 15 s a phase keeps for what follows it.
      if (timeLeft() < 25_000) {
        console.log(JSON.stringify({ skipped: name, reason: "time budget" }));
        console.error(`${name}: skipped, no time left`);
        continue;
      }
      await phase(name, server, proxy);
    }
    // Drain: stop writing, wait for every record to come back, check the sequence.
    for (const s of sessions) setTraffic(s, false);
    const drainUntil = now() + Math.min(15_000, Math.max(1000, timeLeft() - 3000));
    while (sessions.some((s) => s.received < s.sent && s.closed === null) && now() < drainUntil) {
      await delay(50);
    }
    const final = {
      final: true,
      recordsSent: sessions.reduce((a, s) => a + s.sent, 0),
      recordsEchoed: sessions.reduce((a, s) => a + s.received, 0),
      sessionsShort: sessions.filter((s) => s.received !== s.sent).length,
      seqErrors: sessions.reduce((a, s) => a + s.seqErrors, 0),
      sessionsEnded: sessions.filter((s) => s.closed !== null).length,
      endedReasons: [...new Set(sessions.map((s) => s.closed).filter((x) => x))].slice(0, 3),
      totalMs: Math.round(now() - started),
    };
    console.log(JSON.stringify(final));
    console.error(
      `end: ${final.recordsSent} records sent, ${final.recordsEchoed} echoed ` +
        `(${final.sessionsShort} sessions short), ${final.seqErrors} out of sequence, ` +
        `${final.sessionsEnded} sessions ended; ${(final.totalMs / 1000).toFixed(1)} s in all`,
    );
    return 0;
  } finally {
    for (const s of sessions) {
      setTraffic(s, false);
      s.conn?.close();
    }
    // Asked to quit first; stopAll() then stops whichever did not.
    await Promise.all(
      [server, proxy].map((child) => child.command("quit", 5000).catch(() => {})),
    );
  }
}

const watchdog = setTimeout(() => {
  console.error(`herd_resume: still running after ${HARD_LIMIT_MS / 1000} s; stopping`);
  stopAll().finally(() => Deno.exit(1));
}, HARD_LIMIT_MS);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => {
    console.error(`herd_resume: ${signal}; stopping`);
    stopAll().finally(() => Deno.exit(130));
  });
}
let code = 1;
try {
  code = await main();
} catch (error) {
  console.error(`herd_resume: ${(error as Error).message}`);
} finally {
  lateness[Symbol.dispose]();
  await stopAll();
  clearTimeout(watchdog);
}
// Sessions' timers and the children's pipes would keep the process alive.
Deno.exit(code);
