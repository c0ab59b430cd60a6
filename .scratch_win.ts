import { connect, listen } from "/work/main/mod.ts";
import { delayedPath } from "/work/main/tests/_delayed_link.ts";
const MiB = 1 << 20;
for (const [rate, delay] of [[100e6, 50], [100e6, 0.001], [50e6, 50]]) {
  const { dialer, acceptor } = delayedPath({ delayMs: delay, bytesPerSecond: rate });
  const listener = listen({ acceptor, maxUnackedBytes: 64 * MiB });
  const client = await connect({ dialer, maxUnackedBytes: 64 * MiB });
  const server = await listener.accept();
  const size = 200 * MiB;
  const chunk = new Uint8Array(256 * 1024);
  const t0 = performance.now();
  const samples: string[] = [];
  const iv = setInterval(
    () =>
      samples.push(
        `${(client.stats.windowBytes / MiB).toFixed(1)}/${
          (client.stats.unackedBytes / MiB).toFixed(1)
        }`,
      ),
    250,
  );
  const w = (async () => {
    for (let s = 0; s < size; s += chunk.length) await client.write(chunk);
    await client.closeWrite();
  })();
  const buf = new Uint8Array(256 * 1024);
  let got = 0;
  for (;;) {
    const n = await server.read(buf);
    if (n === null) break;
    got += n;
  }
  await w;
  clearInterval(iv);
  const sec = (performance.now() - t0) / 1000;
  console.log(
    `rate ${rate / 1e6} delay ${delay}: ${(got / sec / 1e6).toFixed(1)} MB/s; window/unacked: ${
      samples.join(" ")
    }`,
  );
  await server.closeWrite();
  await client.closed.catch(() => {});
  listener.close();
}
Deno.exit(0);
