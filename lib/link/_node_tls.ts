/**
 * Server-side TLS on a TCP connection whose Nagle we control.
 *
 * Deno 2.9 has no server-side TLS API that allows `TCP_NODELAY`:
 * `Deno.TlsConn` has no `setNoDelay` (not in the types, not on the runtime
 * object), `Deno.startTls` only runs a client handshake, and no API upgrades
 * an accepted `Deno.TcpConn` to a TLS server. With Nagle on, a reply that
 * leaves in two small writes waits ~40 ms for the client's delayed ACK before
 * its second part goes. So the TCP side stays Deno's (`Deno.listen`, binding
 * synchronously, `setNoDelay`), and only the TLS layer comes from `node:tls`,
 * for lack of a Deno API for it: a `TLSSocket` in server mode over a Duplex
 * that reads and writes the `Deno.TcpConn`.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
import { type SecureContext, TLSSocket } from "node:tls";
import type { Link } from "./link.ts";

/** Bytes read from the TCP connection per `read` call (several TLS records). */
const TCP_READ_SIZE = 64 * 1024;

/**
 * Received cleartext queued beyond this pauses the TLS socket, so a reader
 * that stopped reading stops the peer (TCP flow control) rather than growing
 * memory.
 */
const READ_HIGH_WATER = 256 * 1024;

/** Writes all of `data` to `conn`. */
async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

/**
 * A Node Duplex over a `Deno.TcpConn`: what `TLSSocket` needs underneath.
 * Reads pause while the Duplex's buffer is full (`push` returns `false`) and
 * resume on its next `_read`; a write completes when the bytes are in the
 * kernel. Destroying the Duplex closes the connection.
 */
function duplexOver(conn: Deno.TcpConn, plainReply?: Uint8Array): Duplex {
  let reading = false;
  let first = true;
  let closed = false;
  const closeConn = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch {
      // Already closed by the runtime after an error.
    }
  };
  const duplex = new Duplex({
    // TLS sends its own close_notify; a FIN from the peer ends reading only.
    allowHalfOpen: true,
    read() {
      if (!reading) pump();
    },
    write(chunk: Uint8Array, _encoding, callback) {
      writeAll(conn, chunk).then(() => callback(), callback);
    },
    writev(chunks: { chunk: Uint8Array }[], callback) {
      // Several TLS records queued while a write was in flight: one syscall.
      const data = Buffer.concat(chunks.map((c) => c.chunk));
      writeAll(conn, data).then(() => callback(), callback);
    },
    final(callback) {
      conn.closeWrite().then(() => callback(), () => callback());
    },
    destroy(error, callback) {
      closeConn();
      callback(error);
    },
  });
  // One buffer for all reads; what is pushed is a copy of the bytes read,
  // cheaper than a fresh 64 KiB buffer per read that a small read would pin.
  const buffer = new Uint8Array(TCP_READ_SIZE);
  async function pump(): Promise<void> {
    reading = true;
    try {
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) {
          duplex.push(null);
          return;
        }
        // Not a TLS handshake record (22): a client that does not speak TLS.
        // It is told so in its own protocol, not with a TLS alert it cannot read.
        if (first && plainReply && n > 0 && buffer[0] !== 0x16) {
          await writeAll(conn, plainReply).catch(() => {});
          throw new Error("the client does not speak TLS");
        }
        first = false;
        if (!duplex.push(buffer.slice(0, n))) return;
      }
    } catch (error) {
      duplex.destroy(error as Error);
    } finally {
      reading = false;
    }
  }
  return duplex;
}

/** A pending `read`: where the bytes go, and how to settle it. */
interface PendingRead {
  buffer: Uint8Array;
  resolve(n: number | null): void;
  reject(error: Error): void;
}

/**
 * A {@linkcode Link} over a server-side `node:tls` socket on a
 * `Deno.TcpConn`. The TLS handshake runs as the first bytes flow, so it is
 * bounded by whatever deadline the first read is under.
 */
export class NodeTlsServerLink implements Link {
  readonly localAddr: Deno.NetAddr;
  readonly remoteAddr: Deno.NetAddr;
  #socket: TLSSocket;
  /** Cleartext received and not read yet; `#offset` into the first chunk. */
  #chunks: Uint8Array[] = [];
  #offset = 0;
  #queued = 0;
  #pending: PendingRead | null = null;
  /** Writes not settled yet, failed at once if the link dies. */
  #writes = new Set<(error: Error) => void>();
  #ended = false;
  #error: Error | null = null;
  #closed = false;

