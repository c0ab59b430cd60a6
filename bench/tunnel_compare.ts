// Tunnel throughput, latency and a database workload, side by side in one
// run on loopback: direct, a socat forwarder, `ssh -L`, and the immortal
// tunnel (plain and TLS), each forwarder in its own processes as deployed.
//
//   deno run --allow-net=127.0.0.1 --allow-run --allow-read --allow-write=/tmp --allow-env \
//     bench/tunnel_compare.ts [seconds] [pings] [--only=iperf,latency,pgbench] [--warmup=200] \
//     [--rounds=1] [--paths=direct,socat,...] [--pg-seconds=10] [--pg-scale=5] [--pg-clients=4] [--pg-threads=2] [--pg-modes=tpcb,select]
//
// Throughput (`iperf`): `iperf3 -c ... -t seconds` (Debian iperf3), receiver's Gbit/s.
// With `--rounds=N` every path is measured N times, the paths taking turns
// (this machine drifts by more than the differences between paths within
// minutes): medians, every round's figures, and the tunnel's ratio to the two plain
// forwarders per round, each from two measurements a few seconds apart.
// Latency (`latency`): `pings` 1-byte request/response round trips through each
// path to a Deno echo process, after `warmup` unmeasured ones (JIT warm-up:
// after 200 the tunnel's p99 is mostly a cold process's; after 20,000 it is a
// long-lived session's); median and p99 in µs, and the added median RTT over
// direct.
// Database (`pgbench`): a throwaway PostgreSQL cluster (bench/_pg.ts), filled
// with `pgbench -i -s scale`, then `pgbench -c clients -j threads -T
// pg-seconds` through each path, TPC-B-like (`tpcb`) and select-only
// (`select`, `-S`): tps, average latency, and tps relative to socat's.
// `--only` runs some sections alone; by default all three run. `--paths` runs
// only the paths whose names start with one of the given prefixes.
// "2 plain Deno forwarders" is a reference: the floor of any design with two
// Deno processes on the path. "2 node:net forwarders" is the same floor on
// Deno's `node:net` sockets, whose writes reach the kernel inside the call.
import { freePort } from "../tests/_helpers.ts";
import { iperf, spawn, sshForward, stopAll, waitForPort } from "./_processes.ts";
import { startSshd } from "../tests/_sshd.ts";
import { makeTestCerts } from "../tests/_tls.ts";
import { pgbench, pgbenchInit, type PgbenchResult, type PgCluster, startPostgres } from "./_pg.ts";
import { median } from "./_stats.ts";

/** `--name=value` from the command line, or `fallback`. */
function option(name: string, fallback: string): string {
  const prefix = `--${name}=`;
  return Deno.args.find((arg) => arg.startsWith(prefix))?.slice(prefix.length) ?? fallback;
}

const POSITIONAL = Deno.args.filter((arg) => !arg.startsWith("--"));
const SECONDS = Number(POSITIONAL[0] ?? 5);
const PINGS = Number(POSITIONAL[1] ?? 5000);
const SECTIONS = new Set(option("only", "iperf,latency,pgbench").split(","));
for (const section of SECTIONS) {
  if (!["iperf", "latency", "pgbench"].includes(section)) {
    throw new Error(`unknown section ${section}; use iperf, latency or pgbench`);
  }
}
/** `--paths=direct,socat,...`: only the paths whose names start so. */
const PATHS = option("paths", "") === "" ? null : option("paths", "").split(",");
const WARMUP = Number(option("warmup", "200"));
const ROUNDS = Number(option("rounds", "1"));
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) {
  throw new Error(`--rounds must be at least 1, got ${ROUNDS}`);
}
if (!Number.isInteger(WARMUP) || WARMUP < 0) {
  throw new Error(`--warmup must be a count, got ${WARMUP}`);
}
if (!Number.isInteger(PINGS) || PINGS < 100) {
  throw new Error(`pings must be at least 100, got ${PINGS}`);
}
const PG_SECONDS = Number(option("pg-seconds", "10"));
const PG_SCALE = Number(option("pg-scale", "5"));
const PG_CLIENTS = Number(option("pg-clients", "4"));
const PG_THREADS = Number(option("pg-threads", "2"));
const PG_MODES = option("pg-modes", "tpcb,select").split(",");
for (const mode of PG_MODES) {
  if (mode !== "tpcb" && mode !== "select") throw new Error(`unknown pgbench mode ${mode}`);
}
const CLI = new URL("../cli/tunnel.ts", import.meta.url).pathname;

