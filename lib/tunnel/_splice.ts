/**
 * Splices a local TCP connection and a tunnel stream together, carrying
 * half-close both ways: EOF on one side becomes a FIN on the other, while the
 * opposite direction keeps flowing.
 *
 * Memory follows work, not connections: an idle connection holds one small
 * read buffer (the direction towards TCP holds none: it writes the stream's
 * own received chunks), and only a busy one gets a large buffer, until it
 * goes quiet again.
 *
 * @module
 */

import type { MuxStream } from "../mux/mod.ts";
import { coreOf } from "../mux/mux_stream.ts";

/** What a connection reads into while it is quiet. */
const SMALL_BUFFER = 16 * 1024;
/** What a connection reads into once a read filled the small buffer: it is busy. */
const LARGE_BUFFER = 1024 * 1024;
/** Large buffers kept for the next burst, at most (4 MiB per process). */
const MAX_SPARE_LARGE = 4;

/**
 * Large buffers of connections whose burst is over: a tunnel whose
 * connections come in bursts (rsync, a database dump) does not allocate and
 * zero a fresh MiB for each.
 */
const spareLarge: Uint8Array<ArrayBuffer>[] = [];

function keepSpare(buffer: Uint8Array<ArrayBuffer>): void {
  if (buffer.length === LARGE_BUFFER && spareLarge.length < MAX_SPARE_LARGE) {
    spareLarge.push(buffer);
  }
}

/**
 * A tunnel's running totals of the bytes its splices carried, added to as
 * they go: `sent` read from local connections into the tunnel, `received`
 * out of the tunnel into them.
 */
export interface ForwardedBytes {
  /** Local connections -> tunnel. */
  sent: number;
  /** Tunnel -> local connections. */
  received: number;
}

/** TCP -> stream, with a read buffer that grows while the connection is busy. */
async function up(tcp: Deno.TcpConn, stream: MuxStream, totals: ForwardedBytes): Promise<number> {
  let buffer = new Uint8Array(SMALL_BUFFER);
  let total = 0;
  try {
    for (;;) {
      const n = await tcp.read(buffer);
      if (n === null) return total;
      // Resolves once the stream took (copied) the bytes: the buffer is free again.
      await stream.write(buffer.subarray(0, n));
      total += n;
      totals.sent += n;
      if (n === buffer.length && buffer.length < LARGE_BUFFER) {
        buffer = spareLarge.pop() ?? new Uint8Array(LARGE_BUFFER);
      } else if (n < SMALL_BUFFER && buffer.length > SMALL_BUFFER) {
        // The burst is over: give the large buffer back.
        keepSpare(buffer);
        buffer = new Uint8Array(SMALL_BUFFER);
      }
    }
  } finally {
    keepSpare(buffer);
  }
}

/** Stream -> TCP: the stream's received chunks are written as they are, no copy. */
async function down(
  stream: MuxStream,
  tcp: Deno.TcpConn,
  totals: ForwardedBytes,
): Promise<number> {
  const core = coreOf(stream);
  let total = 0;
  for (let chunk; (chunk = core.takeChunk() ?? await core.nextChunk()) !== null;) {
    for (let off = 0; off < chunk.length;) off += await tcp.write(chunk.subarray(off));
    total += chunk.length;
    totals.received += chunk.length;
    core.release(chunk);
  }
  return total;
}

/** Bytes carried by a finished splice. */
export interface SpliceResult {
  /** Local -> remote. */
  up: number;
  /** Remote -> local. */
  down: number;
}

/**
 * A tunnel closing, as its splices hear it: each registers how to stop,
 * and `close()` stops them all. A set, not an AbortSignal's listeners:
 * adding and removing one of those costs time in their number, and a
 * tunnel may carry tens of thousands of connections.
 */
export class TunnelClosing {
  #stops = new Set<() => void>();
  #closed = false;

  /** Whether the tunnel is closing. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Runs `stop` when the tunnel closes (at once if it has). */
  add(stop: () => void): void {
    if (this.#closed) stop();
    else this.#stops.add(stop);
  }

  /** Forgets `stop`. */
  delete(stop: () => void): void {
    this.#stops.delete(stop);
  }

  /** The tunnel closes: every splice stops. */
  close(): void {
    this.#closed = true;
    for (const stop of this.#stops) stop();
    this.#stops.clear();
  }
}

/** What a splice reports to, and hears from, its tunnel. */
export interface SpliceOptions {
  /** The tunnel's running totals, added to as bytes go. */
  totals: ForwardedBytes;
  /**
   * The tunnel closing: its connections end, and what arrived whole is
   * then not waited for (a tunnel shutting down does not wait on an
   * application that does not read).
   */
  closing: TunnelClosing;
}

/**
 * Copies both ways until both directions ended. If either side fails, both
 * are closed (the peer's stream is reset, the local app sees its connection
 * closed); a remote direction that arrived whole (the peer's FIN came) is
 * written out first, unless the tunnel is closing.
 */
export async function splice(
  tcp: Deno.TcpConn,
  stream: MuxStream,
  { totals, closing }: SpliceOptions,
): Promise<SpliceResult> {
  // Whatever the application writes is forwarded as it comes; Nagle would only
  // add a delayed-ACK wait to small request/response exchanges.
  try {
    tcp.setNoDelay(true);
  } catch {
    // A connection that already died fails on first use below.
  }
  const received = down(stream, tcp, totals).then(async (n) => {
    // A local app that already reset its connection makes this reject: nothing to tell.
    await tcp.closeWrite().catch(() => {});
    return n;
  });
  // What the peer sent whole (its FIN came) goes out to the local app even
  // if the stream then fails (its session lost): it arrived. Until then, the
  // socket stays; but not while the tunnel itself closes.
  const core = coreOf(stream);
  const delivered = () =>
    core.peerFinished && !closing.closed ? received.then(() => {}, () => {}) : undefined;
  const stop = () => {
    try {
      tcp.close();
    } catch {
      // Closed already.
    }
  };
  closing.add(stop);
  // A stream reset or lost with its session wakes no one once the remote
  // direction finished (the local read may wait forever): close the socket.
  // Its failure is the reason, not the local read or write our close cancels.
  let streamFailure: unknown;
  stream.closed.catch(async (error) => {
    streamFailure ??= error;
    await delivered();
    try {
      tcp.close();
    } catch {
      // Closed already.
    }
  });
  const sent = up(tcp, stream, totals).then(async (n) => {
    await stream.closeWrite();
    return n;
  });
  try {
    const [u, d] = await Promise.all([sent, received]);
    return { up: u, down: d };
  } catch (error) {
    stream.close();
    await delivered();
    throw streamFailure ?? error;
  } finally {
    closing.delete(stop);
    try {
      tcp.close();
    } catch {
      // Already closed by the failure that got us here.
    }
    // Let the failed direction settle so no promise is left unhandled.
    await Promise.allSettled([sent, received]);
  }
}
