// Many connections through one tunnel: how long opening them takes, what they
// cost held idle, and how long they take to work again after a link cut —
// the immortal tunnel (this checkout, and optionally another one to compare)
// and `ssh -L`, side by side in one run on loopback.
//
//   deno run --allow-net=127.0.0.1 --allow-run --allow-read --allow-write=/tmp --allow-env \
//     bench/tunnel_streams.ts [counts=1000,10000] [--before=OTHER_CHECKOUT] [--skip-ssh]
//
// For each path and each count N:
// - open: N connections opened (500 at a time) through the path to a Deno echo
//   process, each sending one byte and reading it back; seconds until all did.
// - idle RSS: resident memory of each forwarder process with the N held open
//   (`ssh -L`: the ssh client, and sshd with all its children).
// - resume (immortal only, N = 1000 or fewer): the link between tunnel client
//   and server runs through a fault proxy; it resets every link, then every
//   connection sends one byte and reads it back: milliseconds until all did.
// `--before` runs the tunnel CLI of another checkout too (e.g. a `git worktree`
// of an older commit), labelled "before".
import { FaultProxy } from "../tests/_fault_proxy.ts";
import { freePort } from "../tests/_helpers.ts";
import { spawn, sshForward, stopAll, waitForPort } from "./_processes.ts";
import { startSshd } from "../tests/_sshd.ts";

function option(name: string): string | undefined {
  const prefix = `--${name}=`;
  return Deno.args.find((arg) => arg.startsWith(prefix))?.slice(prefix.length);
}

const COUNTS = (Deno.args.find((arg) => !arg.startsWith("--")) ?? "1000,10000")
  .split(",").map(Number);
const BEFORE = option("before");
const SKIP_SSH = Deno.args.includes("--skip-ssh");
const HERE = new URL("..", import.meta.url).pathname;
const PARALLEL = 500;

/**
 * Resident memory of `pid` (and, with `tree`, all its descendants), MB. From
 * `ps`: Deno reads another process's /proc files only with --allow-all.
 */
async function rssMb(pid: number, tree = false): Promise<number> {
  const out = await new Deno.Command("ps", { args: ["-eo", "pid=,ppid=,rss="], stdout: "piped" })
    .output();
  const procs = new TextDecoder().decode(out.stdout).trim().split("\n")
    .map((line) => line.trim().split(/\s+/).map(Number));
  const pids = new Set([pid]);
  for (let grew = tree; grew;) {
    grew = false;
    for (const [p, parent] of procs) {
      if (pids.has(parent) && !pids.has(p)) {
        pids.add(p);
        grew = true;
      }
    }
  }
  let kb = 0;
  for (const [p, , rss] of procs) if (pids.has(p)) kb += rss;
  return kb / 1024;
}

const ECHO = `
const l = Deno.listen({ hostname: "127.0.0.1", port: Number(Deno.args[0]) });
for await (const c of l) {
  (async () => {
    const b = new Uint8Array(1024);
    try { for (let n; (n = await c.read(b)) !== null;) await c.write(b.subarray(0, n)); } catch {}
    try { c.close(); } catch {}
  })();
}`;

/** One byte there and back on `conn`. */
async function ping(conn: Deno.Conn): Promise<void> {
  await conn.write(new Uint8Array([42]));
  if ((await conn.read(new Uint8Array(1))) !== 1) throw new Error("connection closed");
}

/** Runs `task` for 0..n-1, `PARALLEL` at a time. */
async function pool(n: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(PARALLEL, n) }, async () => {
    while (next < n) await task(next++);
  }));
}

interface Running {
  port: number;
  /** Forwarder processes: name and RSS, MB. */
  rss(): Promise<{ name: string; mb: number }[]>;
  /** Breaks the path's links; null when the path cannot survive that. */
  cut: (() => void) | null;
  stop(): Promise<void>;
}

interface Path {
  name: string;
  start(target: number): Promise<Running>;
}