/** A forwarding path: the port to dial, given the target port. */
type Path = { name: string; start(target: number): Promise<number> };

function socat(): Path {
  return {
    name: "socat forwarder",
    async start(target) {
      const port = freePort();
      spawn("socat", [
        `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`,
        `TCP:127.0.0.1:${target},nodelay`,
      ]);
      await waitForPort(port);
      return port;
    },
  };
}

function sshL(sshd: Awaited<ReturnType<typeof startSshd>>): Path {
  return {
    name: "ssh -L",
    async start(target) {
      return (await sshForward(sshd, target)).port;
    },
  };
}

function immortal(tls?: { dir: string }): Path {
  return {
    name: tls ? "immortal tunnel, TLS" : "immortal tunnel, plain",
    async start(target) {
      const serverPort = freePort();
      const clientPort = freePort();
      const deno = Deno.execPath();
      const read = tls ? [`--allow-read=${tls.dir}`] : [];
      spawn(deno, [
        "run",
        `--allow-net=127.0.0.1:${serverPort},127.0.0.1:${target}`,
        ...read,
        CLI,
        "server",
        String(serverPort),
        "127.0.0.1",
        String(target),
        "--listen-host",
        "127.0.0.1",
        "--log-level",
        "warning",
        ...(tls ? ["--tls-cert", `${tls.dir}/cert.pem`, "--tls-key", `${tls.dir}/key.pem`] : []),
      ]);
      await waitForPort(serverPort);
      spawn(deno, [
        "run",
        `--allow-net=127.0.0.1:${clientPort},127.0.0.1:${serverPort}`,
        ...read,
        CLI,
        "client",
        String(clientPort),
        "127.0.0.1",
        String(serverPort),
        "--log-level",
        "warning",
        ...(tls ? ["--tls-ca", `${tls.dir}/ca.pem`] : []),
      ]);
      await waitForPort(clientPort);
      return clientPort;
    },
  };
}

/**
 * Two chained forwarder processes running `script` (`deno eval`, arguments:
 * its port and its target's), client side and server side, like the
 * tunnel's two ends without sessions.
 */
function forwarders(name: string, script: string): Path {
  return {
    name,
    async start(target) {
      const far = freePort();
      const near = freePort();
      spawn(Deno.execPath(), ["eval", script, String(far), String(target)]);
      spawn(Deno.execPath(), ["eval", script, String(near), String(far)]);
      await waitForPort(far);
      await waitForPort(near);
      return near;
    },
  };
}

const NODE_FORWARD = `
import net from "node:net";
const [port, target] = Deno.args.map(Number);
net.createServer({ noDelay: true }, (c) => {
  const t = net.connect({ host: "127.0.0.1", port: target, noDelay: true });
  c.pipe(t);
  t.pipe(c);
  c.on("error", () => t.destroy());
  t.on("error", () => c.destroy());
}).listen(port, "127.0.0.1");`;

// A write may take only part of its bytes (the socket buffer is full): the
// rest is written again. (This reference once dropped it: ~0.1% of an iperf3
// run's bytes, and the syscalls a correct forwarder makes for them.)
const FORWARD = `
const [port, target] = Deno.args.map(Number);
const writeAll = async (c, bytes) => {
  for (let off = 0; off < bytes.length;) off += await c.write(bytes.subarray(off));
};
const pump = async (a, b) => {
  const buf = new Uint8Array(256 * 1024);
  try { for (let n; (n = await a.read(buf)) !== null;) await writeAll(b, buf.subarray(0, n)); } catch {}
  try { b.closeWrite(); } catch {}
};
for await (const c of Deno.listen({ hostname: "127.0.0.1", port })) {
  const t = await Deno.connect({ hostname: "127.0.0.1", port: target });
  c.setNoDelay(true);
  t.setNoDelay(true);
  pump(c, t);
  pump(t, c);
}`;

async function pingPong(port: number): Promise<{ median: number; p99: number }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const byte = new Uint8Array([7]);
  const reply = new Uint8Array(1);
  const rtts: number[] = [];
  for (let i = 0; i < PINGS + WARMUP; i++) {
    const started = performance.now();
    await conn.write(byte);
    if ((await conn.read(reply)) !== 1) throw new Error("echo closed");
    if (i >= WARMUP) rtts.push((performance.now() - started) * 1000);
  }
  conn.close();
  rtts.sort((a, b) => a - b);
  return { median: rtts[Math.floor(rtts.length / 2)], p99: rtts[Math.floor(rtts.length * 0.99)] };
}

