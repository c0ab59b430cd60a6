/**
 * A WebSocket client link of our own, on `Deno.connect`/`Deno.connectTls`,
 * for links that need no HTTP client of Deno's (no proxy): it reads each
 * message's payload straight into the session's buffer (server frames are
 * not masked, so there is nothing to do to them), and masks what it sends
 * a word at a time into the one buffer the frame is written from. Deno's
 * `WebSocket` delivers every message as a new buffer through an event and
 * copies what is sent: three to four copies per byte per end, which is what
 * limited tunnels through a relay.
 *
 * @module
 */

import type { Link } from "./link.ts";

const encoder = new TextEncoder();
const HANDSHAKE_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** Largest message sent (relays hold a message whole before passing it on). */
const MAX_MESSAGE = 256 * 1024;
/** Bytes a frame takes beyond its payload, at most: a 14-byte header and 3 of alignment. */
export const FRAME_ROOM = 17;
/** How long a closing link waits for its queued writes and close frame to go out, ms. */
export const CLOSE_GRACE_MS = 1000;
/** Longest response head accepted from the server. */
const MAX_HEAD = 16 * 1024;

function linkClosed(why: string): Deno.errors.ConnectionReset {
  return new Deno.errors.ConnectionReset(`WebSocket link: ${why}`);
}

