// A TCP proxy that delays every byte by a fixed time each way: a long path
// for benchmarks on loopback (this kernel has no netem). Bytes keep their
// order; each direction holds at most HOLD_BYTES (TCP then slows the sender).

/** Most bytes one direction holds before it stops reading. */
const HOLD_BYTES = 64 << 20;

interface Parcel {
  data: Uint8Array;
  due: number;
}

/** Copies `from` to `to`, each read written `delayMs` after it was read. */
async function delayed(from: Deno.Conn, to: Deno.Conn, delayMs: number): Promise<void> {
  const parcels: Parcel[] = [];
  let held = 0;
  let ended = false;
  let wakeWriter = null as (() => void) | null;
  let wakeReader = null as (() => void) | null;
  const reading = (async () => {
    try {
      for (;;) {
        const buffer = new Uint8Array(256 * 1024);
        const n = await from.read(buffer);
        if (n === null) break;
        parcels.push({ data: buffer.subarray(0, n), due: performance.now() + delayMs });
        held += n;
        wakeWriter?.();
        while (held > HOLD_BYTES) await new Promise<void>((r) => wakeReader = r);
      }
    } catch {
      // The connection was cut: the other direction ends too.
    }
    ended = true;
    wakeWriter?.();
  })();
  try {
    for (;;) {
      if (parcels.length === 0) {
        if (ended) break;
        await new Promise<void>((r) => wakeWriter = r);
        wakeWriter = null;
        continue;
      }
      const parcel = parcels[0];
      const wait = parcel.due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      for (let at = 0; at < parcel.data.length;) at += await to.write(parcel.data.subarray(at));
      parcels.shift();
      held -= parcel.data.length;
      wakeReader?.();
      wakeReader = null;
    }
    await to.closeWrite().catch(() => {});
  } catch {
    // The other side is gone.
  } finally {
    await reading;
  }
}

/** A proxy on `listenPort` to 127.0.0.1:`target`, `delayMs` each way. */
export function delayProxy(listenPort: number, target: number, delayMs: number): Deno.Listener {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: listenPort });
  (async () => {
    for await (const client of listener) {
      Deno.connect({ hostname: "127.0.0.1", port: target }).then(async (server) => {
        client.setNoDelay(true);
        server.setNoDelay(true);
        await Promise.all([delayed(client, server, delayMs), delayed(server, client, delayMs)]);
        client.close();
        server.close();
      }, () => client.close());
    }
  })().catch(() => {});
  return listener;
}
