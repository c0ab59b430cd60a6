// A throwaway PostgreSQL cluster on loopback for benchmarks, and pgbench
// against it.
//
// The cluster lives in a fresh folder under /tmp, listens on 127.0.0.1 only
// (no Unix socket outside its folder), trusts every local connection, and
// trades durability for speed (fsync off): the benchmarks measure network
// paths, not the disk. initdb and postgres refuse to run as root, so as root
// they run as the `postgres` user through `runuser`.
import { freePort } from "../tests/_helpers.ts";

/** Where PostgreSQL's programs are (Debian's layout); `PG_BIN` overrides it. */
const PG_BIN = Deno.env.get("PG_BIN") ?? "/usr/lib/postgresql/15/bin";
const PG_USER = "postgres";
/** The database pgbench uses: initdb's own, nothing to create. */
const DB = "postgres";

/** A running cluster. */
export interface PgCluster extends AsyncDisposable {
  /** TCP port on 127.0.0.1. */
  readonly port: number;
  /** The cluster's folder (data, log, socket); removed by `stop`. */
  readonly dir: string;
  /** Stops the server and removes its folder. Idempotent; concurrent calls share one stop. */
  stop(): Promise<void>;
}

interface Output {
  success: boolean;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[], cwd?: string): Promise<Output> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const decoder = new TextDecoder();
  return {
    success: out.success,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

async function mustRun(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await run(cmd, args, cwd);
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${out.stderr || out.stdout}`);
  }
  return out.stdout;
}

/** Runs a PostgreSQL server program, as `postgres` when we are root. */
function asServerUser(asRoot: boolean, program: string, args: string[], cwd: string) {
  const path = `${PG_BIN}/${program}`;
  return asRoot ? mustRun("runuser", ["-u", PG_USER, "--", path, ...args], cwd) : mustRun(
    path,
    args,
    cwd,
  );
}

/**
 * Creates, starts and returns a cluster; on any failure on the way, what was
 * made is stopped and removed before the error is thrown.
 */
export async function startPostgres(): Promise<PgCluster> {
  const asRoot = (await mustRun("id", ["-u"])).trim() === "0";
  // The folder must belong to the server's user: made by that user (in the
  // world-writable /tmp) rather than made by us and handed over.
  const dir = asRoot
    ? (await mustRun("runuser", ["-u", PG_USER, "--", "mktemp", "-d", "/tmp/immortal-pg-XXXXXX"]))
      .trim()
    : await Deno.makeTempDir({ prefix: "immortal-pg-" });
  const data = `${dir}/data`;
  const port = freePort();
  let started = false;

  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      try {
        // `fast`: roll back open transactions and disconnect clients instead
        // of waiting for them; `-w -t` bounds the wait. Should that fail,
        // `immediate` ends the server without a shutdown checkpoint, which is
        // all a folder about to be removed needs.
        if (started) {
          const pgCtlStop = (mode: string) =>
            asServerUser(asRoot, "pg_ctl", ["-D", data, "-m", mode, "-w", "-t", "20", "stop"], dir);
          await pgCtlStop("fast").catch(() => pgCtlStop("immediate"));
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    })();
    return stopping;
  };

  try {
    await asServerUser(asRoot, "initdb", [
      "-D",
      data,
      "-U",
      PG_USER,
      "--auth=trust",
      "--no-sync",
      "--encoding=UTF8",
      "--locale=C",
    ], dir);
    const settings = [
      "-c listen_addresses=127.0.0.1",
      `-p ${port}`,
      `-c unix_socket_directories=${dir}`,
      "-c fsync=off",
      "-c synchronous_commit=off",
      "-c full_page_writes=off",
      "-c max_connections=50",
    ].join(" ");
    // pg_ctl detaches the server into its own session, so it outlives a
    // Ctrl-C of ours: whoever starts a cluster must call `stop` on SIGINT too.
    started = true;
    await asServerUser(asRoot, "pg_ctl", [
      "-D",
      data,
      "-l",
      `${dir}/server.log`,
      "-o",
      settings,
      "-w",
      "-t",
      "30",
      "start",
    ], dir);
  } catch (error) {
    let log = "";
    try {
      log = await Deno.readTextFile(`${dir}/server.log`);
    } catch {
      // No log yet: initdb failed.
    }
    await stop().catch(() => {});
    throw new Error(`PostgreSQL did not start${log ? `; its log:\n${log}` : ""}`, {
      cause: error,
    });
  }
  return { port, dir, stop, [Symbol.asyncDispose]: stop };
}

/** `pgbench -i`: creates and fills the pgbench tables at `scale` (100,000 accounts each). */
export async function pgbenchInit(port: number, scale: number): Promise<void> {
  await mustRun(`${PG_BIN}/pgbench`, [...connection(port), "-i", "-q", "-s", String(scale), DB]);
}

/** What one pgbench run measured. */
export interface PgbenchResult {
  /** Transactions per second, without the initial connection time. */
  tps: number;
  /** Average transaction latency, ms. */
  latencyMs: number;
  /** Transactions that failed (serialization or deadlock errors). */
  failed: number;
}

/** Settings of one pgbench run. */
export interface PgbenchRun {
  /** Concurrent client connections (`-c`). */
  clients: number;
  /** pgbench worker threads (`-j`). */
  threads: number;
  /** Duration (`-T`), s. */
  seconds: number;
  /** Only the SELECT of the built-in script (`-S`), else TPC-B-like. */
  selectOnly: boolean;
}

/** Runs pgbench against 127.0.0.1:`port` (a path to the cluster) and parses its summary. */
export async function pgbench(port: number, settings: PgbenchRun): Promise<PgbenchResult> {
  const stdout = await mustRun(`${PG_BIN}/pgbench`, [
    ...connection(port),
    "-c",
    String(settings.clients),
    "-j",
    String(settings.threads),
    "-T",
    String(settings.seconds),
    ...(settings.selectOnly ? ["-S"] : []),
    DB,
  ]);
  const number = (pattern: RegExp): number => {
    const match = stdout.match(pattern);
    if (!match) throw new Error(`pgbench summary without ${pattern}:\n${stdout}`);
    return Number(match[1]);
  };
  return {
    tps: number(/^tps = ([\d.]+)/m),
    latencyMs: number(/^latency average = ([\d.]+) ms/m),
    failed: number(/^number of failed transactions: (\d+)/m),
  };
}

/** Options that reach the cluster through `port`; the database name goes last, after every option. */
function connection(port: number): string[] {
  return ["-h", "127.0.0.1", "-p", String(port), "-U", PG_USER];
}
