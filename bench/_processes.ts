// Child processes of a benchmark: started quietly, waited for by port, and
// all stopped at the end (also after a failure).

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
