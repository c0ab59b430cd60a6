/**
 * Links over WebSocket: for hosts that reach the other end only through
 * HTTP(S) — a reverse proxy on 443, a forward proxy, a relay. One binary
 * message per write; any end of the socket is the end of the link, and the
 * session above resumes on a new one.
 *
 * @module
 */

import { type Dialer, type Link, urlAddr } from "./link.ts";
import { ByteQueue } from "./_byte_queue.ts";
import { openWebSocketLink } from "./_websocket_client.ts";
import { peerText } from "../_util.ts";

/** Bytes waiting in the socket beyond which a write waits for them to drain. */
const HIGH_WATER = 1 << 20;
/** Largest message sent: relays in the middle hold a message whole before passing it on. */
const MAX_MESSAGE = 256 * 1024;
/** A socket closed here while still opening that has not opened after this long never will, ms. */
const NEVER_OPENED_MS = 10_000;
/** How often a waiting write looks at the socket's buffer, ms. */
const DRAIN_POLL_MS = 1;

/** The socket ended: a read after the end, or a write on a closed link. */
function linkClosed(why: string): Deno.errors.ConnectionReset {
  return new Deno.errors.ConnectionReset(`WebSocket link: ${why}`);
}

/**
 * A {@linkcode Link} over an open `WebSocket` (Deno's client, or a server
 * socket from `Deno.upgradeWebSocket`). Received messages queue until read:
 * the session above bounds them with its receive window.
 */
export class WebSocketLink implements Link {
  #socket: WebSocket;
  #received = new ByteQueue();
  #ended = false;
  #error: Error | null = null;
  #maxQueued: number;
  #opened: Promise<void>;
  /** `close()` was called. */
  #closedHere = false;
  /** The socket itself has closed (its close event came). */
  #socketGone = false;
  /** Address of the peer, when known (server side). */
  readonly remoteAddr?: Deno.Addr;
  /**
   * Resolves when the socket itself has closed: the peer answered our close,
   * or its connection ended. Until then it holds a descriptor (and whatever
   * Deno buffers of an unfinished message).
   */
  readonly socketClosed: Promise<void>;
  /**
   * Resolves when this side closes the link while its socket is open (or,
   * closed while opening, once it opens). From then until
   * {@linkcode WebSocketLink.socketClosed} the socket lingers: a server's
   * socket from `Deno.upgradeWebSocket` waits for the peer to answer the
   * close for as long as the peer keeps its connection (Deno has no timeout
   * for it).
   */
  readonly closing: Promise<void>;
  #startClosing: () => void;
  /** The socket is gone (its close event; or it never opened). */
  #gone: () => void;

