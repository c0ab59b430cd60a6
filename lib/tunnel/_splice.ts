/**
 * Splices a local TCP connection and an ImmortalConn together, carrying
 * half-close both ways: EOF on one side becomes a FIN on the other, while the
 * opposite direction keeps flowing.
 *
 * @module
 */

import type { ImmortalConn } from "../conn/mod.ts";
import { StreamEngine } from "../conn/_stream_engine.ts";

const BUFFER_SIZE = 256 * 1024;

/**
 * First byte of every tunnel session, sent by the client. The
 * server dials the target only once it arrives: a session whose opening
 * handshake was cut (the client never saw it and opened another) then never
 * reaches the target, and is reaped.
 */
export const TUNNEL_PREAMBLE = 0x01;

interface Readable {
  read(buffer: Uint8Array): Promise<number | null>;
}

async function copy(
  from: Readable,
  to: { write(data: Uint8Array): Promise<number> },
): Promise<number> {
  const buffer = new Uint8Array(BUFFER_SIZE);
  let total = 0;
  for (;;) {
    const n = await from.read(buffer);
    if (n === null) return total;
    let off = 0;
    while (off < n) off += await to.write(buffer.subarray(off, n));
    total += n;
  }
}

/** Bytes carried by a finished splice. */
export interface SpliceResult {
  /** Local -> remote. */
  up: number;
  /** Remote -> local. */
  down: number;
}

/**
 * Copies both ways until both directions ended. If either side
 * fails, both are closed (the peer sees an abort, the local app a reset).
 */
export async function splice(tcp: Deno.TcpConn, conn: ImmortalConn): Promise<SpliceResult> {
  // Whatever the application writes is forwarded as it comes; Nagle would only
  // add a delayed-ACK wait to small request/response exchanges.
  try {
    tcp.setNoDelay(true);
  } catch {
    // A connection that already died fails on first use below.
  }
  // Our own sessions take the socket's bytes straight into their replay
  // buffer: one copy less per byte.
  const sent = conn instanceof StreamEngine ? conn.writeFrom(tcp) : copy(tcp, conn);
  const up = sent.then(async (n) => {
    await conn.closeWrite();
    return n;
  });
  const down = copy(conn, tcp).then(async (n) => {
    // A local app that already reset its connection makes this reject: nothing to tell.
    await tcp.closeWrite().catch(() => {});
    return n;
  });
  try {
    const [u, d] = await Promise.all([up, down]);
    return { up: u, down: d };
  } catch (error) {
    conn.close();
    throw error;
  } finally {
    try {
      tcp.close();
    } catch {
      // Already closed by the failure that got us here.
    }
    // Let the failed direction settle so no promise is left unhandled.
    await Promise.allSettled([up, down]);
  }
}