const ECHO = `
const l = Deno.listen({ hostname: "127.0.0.1", port: Number(Deno.args[0]) });
for await (const c of l) {
  c.setNoDelay(true);
  (async () => {
    const b = new Uint8Array(65536);
    try { for (let n; (n = await c.read(b)) !== null;) await c.write(b.subarray(0, n)); } catch {}
    try { c.close(); } catch {}
  })();
}`;

/** One path's figures; a section not run leaves its fields undefined. */
interface Row {
  name: string;
  /** Median of the rounds. */
  gbits?: number;
  /** Every round's figure, in order. */
  gbitsRounds?: number[];
  latency?: { median: number; p99: number };
  pg: Map<string, PgbenchResult>;
}

/** Everything to undo, also on failure and on SIGINT; each part at most once. */
class Cleanup {
  /** Held from the moment it starts starting: a SIGINT during start-up must stop it too. */
  pg: Promise<PgCluster> | null = null;
  sshd: AsyncDisposable | null = null;
  certsDir: string | null = null;
  #done: Promise<void> | null = null;

  run(): Promise<void> {
    this.#done ??= this.#run();
    return this.#done;
  }

  async #run(): Promise<void> {
    await stopAll();
    // pg_ctl puts the server in its own session, out of reach of the
    // terminal's Ctrl-C: it only stops if told to.
    // A start that failed has removed what it made already.
    const pg = await this.pg?.catch(() => null);
    await pg?.stop().catch((error) => console.error(`stopping PostgreSQL: ${error}`));
    await this.sshd?.[Symbol.asyncDispose]();
    if (this.certsDir) await Deno.remove(this.certsDir, { recursive: true });
  }
}

function pad(text: string, width: number): string {
  return text.padStart(width);
}

function printThroughputAndLatency(rows: Row[]): void {
  const directRtt = rows.find((row) => row.name === "direct")?.latency?.median ?? NaN;
  const rounds = ROUNDS > 1 ? ` (median of ${ROUNDS} rounds)` : "";
  console.log(`iperf3 ${SECONDS} s per path${rounds}, ${PINGS} 1-byte round trips per path\n`);
  console.log("| path                    | Gbit/s | RTT µs | p99 µs | added µs |");
  console.log("| ----------------------- | ------ | ------ | ------ | -------- |");
  for (const row of rows) {
    const gbits = row.gbits === undefined ? "–" : row.gbits.toFixed(2);
    const median = row.latency ? row.latency.median.toFixed(0) : "–";
    const p99 = row.latency ? row.latency.p99.toFixed(0) : "–";
    const added = row.latency && !Number.isNaN(directRtt)
      ? (row.latency.median - directRtt).toFixed(0)
      : "–";
    console.log(
      `| ${row.name.padEnd(23)} | ${pad(gbits, 6)} | ${pad(median, 6)} | ${pad(p99, 6)} | ${
        pad(added, 8)
      } |`,
    );
  }
  const tunnel = rows.find((row) => row.name === "immortal tunnel, plain")?.gbitsRounds;
  const floor = rows.find((row) => row.name === "2 plain Deno forwarders")?.gbitsRounds;
  if (ROUNDS > 1 && tunnel && floor) {
    console.log();
    for (const row of rows) {
      const all = row.gbitsRounds?.map((g) => g.toFixed(2)).join(", ");
      if (all) console.log(`${row.name}: ${all} Gbit/s`);
    }
    const ratios = tunnel.map((g, i) => g / floor[i]);
    console.log(
      `immortal tunnel / 2 plain Deno forwarders, per round: ${
        ratios.map((r) => r.toFixed(2)).join(", ")
      } (median ${median(ratios).toFixed(2)})`,
    );
  }
}

function printPgbench(rows: Row[]): void {
  const socat = rows.find((row) => row.name === "socat forwarder");
  console.log(
    `pgbench -c ${PG_CLIENTS} -j ${PG_THREADS} -T ${PG_SECONDS} per path and mode, scale ${PG_SCALE}\n`,
  );
  const head = PG_MODES.map((mode) => `${mode} tps | ${mode} avg ms | ${mode} vs socat`);
  console.log(`| path                    | ${head.join(" | ")} |`);
  console.log(`| ----------------------- |${" --- |".repeat(3 * PG_MODES.length)}`);
  for (const row of rows) {
    const cells = PG_MODES.map((mode) => {
      const result = row.pg.get(mode);
      const base = socat?.pg.get(mode);
      if (!result) return "– | – | –";
      const ratio = base ? (result.tps / base.tps).toFixed(2) : "–";
      return `${result.tps.toFixed(0)} | ${result.latencyMs.toFixed(3)} | ${ratio}`;
    });
    console.log(`| ${row.name.padEnd(23)} | ${cells.join(" | ")} |`);
  }
}

