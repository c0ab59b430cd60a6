// How Deno completes many socket writes issued in one turn of its event loop
// (what a relay does when one message goes to many nodes): N loopback
// connections, one small write on each, all issued at once; when does each
// write's promise resolve? They resolve in batches (128 at a time on Deno
// 2.9.6, tokio's cooperative budget per poll), one batch per turn of the
// event loop, so the last write of a burst of 1,000 waits for ~8 turns.
// BENCHMARKS.md ("Relay vs Socket.IO") explains what that does to a relay's
// tail.
//
//   deno run --allow-net=127.0.0.1 bench/deno_io_batches.ts [connections=1000] [rounds=5]

const count = Number(Deno.args[0] ?? 1000);
const rounds = Number(Deno.args[1] ?? 5);
if (!Number.isInteger(count) || count < 1 || count > 20_000 || !(rounds >= 1 && rounds <= 100)) {
  console.error("usage: deno_io_batches.ts [connections 1-20000] [rounds 1-100]");
  Deno.exit(2);
}

const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const writers: Deno.TcpConn[] = [];
const readers: Deno.Conn[] = [];
for (let i = 0; i < count; i++) {
  writers.push(await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }));
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
console.log(`${count} connections, one ${frame.length}-byte write each, issued in one turn:`);
for (let round = 1; round <= rounds; round++) {
  const start = performance.now();
  const resolved: number[] = [];
  await Promise.all(
    writers.map((conn) => conn.write(frame).then(() => resolved.push(performance.now() - start))),
  );
  // Batches: resolutions more than 0.2 ms after the previous one start a new batch.
  const sizes: number[] = [];
  let last = -Infinity;
  for (const t of resolved) {
    if (t - last > 0.2) sizes.push(0);
    sizes[sizes.length - 1]++;
    last = t;
  }
  console.log(
    `round ${round}: all resolved after ${
      resolved[resolved.length - 1].toFixed(1)
    } ms, in ${sizes.length} ` +
      `batches (sizes ${sizes.slice(0, 6).join(", ")}${sizes.length > 6 ? ", ..." : ""})`,
  );
  // A turn of the loop in between, so rounds do not overlap.
  await new Promise((resolve) => setTimeout(resolve, 20));
}
for (const conn of writers) conn.close();
await Promise.all(draining);
for (const conn of readers) conn.close();