function immortal(name: string, checkout: string): Path {
  return {
    name,
    async start(target) {
      const serverPort = freePort();
      const clientPort = freePort();
      const flags = [
        "run",
        `--config=${checkout}/deno.json`,
        "--allow-net=127.0.0.1",
        "--allow-sys",
      ];
      const cli = `${checkout}/cli/tunnel.ts`;
      const server = spawn(Deno.execPath(), [
        ...flags,
        cli,
        "server",
        String(serverPort),
        "127.0.0.1",
        String(target),
        "--listen-host",
        "127.0.0.1",
        "--log-level",
        "error",
      ]);
      await waitForPort(serverPort);
      const proxy = await FaultProxy.start({ targetPort: serverPort });
      const client = spawn(Deno.execPath(), [
        ...flags,
        cli,
        "client",
        String(clientPort),
        "127.0.0.1",
        String(proxy.port),
        "--log-level",
        "error",
      ]);
      await waitForPort(clientPort);
      return {
        port: clientPort,
        rss: async () => [
          { name: "client", mb: await rssMb(client.pid) },
          { name: "server", mb: await rssMb(server.pid) },
        ],
        cut: () => proxy.reset(),
        async stop() {
          for (const child of [client, server]) {
            child.kill("SIGTERM");
            await child.status;
          }
          await proxy.close();
        },
      };
    },
  };
}

function sshL(sshd: Awaited<ReturnType<typeof startSshd>>): Path {
  return {
    name: "ssh -L",
    async start(target) {
      const { port, child: ssh } = await sshForward(sshd, target);
      const master = Number(Deno.readTextFileSync(`${sshd.dir}/sshd.pid`).trim());
      return {
        port,
        // The master's own few MB are shared by every client: counted, as deployed.
        rss: async () => [
          { name: "ssh", mb: await rssMb(ssh.pid) },
          { name: "sshd (all)", mb: await rssMb(master, true) },
        ],
        cut: null,
        async stop() {
          ssh.kill("SIGTERM");
          await ssh.status;
        },
      };
    },
  };
}

interface Row {
  path: string;
  n: number;
  openSeconds: number | string;
  rss: { name: string; mb: number }[];
  resumeMs: number | string;
}

async function measure(path: Path, n: number, target: number): Promise<Row> {
  const running = await path.start(target);
  const conns: Deno.TcpConn[] = [];
  try {
    const started = performance.now();
    let openSeconds: number | string;
    try {
      await pool(n, async () => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: running.port });
        conns.push(conn);
        conn.setNoDelay(true);
        await ping(conn);
      });
      openSeconds = (performance.now() - started) / 1000;
    } catch (error) {
      openSeconds = `failed after ${conns.length}: ${
        error instanceof Error ? error.message : error
      }`;
    }
    // Let the processes settle (garbage collected, buffers given back) before reading RSS.
    await new Promise((r) => setTimeout(r, 3000));
    const rss = await running.rss();
    let resumeMs: number | string = "n/a";
    if (running.cut && typeof openSeconds === "number" && n <= 1000) {
      const cutAt = performance.now();
      running.cut();
      let lost = 0;
      await pool(conns.length, (i) => ping(conns[i]).catch(() => void lost++));
      resumeMs = lost === 0
        ? Math.round(performance.now() - cutAt)
        : `${lost} of ${conns.length} connections lost`;
    }
    const row = { path: path.name, n, openSeconds, rss, resumeMs };
    console.log(JSON.stringify(row));
    return row;
  } finally {
    for (const conn of conns) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    await running.stop();
  }
}

async function main(): Promise<void> {
  const echoPort = freePort();
  spawn(Deno.execPath(), ["eval", ECHO, String(echoPort)]);
  await waitForPort(echoPort);
  const sshd = SKIP_SSH ? null : await startSshd();
  const paths: Path[] = [];
  if (BEFORE) paths.push(immortal("immortal tunnel, before", BEFORE));
  paths.push(immortal("immortal tunnel", HERE.replace(/\/$/, "")));
  if (sshd) paths.push(sshL(sshd));
  const rows: Row[] = [];
  try {
    for (const n of COUNTS) for (const path of paths) rows.push(await measure(path, n, echoPort));
  } finally {
    await sshd?.[Symbol.asyncDispose]();
    await stopAll();
  }
  console.log(
    "\n| path | connections | open s | idle RSS MB (per process) | resume after a cut ms |",
  );
  console.log(
    "| ---- | ----------- | ------ | ------------------------- | --------------------- |",
  );
  for (const row of rows) {
    const open = typeof row.openSeconds === "number" ? row.openSeconds.toFixed(2) : row.openSeconds;
    const rss = row.rss.map((r) => `${r.name} ${r.mb.toFixed(0)}`).join(", ");
    console.log(`| ${row.path} | ${row.n} | ${open} | ${rss} | ${row.resumeMs} |`);
  }
}

await main();
