/**
 * A real redis-server on a free loopback port, with its own folder: the
 * append-only file is written at every command, so a restart keeps
 * everything (as a production Redis with AOF does).
 */

import { createClient } from "@redis/client";
import { freePort } from "./_helpers.ts";

/**
 * A plain client of the Redis at `url`, connected, for a test to look into
 * Redis or act on it behind the relays' backs; disconnected when disposed.
 */
export async function redisClient(url: string) {
  const client = createClient({ url });
  await client.connect();
  return {
    sendCommand: (args: string[]): Promise<unknown> => client.sendCommand(args),
    [Symbol.asyncDispose]: () => {
      client.destroy();
      return Promise.resolve();
    },
  };
}

/**
 * A redis-server the test started; `restart` stops it and starts it again
 * on its data. `persist: false` keeps nothing on disk: a restart loses all.
 * `password` makes it refuse clients without it (`url` carries it); `port`
 * is where it listens (a free one by default), on `hostname` (127.0.0.1).
 */
export async function startRedis(
  options: { persist?: boolean; password?: string; port?: number; hostname?: string } = {},
) {
  const hostname = options.hostname ?? "127.0.0.1";
  const persist = options.persist ?? true;
  const dir = await Deno.makeTempDir({ prefix: "immortal-redis-" });
  const port = options.port ?? freePort();
  let child: Deno.ChildProcess;
  const start = async () => {
    child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(port),
        "--bind",
        hostname,
        "--dir",
        dir,
        "--save",
        "",
        ...(persist ? ["--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"]),
        ...(options.password === undefined ? [] : ["--requirepass", options.password]),
      ],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    // Ready once it says so; its log goes nowhere else.
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let log = "";
    while (!/Ready to accept connections/.test(log)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`redis-server did not start:\n${log}`);
      log += value;
    }
    // Keep reading, so that its log never fills the pipe.
    (async () => {
      while (!(await reader.read()).done);
    })();
  };
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // Exited already.
    }
    await child.status;
  };
  await start();
  return {
    port,
    url: `redis://${
      options.password === undefined ? "" : `:${encodeURIComponent(options.password)}@`
    }${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`,
    /** Stops it (SIGTERM: it writes what it has) and starts it again on the same data. */
    async restart(): Promise<void> {
      await stop();
      await start();
    },
    /** Stops it (SIGTERM: it writes what it has), until `up`. */
    down: stop,
    /** Starts it again on its data, on the same port. */
    up: start,
    /** Stops it answering, its connections open (SIGSTOP), until `resume`. */
    pause(): void {
      child.kill("SIGSTOP");
    },
    resume(): void {
      child.kill("SIGCONT");
    },
    async [Symbol.asyncDispose](): Promise<void> {
      await stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}
