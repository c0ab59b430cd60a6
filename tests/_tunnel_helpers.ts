// Shared by the tunnel tests: a TCP target, round trips that check their
// bytes, and cuts fired by progress.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { TunnelClient, TunnelServer } from "../mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { pattern, receiveAll } from "./_helpers.ts";

/** A plain TCP target. "echo": echoes until EOF. "reply": reads to EOF, then sends `replySize` bytes. */
export function startTarget(mode: "echo" | "reply", replySize = 0) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  let accepted = 0;
  const serving = (async () => {
    for await (const conn of listener) {
      accepted++;
      conns.add(conn);
      const task = (async () => {
        const buffer = new Uint8Array(64 * 1024);
        try {
          for (;;) {
            const n = await conn.read(buffer);
            if (n === null) break;
            if (mode === "echo") {
              let off = 0;
              while (off < n) off += await conn.write(buffer.subarray(off, n));
            }
          }
          if (mode === "reply") {
            for (const chunk of pattern(77, replySize)) {
              let off = 0;
              while (off < chunk.length) off += await conn.write(chunk.subarray(off));
            }
          }
          conn.closeWrite();
        } catch {
          // The tunnel aborted this connection.
        } finally {
          try {
            conn.close();
          } catch {
            // Closed by dispose already.
          }
          conns.delete(conn);
        }
      })();
      tasks.add(task);
      task.finally(() => tasks.delete(task));
    }
  })();
  return {
    port: listener.addr.port,
    get accepted() {
      return accepted;
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      await serving;
      await Promise.allSettled(tasks);
      for (const conn of conns) conn.close();
    },
  };
}

export async function roundTrip(port: number, seed: number, size: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const sent = createHash("sha256");
  const writing = (async () => {
    for (const chunk of pattern(seed, size, 32 * 1024)) {
      sent.update(chunk);
      let off = 0;
      while (off < chunk.length) off += await conn.write(chunk.subarray(off));
    }
    await conn.closeWrite();
  })();
  const got = await receiveAll(conn);
  await writing;
  conn.close();
  assert.equal(got.bytes, size, `connection ${seed}: ${got.bytes} of ${size} bytes`);
  assert.equal(got.sha256, sent.digest("hex"), `connection ${seed}: bytes differ`);
}

/**
 * Resets every link through `proxy` each time another `bytes` have been forwarded
 * upstream, and each time another `bytes` downstream, at most `max` times each way,
 * while `work` runs. Returns the cuts each way; nothing fires once `work` is done.
 */
export async function cutWhile(
  proxy: FaultProxy,
  bytes: number,
  max: number,
  work: Promise<unknown>,
): Promise<{ up: number; down: number }> {
  using up = proxy.cutEvery({ bytes, max, direction: "up" });
  using down = proxy.cutEvery({ bytes, max, direction: "down" });
  await work;
  return { up: up.stop(), down: down.stop() };
}

/** `count` connections through the tunnel at once, each moving and checking `size` bytes its own way. */
export function roundTrips(
  port: number,
  count: number,
  firstSeed: number,
  size: number,
): Promise<void[]> {
  return Promise.all(Array.from({ length: count }, (_, i) => roundTrip(port, firstSeed + i, size)));
}

/** Session settings that notice a cut link fast and redial at once. */
export const FAST = {
  backoff: { initial: 5, max: 50 },
  heartbeatInterval: 200,
  deadLinkTimeout: 1000,
};

/**
 * A tunnel to `targetPort` whose link runs through a {@linkcode FaultProxy}
 * (with {@linkcode FAST} settings and `key` at both ends: a key-less server
 * would cap the connections to its target); disposing
 * it closes all three.
 */
export async function tunnelThroughProxy(targetPort: number, key = "tunnel-test-key") {
  const server = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    key,
    target: { hostname: "127.0.0.1", port: targetPort },
    ...FAST,
  });
  const proxy = await FaultProxy.start({ targetPort: server.addr.port });
  const client = new TunnelClient({
    port: 0,
    key,
    server: { hostname: "127.0.0.1", port: proxy.port },
    ...FAST,
  });
  return {
    server,
    proxy,
    client,
    async [Symbol.asyncDispose]() {
      await client.close();
      await proxy.close();
      await server.close();
    },
  };
}

/** A target that echoes one connection, then stops listening; `done` settles when it ended. */
export function echoTarget() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const done = (async () => {
    const conn = await listener.accept();
    listener.close();
    await conn.readable.pipeTo(conn.writable);
  })();
  return { port: listener.addr.port, done };
}

/**
 * A tunnel server to `targetPort` and a client to it, both on loopback with
 * no options beyond that: disposed together.
 */
export function plainTunnel(targetPort: number) {
  const server = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    target: { hostname: "127.0.0.1", port: targetPort },
  });
  const client = new TunnelClient({
    port: 0,
    server: { hostname: "127.0.0.1", port: server.addr.port },
  });
  return {
    server,
    client,
    async [Symbol.asyncDispose]() {
      await client.close();
      await server.close();
    },
  };
}

/** Sends `text` through `port`, half-closes, and returns what came back. */
export async function echoThrough(port: number, text: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(text));
  await conn.closeWrite();
  return await new Response(conn.readable).text();
}
