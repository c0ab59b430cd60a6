// Child processes of a benchmark: started quietly, waited for by port, and
// all stopped at the end (also after a failure).
import { freePort } from "../tests/_helpers.ts";
import type { Sshd } from "../tests/_sshd.ts";

/** Every child started by {@linkcode spawn}, for {@linkcode stopAll}. */
export const children: Deno.ChildProcess[] = [];

/** Starts `cmd` with no stdio; {@linkcode stopAll} stops it. */
export function spawn(cmd: string, args: string[]): Deno.ChildProcess {
  const child = new Deno.Command(cmd, { args, stdout: "null", stderr: "null", stdin: "null" })
    .spawn();
  children.push(child);
  return child;
}

/**
 * Waits until something listens on `port`, by reading the kernel's socket
 * table (`ss`) rather than connecting: a probe connection would reach iperf3
 * through a forwarder and upset its one-test-at-a-time control protocol.
 */
export async function waitForPort(port: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const out = await new Deno.Command("ss", {
      args: ["-ltnH", `sport = :${port}`],
      stdout: "piped",
    })
      .output();
    if (new TextDecoder().decode(out.stdout).trim() !== "") return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** SIGTERM to every child still running, and waits for each. */
export async function stopAll(): Promise<void> {
  for (const child of children.splice(0)) {
    try {
      child.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    await child.status;
  }
}

/** `ssh -N -L` from a free local port to `target` through `sshd`, once it listens. */
export async function sshForward(
  sshd: Sshd,
  target: number,
): Promise<{ port: number; child: Deno.ChildProcess }> {
  const port = freePort();
  const child = spawn("ssh", [
    ...sshd.sshArgs(sshd.port),
    "-N",
    "-o",
    "ExitOnForwardFailure=yes",
    "-L",
    `127.0.0.1:${port}:127.0.0.1:${target}`,
    "127.0.0.1",
  ]);
  await waitForPort(port);
  return { port, child };
}

/** `iperf3 -c` to `port` for `seconds`: the receiver's throughput, Gbit/s. */
export async function iperf(port: number, seconds: number): Promise<number> {
  const out = await new Deno.Command("iperf3", {
    args: ["-c", "127.0.0.1", "-p", String(port), "-t", String(seconds), "-J"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const report = JSON.parse(new TextDecoder().decode(out.stdout));
  if (report.error) throw new Error(`iperf3: ${report.error}`);
  return report.end.sum_received.bits_per_second / 1e9;
}
