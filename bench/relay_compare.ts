// Our relay against a Socket.IO 4 server: same nodes, same rates, same
// latency measurement, one run.
//
//   deno run --allow-net=127.0.0.1 --allow-run=bash --allow-read=/tmp --allow-write=/tmp bench/relay_compare.ts
//   deno task bench:relay-compare --nodes 10000
//
// Installs socket.io (an exact version, with npm) into a temporary folder
// under /tmp, removed at the end. Then, one server at a time, each in its own
// process with `ulimit -n` raised to the hard limit: cli/relay.ts (the flags
// bench/relay_load.ts uses, its default keep-alive) and bench/_socketio_server.mjs
// under Node (WebSocket transport only, no compression, rooms, broadcast to the
// room without the sender). Each is driven by the same load generator process,
// bench/_relay_compare_worker.ts, which speaks either protocol: N nodes in rooms
// of 10, one sender per room, offered deliveries/s stepping through a ladder
// after a warm-up. Per server and step: offered and delivered deliveries/s, the
// delivered fraction (with lost and duplicated deliveries), p50/p99/max latency,
// the server's CPU % (utime + stime from /proc) and RSS, and the generator's
// CPU %. Then the highest rate each sustains with every message delivered and
// p99 under the limit, and the ratio ours / Socket.IO.
import { parseArgs } from "node:util";

const USAGE = `Usage: deno run --allow-net=127.0.0.1 --allow-run=bash --allow-read=/tmp \\
         --allow-write=/tmp bench/relay_compare.ts [options]

Runs our relay (cli/relay.ts) and a Socket.IO 4 server (Node, npm socket.io
installed into a temporary folder) one after the other under the same load:
N nodes in rooms of 10, one sender per room, broadcast to the room (9
deliveries per message), offered deliveries/s stepping through a ladder.

Options:
  --nodes N            nodes (default 1000)
  --steps A,B,...      offered deliveries/s per step, ascending (default
                       10000,20000,40000,60000,80000; with --nodes over 2000:
                       10000,25000,50000,75000,100000)
  --seconds S          seconds of load per step (default 5)
  --warmup S           seconds of warm-up at the first step's rate, not
                       reported (default 3; 0 for none)
  --drain S            after each step, wait at most S seconds for deliveries
                       still on their way (default 5)
  --p99 MS             p99 limit for "sustained" (default 50; 100 with --nodes
                       of 10000 or more)
  --only SERVER        immortal or socketio: run one server only
  --keep-alive MS      our relay's --keep-alive (default: the relay's own);
                       Socket.IO's stays at its default, 25000 ms
  --before DIR         also run the relay of another checkout of this
                       repository (e.g. a git worktree of an older commit),
                       first: before and after in the same run
  --stop-below F       skip the higher steps after a step that delivered
                       less than this fraction of its messages (default 0.9)
  -h, --help           this text

Needs bash, node (>= 18) and npm on PATH; the hard limit of open files
(ulimit -Hn) must exceed the node count.`;

/** The Socket.IO release measured (exact: results must name what ran). */
const SOCKET_IO_VERSION = "4.8.3";
const ROOT = new URL("..", import.meta.url).pathname;
const deno = Deno.execPath();
const SERVERS = ["immortal", "socketio"] as const;
/** `before`: our relay from another checkout (--before), for before/after in one run. */
type Server = typeof SERVERS[number] | "before";
const LABEL: Record<Server, string> = {
  immortal: "immortal relay",
  socketio: "Socket.IO",
  before: "immortal relay, before",
};

class UsageError extends Error {}

