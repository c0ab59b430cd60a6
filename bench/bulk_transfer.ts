// Bulk transfer on loopback: ImmortalConn vs a plain Deno.connect socket, in
// the same run, the receiver in a separate process (as in real use).
//
//   deno run --allow-net=127.0.0.1 --allow-run --allow-read bench/bulk_transfer.ts [MiB] [rounds]
//
// Prints one line per transport with the median throughput over the rounds.
import { connect, listen } from "../mod.ts";
import { median } from "./_stats.ts";

const CHUNK = 256 * 1024;

async function serve(): Promise<void> {
  // Receiver: count bytes to end of stream, answer with one byte.
  const plain = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const immortal = listen({ hostname: "127.0.0.1", port: 0 });
  console.log(
    JSON.stringify({ plain: plain.addr.port, immortal: immortal.addr.port }),
  );
  const drain = async (
    conn: { read(b: Uint8Array): Promise<number | null>; write(b: Uint8Array): Promise<number> },
  ) => {
    const buffer = new Uint8Array(CHUNK);
    while ((await conn.read(buffer)) !== null) { /* discard */ }
    await conn.write(new Uint8Array(1));
  };
  (async () => {
    for await (const conn of plain) drain(conn).finally(() => conn.close());
  })();
  for await (const conn of immortal) drain(conn).then(() => conn.closeWrite());
}

async function measure(
  open: () => Promise<
    {
      write(b: Uint8Array): Promise<number>;
      read(b: Uint8Array): Promise<number | null>;
      closeWrite(): Promise<void> | void;
      close(): void;
    }
  >,
  bytes: number,
): Promise<number> {
  const conn = await open();
  const chunk = new Uint8Array(CHUNK).fill(0x5a);
  const started = performance.now();
  for (let sent = 0; sent < bytes; sent += CHUNK) {
    let off = 0;
    while (off < CHUNK) off += await conn.write(chunk.subarray(off));
  }
  await conn.closeWrite();
  await conn.read(new Uint8Array(1)); // the receiver has everything
  const seconds = (performance.now() - started) / 1000;
  conn.close();
  return bytes / seconds / 1e6;
}

if (Deno.args[0] === "--serve") {
  await serve();
} else {
  const mib = Number(Deno.args[0] ?? 1024);
  const rounds = Number(Deno.args[1] ?? 5);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--allow-read",
      "--allow-env",
      import.meta.filename!,
      "--serve",
    ],
    stdout: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const { value } = await reader.read();
  const ports = JSON.parse(value!.split("\n")[0]);
  const results: Record<string, number[]> = { "plain Deno.connect": [], "ImmortalConn": [] };
  for (let round = 0; round < rounds; round++) {
    // Interleaved so both see the same machine state.
    results["plain Deno.connect"].push(
      await measure(() => Deno.connect({ hostname: "127.0.0.1", port: ports.plain }), mib << 20),
    );
    results["ImmortalConn"].push(
      await measure(() => connect({ hostname: "127.0.0.1", port: ports.immortal }), mib << 20),
    );
  }
  console.log(`bulk transfer, ${mib} MiB per round, ${rounds} rounds, median MB/s (min..max)`);
  for (const [name, values] of Object.entries(results)) {
    console.log(
      `${name.padEnd(20)} ${median(values).toFixed(0).padStart(6)}  (${
        Math.min(...values).toFixed(0)
      }..${Math.max(...values).toFixed(0)})`,
    );
  }
  child.kill();
  await child.status;
  reader.releaseLock();
}
