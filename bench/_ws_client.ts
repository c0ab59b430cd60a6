// The bare WebSocket client the relay load generators share: thousands of
// nodes on raw TCP, with none of the per-message cost of a full client —
// all-zero masks (the payload goes as is), writes batched per turn, and server
// frames scanned in place in one growing read buffer.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A masked client text frame (all-zero mask: the payload goes as is). */
export function clientTextFrame(text: string): Uint8Array {
  const payload = encoder.encode(text);
  const head = payload.length < 126
    ? [0x81, 0x80 | payload.length]
    : [0x81, 0x80 | 126, payload.length >> 8, payload.length & 255];
  const out = new Uint8Array(head.length + 4 + payload.length);
  out.set(head);
  out.set(payload, head.length + 4);
  return out;
}

/** The upgrade request for `path` on `host` (a fixed key: the generator checks no accept hash). */
export function upgradeRequest(path: string, host: string): Uint8Array {
  return encoder.encode(
    `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
      `Sec-WebSocket-Version: 13\r\n\r\n`,
  );
}

/** Writes to `conn` in order, what was queued during a write going out in one. */
export class BatchWriter {
  #pending: Uint8Array[] = [];
  #writing = false;
  /** Set once writing failed or the node was given up: later sends are dropped. */
  closed = false;
  constructor(readonly conn: Deno.TcpConn) {}

  send(bytes: Uint8Array): void {
    if (this.closed) return;
    this.#pending.push(bytes);
    if (!this.#writing) this.#flush();
  }

  async #flush(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending.splice(0);
        let all = batch[0];
        if (batch.length > 1) {
          all = new Uint8Array(batch.reduce((n, b) => n + b.length, 0));
          let off = 0;
          for (const b of batch) {
            all.set(b, off);
            off += b.length;
          }
        }
        for (let w = 0; w < all.length;) w += await this.conn.write(all.subarray(w));
      }
    } catch {
      // Closed by the server or at the end of the run.
    } finally {
      this.#writing = false;
    }
  }
}

/** Where one complete server frame lies in `data` from `at`, or null if it is not all there. */
export function frameAt(
  data: Uint8Array,
  at: number,
): { opcode: number; start: number; end: number } | null {
  if (at + 2 > data.length) return null;
  let len = data[at + 1] & 0x7f;
  let header = 2;
  if (len === 126) {
    if (at + 4 > data.length) return null;
    len = (data[at + 2] << 8) | data[at + 3];
    header = 4;
  } else if (len === 127) {
    if (at + 10 > data.length) return null;
    len = Number(new DataView(data.buffer, data.byteOffset + at + 2, 8).getBigUint64(0));
    header = 10;
  }
  if (at + header + len > data.length) return null;
  return { opcode: data[at] & 0x0f, start: at + header, end: at + header + len };
}

/**
 * Reads `conn` until it ends: skips the upgrade response (`onUpgrade` gets its
 * status line and says whether to go on), then hands `scan` the bytes read so
 * far and the time they came; `scan` returns how many it consumed (whole frames).
 */
export async function readServerFrames(
  conn: Deno.TcpConn,
  onUpgrade: (statusLine: string) => boolean,
  scan: (data: Uint8Array, now: number) => number,
): Promise<void> {
  // Small to start (it doubles when a frame does not fit): 16 KiB each made
  // 160 MiB at 10,000 nodes, and the collector stalled the generator for
  // 30-60 ms twice a second, which it then counted as the server's latency.
  let buffer = new Uint8Array(1024);
  let filled = 0;
  let inHeaders = true;
  try {
    for (;;) {
      if (filled === buffer.length) {
        const bigger = new Uint8Array(buffer.length * 2);
        bigger.set(buffer);
        buffer = bigger;
      }
      const n = await conn.read(buffer.subarray(filled));
      if (n === null) return;
      const now = performance.now();
      filled += n;
      let start = 0;
      if (inHeaders) {
        const text = decoder.decode(buffer.subarray(0, filled));
        const end = text.indexOf("\r\n\r\n");
        if (end < 0) continue;
        if (!onUpgrade(text.slice(0, text.indexOf("\r\n")))) return;
        inHeaders = false;
        start = encoder.encode(text.slice(0, end + 4)).length;
      }
      const used = start + scan(buffer.subarray(start, filled), now);
      buffer.copyWithin(0, used, filled);
      filled -= used;
    }
  } catch {
    // Reset by the server, or closed at the end of the run.
  }
}