function options() {
  const { values } = parseArgs({
    args: Deno.args,
    strict: true,
    allowPositionals: false,
    options: {
      nodes: { type: "string", default: "1000" },
      steps: { type: "string" },
      seconds: { type: "string", default: "5" },
      warmup: { type: "string", default: "3" },
      drain: { type: "string", default: "5" },
      p99: { type: "string" },
      only: { type: "string" },
      "keep-alive": { type: "string" },
      before: { type: "string" },
      "stop-below": { type: "string", default: "0.9" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const num = (name: string, text: string, min: number, max: number) => {
    const n = Number(text);
    if (text.trim() === "" || !Number.isFinite(n) || n < min || n > max) {
      throw new UsageError(`--${name} must be a number from ${min} to ${max}, not "${text}"`);
    }
    return n;
  };
  const nodes = Math.round(num("nodes", values.nodes, 2, 100_000));
  const steps = values.steps === undefined
    ? nodes > 2000 ? [10_000, 25_000, 50_000, 75_000, 100_000] : [
      10_000,
      20_000,
      40_000,
      60_000,
      80_000,
    ]
    : values.steps.split(",").map((s) => num("steps", s, 1, 10_000_000));
  if (steps.length === 0 || steps.length > 50) throw new UsageError("--steps: 1 to 50 rates");
  steps.sort((a, b) => a - b);
  if (values.only !== undefined && !(SERVERS as readonly string[]).includes(values.only)) {
    throw new UsageError(`--only must be immortal or socketio, not "${values.only}"`);
  }
  return {
    nodes,
    steps: [...new Set(steps)],
    seconds: num("seconds", values.seconds, 0.5, 600),
    warmup: num("warmup", values.warmup, 0, 600),
    drain: num("drain", values.drain, 0.5, 120),
    p99: values.p99 === undefined ? (nodes >= 10_000 ? 100 : 50) : num("p99", values.p99, 1, 1e6),
    servers: [
      ...(values.before === undefined ? [] : ["before" as const]),
      ...(values.only === undefined ? [...SERVERS] : [values.only as Server]),
    ],
    before: values.before,
    keepAlive: values["keep-alive"] === undefined
      ? undefined
      : Math.round(num("keep-alive", values["keep-alive"], 10, 3_600_000)),
    stopBelow: num("stop-below", values["stop-below"], 0, 1),
  };
}

// --- Processes --------------------------------------------------------------

/** Every child started here, by PID, stopped at the end (also after a failure). */
const children = new Map<number, Deno.ChildProcess>();
let tmp: string | undefined;

/** `cmd args...` through bash with `ulimit -n` raised to the hard limit (exec: same PID). */
function spawn(
  cmd: string,
  args: string[],
  opts: { stdout?: "piped" | "null"; stdin?: "piped" | "null"; env?: Record<string, string> } = {},
): Deno.ChildProcess {
  const child = new Deno.Command("bash", {
    args: ["-c", 'ulimit -n "$(ulimit -Hn)" && exec "$0" "$@"', cmd, ...args],
    cwd: ROOT,
    env: opts.env,
    stdin: opts.stdin ?? "null",
    stdout: opts.stdout ?? "null",
    stderr: "inherit",
  }).spawn();
  children.set(child.pid, child);
  child.status.finally(() => children.delete(child.pid));
  return child;
}

/** SIGTERM, then SIGKILL after 5 s; waits for the exit. */
async function stop(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch {
    // Already gone.
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const killed = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // Gone meanwhile.
      }
      resolve();
    }, 5000);
  });
  await Promise.race([child.status, killed]);
  clearTimeout(timer);
  await child.status;
}

async function cleanup(): Promise<void> {
  await Promise.all([...children.values()].map(stop));
  if (tmp !== undefined) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    tmp = undefined;
  }
}

/** A bash script's output (stdout, stderr, exit code), killed after `timeoutMs`. */
async function sh(script: string, args: string[] = [], timeoutMs = 10_000) {
  const out = await new Deno.Command("bash", {
    args: ["-c", script, "bash", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutMs),
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

async function waitForPort(port: number, server: Deno.ChildProcess): Promise<void> {
  let exited = false;
  server.status.then(() => exited = true);
  const deadline = Date.now() + 20_000;
  while (!exited && Date.now() < deadline) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(exited ? "the relay exited at its start" : "the relay did not listen in 20 s");
}

/** Lines of a child's stdout. */
async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buffered = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    buffered += text;
    const parts = buffered.split("\n");
    buffered = parts.pop()!;
    yield* parts;
  }
  if (buffered !== "") yield buffered;
}

let clockTicks = 100;

/** CPU seconds (utime + stime) and RSS (KiB) of each PID, from /proc (read by bash: Deno's
 * permissions let only -A read /proc). */
async function sample(pids: number[]): Promise<Map<number, { cpu: number; rssKiB: number }>> {
  const out = await sh(
    'for p; do echo "$p|$(cat /proc/$p/stat)|$(grep VmRSS /proc/$p/status)"; done',
    pids.map(String),
  );
  const result = new Map<number, { cpu: number; rssKiB: number }>();
  for (const line of out.stdout.trim().split("\n")) {
    const [pid, stat, rss] = line.split("|");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields.length < 13) continue;
    result.set(Number(pid), {
      cpu: (Number(fields[11]) + Number(fields[12])) / clockTicks,
      rssKiB: Number(rss.match(/\d+/)?.[0] ?? NaN),
    });
  }
  return result;
}

// --- One server under the ladder ---------------------------------------------