  /**
   * Starts a TLS server session with `context` on `conn` (Nagle should be
   * off already). The link owns `conn` from now on.
   */
  constructor(conn: Deno.TcpConn, context: SecureContext, plainReply?: Uint8Array) {
    this.localAddr = conn.localAddr;
    this.remoteAddr = conn.remoteAddr;
    const socket = new TLSSocket(duplexOver(conn, plainReply), {
      isServer: true,
      secureContext: context,
    });
    this.#socket = socket;
    socket.on("data", (chunk: Uint8Array) => this.#onData(chunk));
    socket.on("end", () => {
      this.#ended = true;
      this.#settleRead();
    });
    // An error must have a listener, or Node semantics make it an uncaught
    // exception that ends the process (a client refusing our certificate).
    socket.on("error", (error: Error) => this.#fail(error));
    socket.on("close", () => this.#fail(new Deno.errors.BadResource("the TLS link is closed")));
  }

  /** Reads into `buffer`; `null` at end of stream. One read at a time. */
  read(buffer: Uint8Array): Promise<number | null> {
    if (this.#pending) return Promise.reject(new Error("a read is already pending on this link"));
    if (this.#queued > 0) return Promise.resolve(this.#take(buffer));
    if (this.#ended) return Promise.resolve(null);
    if (this.#error) return Promise.reject(this.#error);
    if (buffer.length === 0) return Promise.resolve(0);
    return new Promise((resolve, reject) => this.#pending = { buffer, resolve, reject });
  }

  /**
   * Writes all of `data`; resolves once TLS has taken it (the caller may
   * reuse `data` then) and, when the socket reported a full buffer, once it
   * drained.
   */
  write(data: Uint8Array): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (data.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      let written = false;
      let drained = true;
      const fail = (error: Error) => {
        this.#writes.delete(fail);
        this.#socket.off("drain", onDrain);
        reject(error);
      };
      const settle = () => {
        if (!written || !drained) return;
        this.#writes.delete(fail);
        resolve();
      };
      const onDrain = () => {
        drained = true;
        settle();
      };
      this.#writes.add(fail);
      const ok = this.#socket.write(data, (error?: Error | null) => {
        if (error) return fail(error);
        written = true;
        settle();
      });
      if (!ok) {
        drained = false;
        this.#socket.once("drain", onDrain);
      }
    });
  }

  /** Ends this side's sending (close_notify, then FIN); reads go on. */
  closeWrite(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve) => this.#socket.end(() => resolve()));
  }

  /** Closes the link and its TCP connection; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#fail(new Deno.errors.BadResource("the TLS link is closed"));
    this.#socket.destroy();
  }

  #onData(chunk: Uint8Array): void {
    if (chunk.length === 0) return; // a 0 would read as "nothing", not as data
    const pending = this.#pending;
    if (pending && this.#queued === 0) {
      // Straight into the waiting reader's buffer; only the rest is queued.
      const n = Math.min(chunk.length, pending.buffer.length);
      pending.buffer.set(n === chunk.length ? chunk : chunk.subarray(0, n));
      this.#pending = null;
      if (n < chunk.length) this.#enqueue(chunk.subarray(n));
      pending.resolve(n);
      return;
    }
    this.#enqueue(chunk);
    this.#settleRead();
  }

  #enqueue(chunk: Uint8Array): void {
    this.#chunks.push(chunk);
    this.#queued += chunk.length;
    if (this.#queued >= READ_HIGH_WATER) this.#socket.pause();
  }

  /** Copies queued bytes into `buffer`, as many as fit. */
  #take(buffer: Uint8Array): number {
    let n = 0;
    while (n < buffer.length && this.#chunks.length > 0) {
      const chunk = this.#chunks[0];
      const count = Math.min(chunk.length - this.#offset, buffer.length - n);
      buffer.set(chunk.subarray(this.#offset, this.#offset + count), n);
      n += count;
      this.#offset += count;
      if (this.#offset === chunk.length) {
        this.#chunks.shift();
        this.#offset = 0;
      }
    }
    this.#queued -= n;
    if (this.#queued < READ_HIGH_WATER && this.#socket.isPaused() && !this.#closed) {
      this.#socket.resume();
    }
    return n;
  }

  /** Settles a waiting read from the queue, the end of stream, or the error. */
  #settleRead(): void {
    const pending = this.#pending;
    if (!pending) return;
    if (this.#queued > 0) {
      this.#pending = null;
      pending.resolve(this.#take(pending.buffer));
    } else if (this.#ended) {
      this.#pending = null;
      pending.resolve(null);
    } else if (this.#error) {
      this.#pending = null;
      pending.reject(this.#error);
    }
  }

  #fail(error: Error): void {
    this.#error ??= error;
    this.#settleRead();
    for (const fail of [...this.#writes]) fail(this.#error);
  }
}
