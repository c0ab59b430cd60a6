// The server of bench/herd_resume.ts, in a process of its own so that the
// handshakes of a herd of resuming sessions are not run on the clients' event
// loop: an echo listener (with a key, so that sessions are not capped per
// source), every LogTape record it writes counted, and its `stats` sampled
// while a phase runs.
//
//   deno run --allow-net=127.0.0.1 bench/_herd_server.ts '{"maxHandshakesPerSource":1024}'
//
// The argument is the listener's per-source handshake limits, as JSON (`{}`:
// the library's defaults). It prints `{"port":N}` once listening, then answers
// each command line on stdin with one JSON line on stdout:
//
//   mark    a phase starts: forget the log and samples so far, sample
//           `listener.stats` every 20 ms from now; answers the stats now;
//   report  the phase is over: stop sampling; answers what the log said (by
//           level, by template, handshake failures), the samples, the sessions
//           that ended and the event loop's worst lateness since `mark`;
//   quit    close the listener and exit.
//
// It also exits when its stdin ends: it must not outlive the bench.
import { configure, type LogRecord } from "@logtape/logtape";
import { listen, type ListenerStats, type ListenOptions } from "../mod.ts";
import { renderRecord, watchTimerLateness } from "../tests/_helpers.ts";
import { TextLineStream } from "../tests/_lines.ts";

/** The listener settings bench/herd_resume.ts varies (`--limits`). */
export type HerdLimits = Pick<
  ListenOptions,
  "maxHandshakesPerSource" | "maxHandshakeRatePerSource"
>;

/** `listener.stats` at one moment, `t` ms after `mark`. */
export interface StatsSample {
  t: number;
  /** Links in their handshake. */
  h: number;
  /** `droppedBusy`: all handshake slots taken. */
  busy: number;
  /** `droppedPerSource`: the source had its share of slots (it is told so). */
  src: number;
  /** `droppedRate`: the source started handshakes too fast (cut without a word). */
  rate: number;
}

/** The answer to `mark`. */
export interface MarkAnswer {
  ok: true;
  stats: ListenerStats;
}

/** The answer to `report`: what happened at the server since `mark`. */
export interface ReportAnswer {
  /** Handshake failures the log told of, by message (digits masked). */
  failures: Record<string, number>;
  stats: ListenerStats;
  logLines: number;
  byLevel: Record<string, number>;
  /** Records by level and message template: which kinds of line an operator would see. */
  byTemplate: Record<string, number>;
  /** The first few records above debug, rendered. */
  sampleLines: string[];
  samples: StatsSample[];
  /** Sessions that ended at the server since it started. */
  serverClosed: number;
  /** The event loop's worst timer lateness since `mark` (ms). */
  maxLag: number;
}

// Bounds on what one phase keeps: a dial storm of 500 sessions may log far
// more, and the counts stop growing rather than memory.
const MAX_LINES = 20_000;
const MAX_SAMPLES = 20_000;
const SAMPLE_EVERY_MS = 20;

const limits: HerdLimits = JSON.parse(Deno.args[0] ?? "{}");

let lines: { level: string; template: string; text: string }[] = [];
await configure({
  sinks: {
    count(record: LogRecord) {
      if (lines.length >= MAX_LINES) return;
      lines.push({
        level: record.level,
        template: String(record.rawMessage).slice(0, 70),
        text: renderRecord(record).slice(0, 300),
      });
    },
  },
  loggers: [
    { category: ["immortal"], lowestLevel: "debug", sinks: ["count"] },
    { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
  ],
});

const listener = listen({ hostname: "127.0.0.1", port: 0, key: "herd", ...limits });
let serverClosed = 0;
(async () => {
  for await (const conn of listener) {
    conn.readable.pipeTo(conn.writable).catch(() => {});
    conn.closed.then(() => serverClosed++, () => serverClosed++);
  }
})();

let samples: StatsSample[] = [];
let sampler: ReturnType<typeof setInterval> | undefined;
let markedAt = 0;
let lateness = watchTimerLateness(50);

function sample(): void {
  if (samples.length >= MAX_SAMPLES) return;
  const stats = listener.stats;
  samples.push({
    t: Math.round(performance.now() - markedAt),
    h: stats.handshaking,
    busy: stats.droppedBusy,
    src: stats.droppedPerSource,
    rate: stats.droppedRate,
  });
}

function report(): ReportAnswer {
  const byLevel: Record<string, number> = {};
  const byTemplate: Record<string, number> = {};
  const failures: Record<string, number> = {};
  for (const line of lines) {
    byLevel[line.level] = (byLevel[line.level] ?? 0) + 1;
    const template = `${line.level} ${line.template}`;
    byTemplate[template] = (byTemplate[template] ?? 0) + 1;
    const failure = line.text.match(/Handshake with .* failed: (.*)$/);
    if (failure) {
      const kind = failure[1].replace(/\d+/g, "#").slice(0, 80);
      failures[kind] = (failures[kind] ?? 0) + 1;
    }
  }
  return {
    failures,
    stats: listener.stats,
    logLines: lines.length,
    byLevel,
    byTemplate,
    sampleLines: lines.filter((l) => l.level !== "debug").slice(0, 6).map((l) => l.text),
    samples,
    serverClosed,
    maxLag: Math.round(lateness.max),
  };
}

// console.log writes the whole line before returning, however long a report is.
console.log(JSON.stringify({ port: listener.addr.port }));

const commands = Deno.stdin.readable
  .pipeThrough(new TextDecoderStream())
  .pipeThrough(new TextLineStream());
for await (const command of commands) {
  switch (command.trim()) {
    case "mark": {
      lines = [];
      samples = [];
      markedAt = performance.now();
      lateness[Symbol.dispose]();
      lateness = watchTimerLateness(50);
      clearInterval(sampler);
      sampler = setInterval(sample, SAMPLE_EVERY_MS);
      const answer: MarkAnswer = { ok: true, stats: listener.stats };
      console.log(JSON.stringify(answer));
      break;
    }
    case "report":
      clearInterval(sampler);
      sampler = undefined;
      console.log(JSON.stringify(report()));
      break;
    case "quit":
      listener.close();
      console.log(JSON.stringify({ bye: true }));
      Deno.exit(0);
  }
}
// stdin ended: the bench is gone.
listener.close();
Deno.exit(0);
