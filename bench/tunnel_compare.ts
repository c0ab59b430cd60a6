// Tunnel throughput and latency, side by side in one run on loopback:
// direct, a socat forwarder, `ssh -L`, and the immortal tunnel (plain and
// TLS), each forwarder in its own processes as deployed.
//
//   deno run --allow-net=127.0.0.1 --allow-run --allow-read --allow-write=/tmp --allow-env \
//     bench/tunnel_compare.ts [seconds] [pings]
//
// Throughput: `iperf3 -c ... -t seconds` (Debian iperf3), receiver's Gbit/s.
// Latency: `pings` 1-byte request/response round trips through each path to a
// Deno echo process; median and p99 in µs, and the added median RTT over direct.
// "2 plain Deno forwarders" is a reference: the floor of any design with two
// Deno processes on the path.
import { freePort } from "../tests/_helpers.ts";
import { startSshd } from "../tests/_sshd.ts";
import { makeTestCerts } from "../tests/_tls.ts";

const SECONDS = Number(Deno.args[0] ?? 5);
const PINGS = Number(Deno.args[1] ?? 5000);
const CLI = new URL("../cli/tunnel.ts", import.meta.url).pathname;

const children: Deno.ChildProcess[] = [];

function spawn(cmd: string, args: string[]): Deno.ChildProcess {
  const child = new Deno.Command(cmd, { args, stdout: "null", stderr: "null", stdin: "null" })
    .spawn();
  children.push(child);
  return child;
}

/**
 * Waits until something listens on `port`, by reading the kernel's socket
 * table (`ss`) rather than connecting: a probe connection would reach iperf3 through
 * the forwarder and upset its one-test-at-a-time control protocol.
 */
async function waitForPort(port: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const out = await new Deno.Command("ss", {
      args: ["-ltnH", `sport = :${port}`],
      stdout: "piped",
    }).output();
    if (new TextDecoder().decode(out.stdout).trim() !== "") return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

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
      const port = freePort();
      spawn("ssh", [
        ...sshd.sshArgs(sshd.port),
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        `127.0.0.1:${port}:127.0.0.1:${target}`,
        "127.0.0.1",
      ]);
      await waitForPort(port);
      return port;
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
 * The floor of any two-process design in Deno: two chained plain forwarders
 * (read, write, nothing else), client side and server side, like the tunnel's
 * two ends without sessions.
 */
function denoForwarders(): Path {
  return {
    name: "2 plain Deno forwarders",
    async start(target) {
      const far = freePort();
      const near = freePort();
      spawn(Deno.execPath(), ["eval", FORWARD, String(far), String(target)]);
      spawn(Deno.execPath(), ["eval", FORWARD, String(near), String(far)]);
      await waitForPort(far);
      await waitForPort(near);
      return near;
    },
  };
}

const FORWARD = `
const [port, target] = Deno.args.map(Number);
const pump = async (a, b) => {
  const buf = new Uint8Array(256 * 1024);
  try { for (let n; (n = await a.read(buf)) !== null;) await b.write(buf.subarray(0, n)); } catch {}
  try { b.closeWrite(); } catch {}
};
for await (const c of Deno.listen({ hostname: "127.0.0.1", port })) {
  const t = await Deno.connect({ hostname: "127.0.0.1", port: target });
  c.setNoDelay(true);
  t.setNoDelay(true);
  pump(c, t);
  pump(t, c);
}`;

async function iperf(port: number): Promise<number> {
  const out = await new Deno.Command("iperf3", {
    args: ["-c", "127.0.0.1", "-p", String(port), "-t", String(SECONDS), "-J"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const report = JSON.parse(new TextDecoder().decode(out.stdout));
  if (report.error) throw new Error(`iperf3: ${report.error}`);
  return report.end.sum_received.bits_per_second / 1e9;
}

async function pingPong(port: number): Promise<{ median: number; p99: number }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const byte = new Uint8Array([7]);
  const reply = new Uint8Array(1);
  const rtts: number[] = [];
  for (let i = 0; i < PINGS + 200; i++) {
    const started = performance.now();
    await conn.write(byte);
    if ((await conn.read(reply)) !== 1) throw new Error("echo closed");
    if (i >= 200) rtts.push((performance.now() - started) * 1000); // first 200 warm up
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

async function main(): Promise<void> {
  const iperfPort = freePort();
  spawn("iperf3", ["-s", "-B", "127.0.0.1", "-p", String(iperfPort)]);
  const echoPort = freePort();
  spawn(Deno.execPath(), ["eval", ECHO, String(echoPort)]);
  await Promise.all([waitForPort(iperfPort), waitForPort(echoPort)]);
  await using sshd = await startSshd();
  const certs = await makeTestCerts();
  const paths: Path[] = [
    { name: "direct", start: (target) => Promise.resolve(target) },
    socat(),
    sshL(sshd),
    denoForwarders(),
    immortal(),
    immortal(certs),
  ];
  const rows: string[] = [];
  let directRtt = 0;
  try {
    for (const path of paths) {
      const throughput = await iperf(await path.start(iperfPort));
      const latency = await pingPong(await path.start(echoPort));
      if (path.name === "direct") directRtt = latency.median;
      rows.push(
        `| ${path.name.padEnd(22)} | ${throughput.toFixed(2).padStart(6)} | ${
          latency.median.toFixed(0).padStart(6)
        } | ${latency.p99.toFixed(0).padStart(6)} | ${
          (latency.median - directRtt).toFixed(0).padStart(6)
        } |`,
      );
      console.error(rows.at(-1));
    }
  } finally {
    for (const child of children) {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      await child.status;
    }
    await Deno.remove(certs.dir, { recursive: true });
  }
  console.log(`iperf3 ${SECONDS} s per path, ${PINGS} 1-byte round trips per path\n`);
  console.log("| path                   | Gbit/s | RTT µs | p99 µs | added µs |");
  console.log("| ---------------------- | ------ | ------ | ------ | -------- |");
  for (const row of rows) console.log(row);
}

await main();