  /**
   * Wraps `socket` (open, or opening: writes wait for it to open). A
   * WebSocket cannot be told to stop reading, so received messages queue
   * until read; more than `maxQueuedBytes` waiting (a peer that ignores the
   * flow control above) ends the link. Default 64 MiB.
   */
  constructor(
    socket: WebSocket,
    options: { remoteAddr?: Deno.Addr; maxQueuedBytes?: number } = {},
  ) {
    this.#socket = socket;
    this.remoteAddr = options.remoteAddr;
    this.#maxQueued = options.maxQueuedBytes ?? 64 << 20;
    this.#opened = socket.readyState === WebSocket.OPEN
      ? Promise.resolve()
      : new Promise((resolve) => socket.addEventListener("open", () => resolve(), { once: true }));
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        // Our peers send bytes only: text means something else answered.
        this.#fail(linkClosed("a text message where bytes were expected"));
        return;
      }
      const chunk = new Uint8Array(event.data as ArrayBuffer);
      if (this.#received.size + chunk.length > this.#maxQueued) {
        this.#fail(linkClosed(`more than ${this.#maxQueued} bytes received and not read`));
        return;
      }
      this.#received.push(chunk);
    };
    const gone = Promise.withResolvers<void>();
    this.socketClosed = gone.promise;
    const closing = Promise.withResolvers<void>();
    this.closing = closing.promise;
    this.#startClosing = closing.resolve;
    this.#gone = () => {
      this.#ended = true;
      this.#socketGone = true;
      this.#received.end();
      gone.resolve();
    };
    socket.onclose = this.#gone;
    socket.onerror = (event) => {
      this.#fail(linkClosed((event as ErrorEvent).message || "error"));
    };
  }

  /** Bytes held: received and not yet read, and sent but not yet written to the socket. */
  get queuedBytes(): number {
    return this.#received.size + this.#socket.bufferedAmount;
  }

  /** Reads queued bytes into `buffer`; `null` once the socket has ended and all was read. */
  read(buffer: Uint8Array): Promise<number | null> {
    return this.#received.read(buffer);
  }

  /** Sends `data` as one binary message; waits while the socket's buffer is full. */
  async write(data: Uint8Array): Promise<void> {
    const socket = this.#socket;
    if (socket.readyState === WebSocket.CONNECTING) {
      await Promise.race([this.#opened, this.#endedPromise()]);
    }
    if (this.#error) throw this.#error;
    if (this.#ended || socket.readyState !== WebSocket.OPEN) throw linkClosed("closed");
    // Copies: the caller may reuse its buffer (a replay ring) once we return.
    for (let offset = 0; offset < data.length; offset += MAX_MESSAGE) {
      socket.send(data.slice(offset, offset + MAX_MESSAGE));
    }
    while (socket.bufferedAmount > HIGH_WATER) {
      // The WebSocket API has no drain event; the wait is bounded by the
      // socket closing (then the write fails).
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
      if (this.#ended || this.#error) throw this.#error ?? linkClosed("closed while writing");
    }
  }

  /** Closes the socket (once it has opened, if it is still opening); idempotent. */
  close(): void {
    this.#ended = true;
    const first = !this.#closedHere;
    this.#closedHere = true;
    this.#received.end();
    const socket = this.#socket;
    // Closed while still opening, Deno's socket sends nothing, ever: the
    // client got its 101 and waited, silent, for its handshake timeout.
    if (socket.readyState === WebSocket.CONNECTING) {
      if (!first) return;
      socket.addEventListener("open", () => {
        if (!this.#socketGone) this.#startClosing();
        socket.close();
      }, { once: true });
      // A client gone before its 101 was written leaves a server socket
      // that neither opens nor closes: it holds nothing, and is counted as
      // gone rather than for ever.
      const timer = setTimeout(() => {
        if (socket.readyState === WebSocket.CONNECTING) this.#gone();
      }, NEVER_OPENED_MS);
      Deno.unrefTimer(timer);
      this.socketClosed.then(() => clearTimeout(timer));
      return;
    }
    if (first && !this.#socketGone) this.#startClosing();
    try {
      socket.close();
    } catch {
      // Closing already.
    }
  }

  /** Resolves when the link ends (for waits that must not outlive it). */
  #endedPromise(): Promise<void> {
    return new Promise((resolve) => {
      if (this.#ended) return resolve();
      this.#socket.addEventListener("close", () => resolve(), { once: true });
    });
  }

  #fail(error: Error): void {
    this.#error ??= error;
    // Reads fail too, once what came before the failure was read.
    this.#received.end(error);
    this.close();
  }
}

/** Where and how {@linkcode webSocketDialer} connects. */
export interface WebSocketDialerOptions {
  /** The endpoint: `ws:`/`wss:`, or `http:`/`https:` (mapped to `ws:`/`wss:`). */
  url: string | URL;
  /**
   * An HTTP client for a forward proxy or extra CA certificates, e.g.
   * `Deno.createHttpClient({ proxy: { url: "http://proxy:3128" } })`.
   */
  client?: Deno.HttpClient;
  /** Extra request headers (Deno's WebSocket client sends them). */
  headers?: Record<string, string>;
}

/** The WebSocket URL for an endpoint given as `http(s):` or `ws(s):`. */
export function webSocketUrl(url: string | URL): URL {
  const out = new URL(url);
  if (out.protocol === "http:") out.protocol = "ws:";
  else if (out.protocol === "https:") out.protocol = "wss:";
  if (out.protocol !== "ws:" && out.protocol !== "wss:") {
    throw new TypeError(`a WebSocket URL is ws:, wss:, http: or https:, got ${out.protocol}`);
  }
  return out;
}

/**
 * Returns a {@linkcode Dialer} that opens WebSocket links to `options.url`.
 *
 * @example An immortal session over WebSocket, served by `Deno.serve`
 * ```ts
 * import { connect, HttpLinkAcceptor, listen, webSocketDialer } from "@immortal/sockets";
 *
 * const links = new HttpLinkAcceptor();
 * using listener = listen({ acceptor: links });
 * await using server = Deno.serve(
 *   { hostname: "127.0.0.1", port: 0, onListen() {} },
 *   (req, info) => links.handle(req, info),
 * );
 * const url = `ws://127.0.0.1:${server.addr.port}/`;
 * await using client = await connect({ dialer: webSocketDialer({ url }) });
 * await using conn = await listener.accept();
 * await client.write(new TextEncoder().encode("over HTTP"));
 * await client.closeWrite();
 * console.log(await new Response(conn.readable).text()); // "over HTTP"
 * ```
 */
export function webSocketDialer(options: WebSocketDialerOptions): Dialer {
  const url = webSocketUrl(options.url);
  return (signal) => {
    // Without an HTTP client of Deno's to honour (a proxy, extra CAs), our
    // own client: it reads payloads straight into the session's buffers.
    if (!options.client) return openWebSocketLink(url, signal, options.headers);
    const init: Record<string, unknown> = {};
    if (options.client) init.client = options.client;
    if (options.headers) init.headers = options.headers;
    // Deno's WebSocket takes an options object (headers, an HttpClient) in place of protocols.
    const socket = new WebSocket(url, init as unknown as string[]);
    return new Promise<Link>((resolve, reject) => {
      const link = new WebSocketLink(socket, { remoteAddr: urlAddr(url) });
      // Deno's error event says what failed ("Invalid status code: 407" from
      // a proxy that wants credentials); the close after it says nothing.
      let why = "";
      const failed = (event: Event) => {
        const message = (event as ErrorEvent).message ?? "";
        why = message.replace(/^NetworkError: (failed to connect to WebSocket: )?/, "");
      };
      const fail = () => {
        cleanup();
        link.close();
        const detail = why === "" ? "" : `: ${peerText(why)}`;
        reject(signal.aborted ? signal.reason : linkClosed(`cannot open ${url.href}${detail}`));
      };
      const opened = () => {
        cleanup();
        resolve(link);
      };
      const cleanup = () => {
        socket.removeEventListener("open", opened);
        socket.removeEventListener("error", failed);
        socket.removeEventListener("close", fail);
        signal.removeEventListener("abort", fail);
      };
      socket.addEventListener("open", opened);
      socket.addEventListener("error", failed);
      socket.addEventListener("close", fail);
      signal.addEventListener("abort", fail);
      if (signal.aborted) fail();
    });
  };
}