interface Step {
  offered: number;
  sentPerSecond: number;
  expected: number;
  delivered: number;
  deliveredPerSecond: number;
  fraction: number;
  lost: number;
  duplicates: number;
  late: number;
  unexpected: number;
  closed: number;
  tailMs: number | null;
  p50: number | null;
  p99: number | null;
  max: number | null;
  serverCpu: number;
  serverRssMiB: number;
  workerCpu: number;
}

interface Run {
  server: Server;
  connected: { nodes: number; seconds: number; rssMiB: number; perNodeKiB: number };
  steps: Step[];
  skipped: number[];
}

async function runServer(
  server: Server,
  opts: ReturnType<typeof options>,
  nodeModules?: string,
): Promise<Run> {
  const port = freePort();
  let proc: Deno.ChildProcess;
  if (server === "immortal" || server === "before") {
    const cli = server === "before" ? `${opts.before}/cli/relay.ts` : "cli/relay.ts";
    // A relay without a secret starts only when asked to be open (since --open
    // came); a checkout from before it knows no such flag.
    const knowsOpen = server === "immortal" || (await Deno.readTextFile(cli)).includes("--open");
    const open = knowsOpen ? ["--open"] : [];
    proc = spawn(deno, [
      "run",
      `--allow-net=127.0.0.1:${port}`,
      cli,
      ...open,
      ...["--hostname", "127.0.0.1", "--port", String(port)],
      ...["--max-nodes", "100000", "--max-sessions", "100000", "--rate", "100000"],
      ...["--log-level", "warning"],
      ...(opts.keepAlive === undefined ? [] : ["--keep-alive", String(opts.keepAlive)]),
    ]);
    await waitForPort(port, proc);
  } else {
    proc = spawn("node", ["bench/_socketio_server.mjs", String(port)], {
      stdout: "piped",
      env: { NODE_PATH: nodeModules! },
    });
    const out = lines(proc.stdout);
    const first = await Promise.race([
      out.next(),
      new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 20_000)),
    ]);
    if (first === "timeout" || first.done || !first.value.startsWith("listening")) {
      throw new Error("the Socket.IO server did not start (see its error above)");
    }
    console.error(`${first.value}`);
    (async () => {
      for await (const line of out) console.error(`socket.io server: ${line}`);
    })();
  }
  const idle = (await sample([proc.pid])).get(proc.pid)!;
  const config = {
    protocol: server === "before" ? "immortal" : server,
    port,
    nodes: opts.nodes,
    size: 10,
    steps: opts.steps,
    seconds: opts.seconds,
    warmup: opts.warmup,
    drain: opts.drain,
    stopBelow: opts.stopBelow,
  };
  const worker = spawn(deno, [
    "run",
    "--allow-net=127.0.0.1",
    "bench/_relay_compare_worker.ts",
    JSON.stringify(config),
  ], { stdout: "piped", stdin: "piped" });
  const control = worker.stdin.getWriter();
  const proceed = () => control.write(new TextEncoder().encode("\n")).catch(() => {});
  // The worker bounds itself; this is the backstop.
  const budget = 240 + opts.warmup + opts.drain +
    opts.steps.length * (opts.seconds + opts.drain + 5);
  const watchdog = setTimeout(() => {
    console.error(`${LABEL[server]}: the load generator overran ${budget} s; stopping it`);
    stop(worker);
  }, budget * 1000);
  const run: Run = {
    server,
    connected: { nodes: 0, seconds: 0, rssMiB: 0, perNodeKiB: 0 },
    steps: [],
    skipped: [],
  };
  let before = new Map<number, { cpu: number; rssKiB: number }>();
  let startedAt = 0;
  try {
    for await (const line of lines(worker.stdout)) {
      const r = JSON.parse(line);
      if (r.phase === "connected") {
        const now = (await sample([proc.pid])).get(proc.pid)!;
        run.connected = {
          nodes: r.nodes,
          seconds: r.seconds,
          rssMiB: now.rssKiB / 1024,
          perNodeKiB: (now.rssKiB - idle.rssKiB) / r.nodes,
        };
        console.error(
          `${LABEL[server]}: ${r.nodes} nodes connected in ${r.seconds.toFixed(1)} s, RSS ${
            run.connected.rssMiB.toFixed(0)
          } MiB`,
        );
        await proceed();
      } else if (r.phase === "start") {
        before = await sample([proc.pid, worker.pid]);
        startedAt = performance.now();
        await proceed();
      } else if (r.phase === "step" || r.phase === "warmup") {
        const after = await sample([proc.pid, worker.pid]);
        const wall = (performance.now() - startedAt) / 1000;
        const cpu = (pid: number) =>
          100 * ((after.get(pid)?.cpu ?? NaN) - (before.get(pid)?.cpu ?? NaN)) / wall;
        const step: Step = {
          ...r,
          serverCpu: cpu(proc.pid),
          workerCpu: cpu(worker.pid),
          serverRssMiB: (after.get(proc.pid)?.rssKiB ?? NaN) / 1024,
        };
        console.error(
          `${LABEL[server]} ${r.phase === "warmup" ? "warm-up" : "step"}: ${
            JSON.stringify(step, (_k, v) => typeof v === "number" ? Math.round(v * 10) / 10 : v)
          }`,
        );
        if (r.phase === "step") run.steps.push(step);
        await proceed();
      } else if (r.phase === "stopped") {
        run.skipped = r.skipped;
        console.error(
          `${LABEL[server]}: delivered too little at ${r.after}/s; skipping ${
            r.skipped.join(", ")
          }`,
        );
      }
    }
    const status = await worker.status;
    if (!status.success) throw new Error(`${LABEL[server]}: the load generator failed`);
  } finally {
    clearTimeout(watchdog);
    await control.close().catch(() => {});
    await stop(worker);
    await stop(proc);
  }
  return run;
}

