// How Deno completes many socket writes issued in one turn of its event loop
// (what a relay does when one message goes to many nodes): N loopback
// connections, one small write on each, all issued at once; when does each
// write's promise resolve? They resolve in batches (128 at a time on Deno
// 2.9.6, tokio's cooperative budget per poll), one batch per turn of the
// event loop, so the last write of a burst of 1,000 waits for ~8 turns.
// BENCHMARKS.md ("Relay vs Socket.IO") explains what that does to a relay's
// tail.
//
// The same burst on `node:net` sockets (Deno's own implementation of them)
// runs in the same process, turn about with `Deno.Conn`: there a write goes
// to the kernel inside the `write` call when the socket can take it.
//
//   deno run --allow-net=127.0.0.1 bench/deno_io_batches.ts [connections=1000] [rounds=5]

import net from "node:net";

const count = Number(Deno.args[0] ?? 1000);
const rounds = Number(Deno.args[1] ?? 5);
if (!Number.isInteger(count) || count < 1 || count > 20_000 || !(rounds >= 1 && rounds <= 100)) {
  console.error("usage: deno_io_batches.ts [connections 1-20000] [rounds 1-100]");
  Deno.exit(2);
}

const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const writers: Deno.TcpConn[] = [];
const nodeWriters: net.Socket[] = [];
const readers: Deno.Conn[] = [];
for (let i = 0; i < count; i++) {
  writers.push(await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }));
  readers.push(await listener.accept());
  nodeWriters.push(
    await new Promise<net.Socket>((resolve, reject) => {
      const socket = net.connect(listener.addr.port, "127.0.0.1", () => resolve(socket));
      socket.once("error", reject);
      socket.setNoDelay(true);
    }),
  );
  readers.push(await listener.accept());
}
listener.close();
const draining = readers.map(async (conn) => {
  const buffer = new Uint8Array(1024);
  try {
    while (await conn.read(buffer) !== null) { /* drained */ }
  } catch {
    // Closed at the end.
  }
});

const frame = new Uint8Array(67); // the size of a relay message frame

/** Resolution times (ms after the first write) grouped into batches: gaps over 0.2 ms split them. */
function batches(resolved: number[]): number[] {
  const sizes: number[] = [];
  let last = -Infinity;
  for (const t of resolved) {
    if (t - last > 0.2) sizes.push(0);
    sizes[sizes.length - 1]++;
    last = t;
  }
  return sizes;
}

/** One burst: `write` issues every write at once; returns when each completed. */
async function burst(write: (done: () => void) => void): Promise<string> {
  const start = performance.now();
  const resolved: number[] = [];
  await new Promise<void>((allDone) => {
    let left = count;
    for (let i = 0; i < count; i++) {
      write(() => {
        resolved.push(performance.now() - start);
        if (--left === 0) allDone();
      });
    }
  });
  const issued = resolved[resolved.length - 1];
  const sizes = batches(resolved);
  return `all done after ${issued.toFixed(1)} ms (${(issued * 1000 / count).toFixed(1)} µs a ` +
    `write), in ${sizes.length} batches (sizes ${sizes.slice(0, 6).join(", ")}${
      sizes.length > 6 ? ", ..." : ""
    })`;
}

console.log(`${count} connections, one ${frame.length}-byte write each, issued in one turn:`);
for (let round = 1; round <= rounds; round++) {
  let i = 0;
  const deno = await burst((done) => writers[i++].write(frame).then(done));
  await new Promise((resolve) => setTimeout(resolve, 20));
  // In the kernel before `write` returns when it can take it: the bytes are out, the callback follows.
  let j = 0;
  let atOnce = 0;
  const node = await burst((done) => {
    const socket = nodeWriters[j++];
    socket.write(frame, () => done());
    if (socket.writableLength === 0) atOnce++;
  });
  console.log(`round ${round}: Deno.Conn: ${deno}`);
  console.log(`round ${round}: node:net:  ${node}; ${atOnce} of ${count} sent inside write()`);
  // A turn of the loop in between, so rounds do not overlap.
  await new Promise((resolve) => setTimeout(resolve, 20));
}
for (const conn of writers) conn.close();
for (const socket of nodeWriters) socket.destroy();
await Promise.all(draining);
for (const conn of readers) conn.close();