async function main(): Promise<void> {
  const cleanup = new Cleanup();
  // With a listener installed, SIGINT no longer ends the process by itself:
  // clean up (the cluster above all), then exit as an interrupted program does.
  const onSigint = () => {
    console.error("interrupted: cleaning up");
    cleanup.run().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSigint);
  const rows: Row[] = [];
  try {
    let iperfPort = 0;
    let echoPort = 0;
    const waits: Promise<void>[] = [];
    if (SECTIONS.has("iperf")) {
      iperfPort = freePort();
      spawn("iperf3", ["-s", "-B", "127.0.0.1", "-p", String(iperfPort)]);
      waits.push(waitForPort(iperfPort));
    }
    if (SECTIONS.has("latency")) {
      echoPort = freePort();
      spawn(Deno.execPath(), ["eval", ECHO, String(echoPort)]);
      waits.push(waitForPort(echoPort));
    }
    await Promise.all(waits);
    let pg: PgCluster | null = null;
    if (SECTIONS.has("pgbench")) {
      cleanup.pg = startPostgres();
      pg = await cleanup.pg;
      console.error(`PostgreSQL on ${pg.port}; pgbench -i -s ${PG_SCALE} ...`);
      await pgbenchInit(pg.port, PG_SCALE);
    }
    const sshd = await startSshd();
    cleanup.sshd = sshd;
    const certs = await makeTestCerts();
    cleanup.certsDir = certs.dir;
    const paths = ([
      { name: "direct", start: (target: number) => Promise.resolve(target) },
      socat(),
      sshL(sshd),
      // The floor of any two-process design in Deno: read, write, nothing else.
      forwarders("2 plain Deno forwarders", FORWARD),
      // The same on `node:net` sockets (public API: `createServer`, `connect`,
      // `pipe`), whose writes reach the kernel inside the call.
      forwarders("2 node:net forwarders", NODE_FORWARD),
      immortal(),
      immortal(certs),
    ] satisfies Path[]).filter((path) =>
      PATHS === null || PATHS.some((name) => path.name.startsWith(name))
    );
    const iperfPorts: number[] = [];
    if (SECTIONS.has("iperf")) {
      for (const path of paths) {
        iperfPorts.push(await path.start(iperfPort));
        rows.push({ name: path.name, pg: new Map(), gbitsRounds: [] });
      }
      for (let round = 0; round < ROUNDS; round++) {
        for (const [i, row] of rows.entries()) {
          row.gbitsRounds!.push(await iperf(iperfPorts[i], SECONDS));
        }
      }
      for (const row of rows) row.gbits = median(row.gbitsRounds!);
    }
    for (const [i, path] of paths.entries()) {
      const row: Row = rows[i] ?? { name: path.name, pg: new Map() };
      if (SECTIONS.has("latency")) row.latency = await pingPong(await path.start(echoPort));
      if (pg) {
        const port = await path.start(pg.port);
        for (const mode of PG_MODES) {
          const result = await pgbench(port, {
            clients: PG_CLIENTS,
            threads: PG_THREADS,
            seconds: PG_SECONDS,
            selectOnly: mode === "select",
          });
          if (result.failed > 0) {
            console.error(`${path.name}: ${result.failed} failed pgbench transactions (${mode})`);
          }
          row.pg.set(mode, result);
        }
      }
      rows[i] = row;
      console.error(
        `${path.name}: ${row.gbits?.toFixed(2) ?? "–"} Gbit/s, RTT ${
          row.latency?.median.toFixed(0) ?? "–"
        } µs, ${[...row.pg].map(([mode, r]) => `${mode} ${r.tps.toFixed(0)} tps`).join(", ")}`,
      );
    }
  } finally {
    await cleanup.run();
    Deno.removeSignalListener("SIGINT", onSigint);
  }
  if (SECTIONS.has("iperf") || SECTIONS.has("latency")) printThroughputAndLatency(rows);
  if (SECTIONS.has("pgbench")) {
    if (SECTIONS.size > 1) console.log();
    printPgbench(rows);
  }
}

await main();