// --- Report ------------------------------------------------------------------

const int = (n: number) => Math.round(n).toLocaleString("en-US");
const ms = (n: number | null) => n === null ? "–" : n >= 100 ? int(n) : n.toFixed(1);
const pctText = (f: number) => f === 1 ? "100%" : `${(Math.floor(f * 10_000) / 100).toFixed(2)}%`;

function sustained(steps: Step[], p99: number): number | undefined {
  // The highest step with every message delivered once and p99 under the limit,
  // every lower step passing too.
  let best: number | undefined;
  for (const s of steps) {
    const ok = s.lost === 0 && s.duplicates === 0 && s.unexpected === 0 && s.closed === 0 &&
      s.p99 !== null && s.p99 < p99;
    if (!ok) break;
    best = s.offered;
  }
  return best;
}

function report(runs: Run[], opts: ReturnType<typeof options>, versions: string) {
  const rooms = Math.ceil(opts.nodes / 10);
  console.log(
    `\n${int(opts.nodes)} nodes in ${int(rooms)} rooms of 10, one sender per room (9 deliveries ` +
      `per message); ${opts.seconds} s per step after a ${opts.warmup} s warm-up; ${versions}.`,
  );
  console.log(
    `Keep-alive: ${
      opts.keepAlive === undefined
        ? "each relay's default"
        : `our relay --keep-alive ${int(opts.keepAlive)}`
    } (ours since #14: 10,000 ms, pinging only nodes it has not both heard from and written ` +
      `to; before: 1,000 ms, every node); Socket.IO (Engine.IO): 25,000 ms.\n`,
  );
  for (const run of runs) {
    const c = run.connected;
    console.log(
      `${LABEL[run.server]}: ${int(c.nodes)} nodes connected in ${c.seconds.toFixed(1)} s; ` +
        `server RSS ${c.rssMiB.toFixed(0)} MiB, ${c.perNodeKiB.toFixed(1)} KiB per node`,
    );
  }
  console.log("");
  console.log(
    "| server | offered deliveries/s | delivered/s | delivered | lost / dup | p50 ms | p99 ms | max ms | server CPU | server RSS MiB | generator CPU |",
  );
  console.log(
    "| ------ | -------------------- | ----------- | --------- | ---------- | ------ | ------ | ------ | ---------- | -------------- | ------------- |",
  );
  const notes = new Set<string>();
  for (const run of runs) {
    for (const s of run.steps) {
      let extra = "";
      if (s.closed > 0) {
        extra += ` (${s.closed} nodes dropped)`;
        notes.add("nodes dropped: connections the server closed during the step");
      }
      if (s.late > 0) {
        extra += ` (${int(s.late)} late)`;
        notes.add("late: deliveries of an earlier step's messages that arrived after its drain");
      }
      console.log(
        `| ${LABEL[run.server]} | ${int(s.offered)} | ${int(s.deliveredPerSecond)} | ${
          pctText(s.fraction)
        } | ${int(s.lost)} / ${int(s.duplicates)}${extra} | ${ms(s.p50)} | ${ms(s.p99)} | ${
          ms(s.max)
        } | ${s.serverCpu.toFixed(0)}% | ${s.serverRssMiB.toFixed(0)} | ${
          s.workerCpu.toFixed(0)
        }% |`,
      );
    }
    for (const skipped of run.skipped) {
      console.log(`| ${LABEL[run.server]} | ${int(skipped)} | skipped | | | | | | | | |`);
    }
  }
  for (const note of notes) console.log(`\n${note}`);
  console.log(
    `\nHighest rate sustained with every message delivered and p99 < ${opts.p99} ms ` +
      `(every lower step passing too):`,
  );
  const best = new Map<Server, number | undefined>();
  for (const run of runs) {
    const b = sustained(run.steps, opts.p99);
    best.set(run.server, b);
    const top = run.steps.length > 0 && b === run.steps[run.steps.length - 1].offered &&
      run.skipped.length === 0;
    console.log(
      `- ${LABEL[run.server]}: ${
        b === undefined
          ? "none of the steps"
          : `${int(b)} deliveries/s${top ? " (the top step: at least)" : ""}`
      }`,
    );
  }
  const ours = best.get("immortal");
  const theirs = best.get("socketio");
  if (best.has("immortal") && best.has("socketio")) {
    console.log(
      `- ratio ours / Socket.IO: ${
        ours !== undefined && theirs !== undefined ? (ours / theirs).toFixed(2) : "n/a"
      }`,
    );
  }
}