/** The `Sec-WebSocket-Accept` a server answers `key` with (RFC 6455 4.2.2): both ends need it. */
export async function acceptKey(key: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", encoder.encode(key + HANDSHAKE_GUID));
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/** Scratch for the mask of the frame being built (one frame is built at a time). */
const maskBytes = new Uint8Array(4);
const rotated = new Uint8Array(4);
const rotatedWord = new Uint32Array(rotated.buffer);

/**
 * Builds one masked client frame, FIN set, at the start of `target` (which
 * has room for `payload` and {@linkcode FRAME_ROOM} bytes more) and returns it. Copying and
 * masking are one pass, four bytes at a time: the first bytes up to the
 * payload's next 4-byte boundary go one by one, and the frame is placed so
 * its body lines up with the payload's words.
 */
export function maskFrameInto(
  target: ArrayBuffer,
  opcode: number,
  payload: Uint8Array,
): Uint8Array {
  const n = payload.length;
  const head = n < 126 ? 6 : n < 65_536 ? 8 : 14;
  const lead = Math.min((4 - (payload.byteOffset & 3)) & 3, n);
  const pad = (4 - ((head + lead) & 3)) & 3;
  const frame = new Uint8Array(target, pad, head + n);
  frame[0] = 0x80 | opcode;
  if (n < 126) {
    frame[1] = 0x80 | n;
  } else if (n < 65_536) {
    frame[1] = 0x80 | 126;
    new DataView(target, pad).setUint16(2, n);
  } else {
    frame[1] = 0x80 | 127;
    new DataView(target, pad).setBigUint64(2, BigInt(n));
  }
  const mask = crypto.getRandomValues(maskBytes);
  frame.set(mask, head - 4);
  for (let i = 0; i < lead; i++) frame[head + i] = payload[i] ^ mask[i & 3];
  const words = (n - lead) >>> 2;
  if (words > 0) {
    // The mask as a word in this machine's byte order, starting at byte `lead` of the mask.
    for (let j = 0; j < 4; j++) rotated[j] = mask[(lead + j) & 3];
    const word = rotatedWord[0];
    const from = new Uint32Array(payload.buffer, payload.byteOffset + lead, words);
    const to = new Uint32Array(target, pad + head + lead, words);
    for (let i = 0; i < words; i++) to[i] = from[i] ^ word;
  }
  for (let i = lead + words * 4; i < n; i++) frame[head + i] = payload[i] ^ mask[i & 3];
  return frame;
}

/** One masked client frame in a buffer of its own (control frames). */
function maskedFrame(opcode: number, payload: Uint8Array): Uint8Array {
  return maskFrameInto(new ArrayBuffer(payload.length + FRAME_ROOM), opcode, payload);
}

/** A WebSocket link on a connection whose opening handshake is done. */
class ClientWebSocketLink implements Link {
  #conn: Deno.Conn;
  /** Bytes read past what was used (the handshake's tail, frame headers). */
  #ahead: Uint8Array;
  #payloadLeft = 0;
  #ended = false;
  #writing: Promise<void> = Promise.resolve();
  /**
   * The buffer data frames are built in, one at a time, just before each is
   * written: a new 256 KiB buffer per message cost the kernel fresh pages
   * and the collector work.
   */
  #frameBuffer: ArrayBuffer | null = null;

  constructor(conn: Deno.Conn, ahead: Uint8Array) {
    this.#conn = conn;
    this.#ahead = ahead;
  }

  get localAddr(): Deno.Addr {
    return this.#conn.localAddr;
  }

  get remoteAddr(): Deno.Addr {
    return this.#conn.remoteAddr;
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    while (this.#payloadLeft === 0) {
      if (this.#ended) return null;
      if (!(await this.#nextFrame())) return null;
    }
    const want = Math.min(buffer.length, this.#payloadLeft);
    let n: number;
    if (this.#ahead.length > 0) {
      n = Math.min(want, this.#ahead.length);
      buffer.set(this.#ahead.subarray(0, n));
      this.#ahead = this.#ahead.subarray(n);
    } else {
      // Straight into the caller's buffer, never past this message's end.
      const got = await this.#conn.read(buffer.subarray(0, want));
      if (got === null) throw linkClosed("the connection ended inside a message");
      n = got;
    }
    this.#payloadLeft -= n;
    return n;
  }

  /** Sends `data` as binary messages; `data` must not change until the promise settles. */
  write(data: Uint8Array): Promise<void> {
    if (this.#ended) return Promise.reject(linkClosed("closed"));
    return this.#queue(async () => {
      const buffer = this.#frameBuffer ??= new ArrayBuffer(MAX_MESSAGE + FRAME_ROOM);
      for (let offset = 0; offset < data.length; offset += MAX_MESSAGE) {
        await this.#writeAll(
          maskFrameInto(buffer, 0x2, data.subarray(offset, offset + MAX_MESSAGE)),
        );
      }
    });
  }

  close(): void {
    if (this.#ended) return;
    this.#ended = true;
    const end = () => {
      clearTimeout(grace);
      try {
        this.#conn.close();
      } catch {
        // Closed already.
      }
    };
    // A close frame after the writes already queued (written beside one in
    // flight, it would land inside that frame), if they go out soon: a peer
    // that stopped reading (a link given up as dead) does not keep the
    // socket, and the writes waiting on it, for ever.
    const grace = setTimeout(end, CLOSE_GRACE_MS);
    const frame = maskedFrame(0x8, new Uint8Array([0x03, 0xe8]));
    this.#queue(() => this.#writeAll(frame)).catch(() => {}).finally(end);
  }

  /** Runs `send` after every write queued before it: frames never interleave. */
  #queue(send: () => Promise<void>): Promise<void> {
    const written = this.#writing.then(send);
    this.#writing = written.catch(() => {});
    return written;
  }

  async #writeAll(frame: Uint8Array): Promise<void> {
    for (let at = 0; at < frame.length;) at += await this.#conn.write(frame.subarray(at));
  }

  /** At least `n` bytes in `#ahead`; false at the end of the connection. */
  async #want(n: number): Promise<boolean> {
    while (this.#ahead.length < n) {
      const chunk = new Uint8Array(Math.max(4096, n));
      const got = await this.#conn.read(chunk);
      if (got === null) return false;
      const joined = new Uint8Array(this.#ahead.length + got);
      joined.set(this.#ahead);
      joined.set(chunk.subarray(0, got), this.#ahead.length);
      this.#ahead = joined;
    }
    return true;
  }

  /**
   * Reads a frame header (answering pings, skipping pongs); false at the end
   * of the stream between two frames. The stream ending inside a frame, and
   * a frame RFC 6455 forbids, are errors: the link is broken, not ended.
   */
  async #nextFrame(): Promise<boolean> {
    if (!(await this.#want(2))) {
      if (this.#ahead.length === 0) return false;
      throw linkClosed("the connection ended inside a frame");
    }
    const b0 = this.#ahead[0];
    const b1 = this.#ahead[1];
    if (b1 & 0x80) throw linkClosed("the server masked a frame");
    if (b0 & 0x70) throw linkClosed("reserved bits set");
    const short = b1 & 0x7f;
    const head = short === 126 ? 4 : short === 127 ? 10 : 2;
    if (!(await this.#want(head))) throw linkClosed("the connection ended inside a frame");
    const view = new DataView(this.#ahead.buffer, this.#ahead.byteOffset);
    const length = short === 126
      ? view.getUint16(2)
      : short === 127
      ? Number(view.getBigUint64(2))
      : short;
    this.#ahead = this.#ahead.subarray(head);
    const opcode = b0 & 0x0f;
    if (opcode === 0x2 || opcode === 0x0) {
      this.#payloadLeft = length;
      return true;
    }
    if (opcode === 0x1) throw linkClosed("a text message where bytes were expected");
    if (opcode < 0x8 || opcode > 0xa) throw linkClosed(`a frame of unknown opcode ${opcode}`);
    // Control frames: short and whole (RFC 6455 5.5), read at once.
    if (length > 125 || !(b0 & 0x80)) {
      throw linkClosed("a control frame longer than 125 bytes, or in fragments");
    }
    if (!(await this.#want(length))) throw linkClosed("the connection ended inside a frame");
    const payload = this.#ahead.slice(0, length);
    this.#ahead = this.#ahead.subarray(length);
    if (opcode === 0x9) {
      const pong = maskedFrame(0xa, payload);
      await this.#queue(() => this.#writeAll(pong));
    }
    if (opcode === 0x8) {
      this.close();
      return false;
    }
    return true;
  }
}

/**
 * Opens a WebSocket to `url` (`ws:` or `wss:`) on a connection of our own
 * and returns it as a link. `headers` go with the opening request.
 */
export async function openWebSocketLink(
  url: URL,
  signal: AbortSignal,
  headers: Record<string, string> = {},
): Promise<Link> {
  const secure = url.protocol === "wss:";
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port) || (secure ? 443 : 80);
  const conn: Deno.Conn = secure
    ? await Deno.connectTls({ hostname, port, signal } as Deno.ConnectTlsOptions)
    : await Deno.connect({ hostname, port, signal });
  // The signal bounds the whole handshake, not only the connect.
  const abort = () => conn.close();
  signal.addEventListener("abort", abort, { once: true });
  try {
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    const extra = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join("");
    const request = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
      `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
      `Sec-WebSocket-Version: 13\r\n${extra}\r\n`;
    const bytes = encoder.encode(request);
    for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
    // The response head, and whatever came after it (the first frames).
    let received = new Uint8Array(0);
    let end = -1;
    while (end < 0) {
      if (received.length > MAX_HEAD) throw linkClosed("the server's answer is too long");
      const chunk = new Uint8Array(4096);
      const n = await conn.read(chunk);
      if (n === null) throw linkClosed(`${url.host} closed the connection during the handshake`);
      const joined = new Uint8Array(received.length + n);
      joined.set(received);
      joined.set(chunk.subarray(0, n), received.length);
      received = joined;
      end = new TextDecoder("latin1").decode(received).indexOf("\r\n\r\n");
    }
    const head = new TextDecoder("latin1").decode(received.subarray(0, end));
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1];
    if (status !== "101") {
      // The status goes with the error: what it says (a page, nothing there) is the caller's to judge.
      throw Object.assign(linkClosed(`${url.host} answered ${status ?? "garbage"}, not 101`), {
        status: Number(status ?? 0),
      });
    }
    const accept = /^sec-websocket-accept:\s*(\S+)\s*$/im.exec(head)?.[1];
    if (accept !== (await acceptKey(key))) throw linkClosed("a wrong Sec-WebSocket-Accept");
    signal.removeEventListener("abort", abort);
    return new ClientWebSocketLink(conn, received.subarray(end + 4));
  } catch (error) {
    signal.removeEventListener("abort", abort);
    try {
      conn.close();
    } catch {
      // Closed already.
    }
    throw signal.aborted ? linkClosed("no answer to the handshake in time") : error;
  }
}
