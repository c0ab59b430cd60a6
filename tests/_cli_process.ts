/** A CLI under test in its own process, its log read as it comes. */

import { within } from "./_helpers.ts";

/** A CLI process (tunnel or relay) whose log is collected as it comes. */
export function spawnCli(
  deno: string[],
  script: string,
  args: string[],
  options: {
    /** A command that runs Deno for us, e.g. `prlimit --nofile=64:64`. */
    wrap?: string[];
    /** Variables to set beside this process's own. */
    env?: Record<string, string>;
  } = {},
) {
  const [program, ...before] = [...options.wrap ?? [], Deno.execPath()];
  const child = new Deno.Command(program, {
    args: [...before, "run", ...deno, script, ...args],
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1", ...options.env },
  }).spawn();
  let log = "";
  // Waiters are checked each time log text arrives, and failed when the log ends.
  const waiters = new Set<{ check(): void; fail(): void }>();
  let ended = false;
  const reading = (async () => {
    try {
      for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
        log += text;
        for (const waiter of waiters) waiter.check();
      }
    } finally {
      ended = true;
      for (const waiter of waiters) waiter.fail();
    }
  })();
  return {
    child,
    get log() {
      return log;
    },
    /** Waits until the log matches `pattern`; fails if the process closes its log first. */
    waitFor(pattern: RegExp, what: string): Promise<void> {
      const matched = new Promise<void>((resolve, reject) => {
        const waiter = {
          check() {
            if (!pattern.test(log)) return;
            waiters.delete(waiter);
            resolve();
          },
          fail() {
            waiters.delete(waiter);
            reject(new Error(`exited before ${what}:\n${log}`));
          },
        };
        waiters.add(waiter);
        waiter.check();
        if (ended && waiters.has(waiter)) waiter.fail();
      });
      return within(30_000, what, matched);
    },
    /** `signal` (SIGTERM: a clean stop), then the exit code once the whole log is read. */
    async stop(signal: Deno.Signal = "SIGTERM"): Promise<number> {
      try {
        child.kill(signal);
      } catch {
        // Exited already.
      }
      const { code } = await child.status;
      await reading;
      return code;
    },
  };
}