// --- Main ------------------------------------------------------------------------

async function main(): Promise<number> {
  let opts: ReturnType<typeof options>;
  try {
    opts = options();
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const env = await sh(
    "ulimit -Hn; getconf CLK_TCK; node --version 2>/dev/null || echo missing; npm --version 2>/dev/null || echo missing; nproc",
  );
  const [hard, ticks, nodeVersion, npmVersion, cores] = env.stdout.trim().split("\n");
  clockTicks = Number(ticks) || 100;
  if (hard !== "unlimited" && Number(hard) < opts.nodes + 256) {
    console.error(
      `the hard limit of open files (ulimit -Hn) is ${hard}: ${opts.nodes} nodes need more`,
    );
    return 1;
  }
  let nodeModules: string | undefined;
  let versions = `Deno ${Deno.version.deno}`;
  if (opts.servers.includes("socketio")) {
    if (nodeVersion === "missing" || npmVersion === "missing") {
      console.error(
        "Socket.IO runs under Node: node and npm must be on PATH (or run with --only immortal)",
      );
      return 1;
    }
    if (Number(nodeVersion.match(/^v(\d+)/)?.[1] ?? 0) < 18) {
      console.error(`node ${nodeVersion} is too old: Node 18 or later`);
      return 1;
    }
    tmp = await Deno.makeTempDir({ dir: "/tmp", prefix: "immortal-socketio-" });
    console.error(`installing socket.io@${SOCKET_IO_VERSION} into ${tmp} ...`);
    const install = await sh(
      'exec npm install --prefix "$1" "socket.io@$2" --no-audit --no-fund --no-save --loglevel=error',
      [tmp, SOCKET_IO_VERSION],
      300_000,
    ).catch((error) => ({ code: -1, stdout: "", stderr: String(error) }));
    nodeModules = `${tmp}/node_modules`;
    const installed = install.code === 0
      ? await Deno.readTextFile(`${nodeModules}/socket.io/package.json`)
        .then((text) => JSON.parse(text).version as string).catch(() => undefined)
      : undefined;
    if (installed === undefined) {
      console.error(
        `npm install socket.io@${SOCKET_IO_VERSION} failed (exit ${install.code}):\n${
          install.stderr.trim().split("\n").slice(-15).join("\n")
        }`,
      );
      return 1;
    }
    versions += `, Node ${nodeVersion}, socket.io ${installed}`;
  }
  versions += `, ${cores} cores`;
  if (opts.before !== undefined) {
    const found = await Deno.stat(`${opts.before}/cli/relay.ts`).then(() => true, () => false);
    if (!found) {
      console.error(
        `--before ${opts.before}: no cli/relay.ts there (a checkout of this repository?)`,
      );
      return 1;
    }
  }
  const runs: Run[] = [];
  for (const server of opts.servers) {
    console.error(`--- ${LABEL[server]} ---`);
    runs.push(await runServer(server, opts, nodeModules));
  }
  report(runs, opts, versions);
  return 0;
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => {
    console.error(`${signal}: stopping`);
    cleanup().finally(() => Deno.exit(130));
  });
}
let code = 1;
try {
  code = await main();
} catch (error) {
  console.error(`relay_compare: ${(error as Error).message}`);
} finally {
  await cleanup();
}
Deno.exit(code);
