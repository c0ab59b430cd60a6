/**
 * Accepting links over HTTP: a request handler that turns WebSocket upgrades,
 * and HTTP-streaming requests for proxies that refuse WebSocket, into
 * {@linkcode Link}s, so an immortal listener can be mounted in any
 * `Deno.serve` app, or sit behind nginx or Caddy on port 443.
 *
 * @module
 */

import { concat } from "../_util.ts";
import type { Acceptor, Link } from "./link.ts";
import { LINK_HEADER, MAX_POST_BYTES, SEQ_HEADER, ServerHttpStreamLink } from "./http_stream.ts";
import { WebSocketLink } from "./websocket.ts";

/** Settings of an {@linkcode HttpLinkAcceptor}. */
export interface HttpLinkAcceptorOptions {
  /**
   * The address reported as the listener's (`listener.addr`): the HTTP
   * server's, when you want it shown. Default `0.0.0.0:0`.
   */
  addr?: Deno.NetAddr;
  /** Links waiting for `accept()` beyond this are refused with 503. Default 256. */
  backlog?: number;
}

/**
 * An {@linkcode Acceptor} fed by an HTTP server: pass each request meant for
 * it to {@linkcode HttpLinkAcceptor.handle}, and give the acceptor to
 * `listen({ acceptor })`.
 *
 * @example Mount immortal sessions at `/link` of a `Deno.serve` app
 * ```ts
 * import { HttpLinkAcceptor, listen } from "@immortal/sockets";
 *
 * const links = new HttpLinkAcceptor();
 * using listener = listen({ acceptor: links, key: "secret" });
 * await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req, info) =>
 *   new URL(req.url).pathname === "/link"
 *     ? links.handle(req, info)
 *     : new Response("the app's own page"));
 * console.log(listener.sessionCount); // 0: clients dial ws://HOST:PORT/link
 * ```
 */
export class HttpLinkAcceptor implements Acceptor<Deno.NetAddr> {
  /** The address reported for the listener. */
  readonly addr: Deno.NetAddr;
  #backlog: number;
  #ready: Link[] = [];
  #waiters: { resolve: (link: Link) => void; reject: (error: Error) => void }[] = [];
  #closed = false;
  /** Open HTTP-streaming links, by id. */
  #streams = new Map<string, ServerHttpStreamLink>();

  /** An acceptor with no links yet. */
  constructor(options: HttpLinkAcceptorOptions = {}) {
    this.addr = options.addr ?? { transport: "tcp", hostname: "0.0.0.0", port: 0 };
    this.#backlog = options.backlog ?? 256;
  }

  /**
   * Handles one request: a WebSocket upgrade, or a POST of the HTTP-streaming
   * transport (opening a link, or carrying its bytes up), becomes or feeds a
   * link; anything else is answered 426 (upgrade required).
   */
  handle(req: Request, info?: Deno.ServeHandlerInfo): Response | Promise<Response> {
    if (this.#closed) return new Response("not accepting links", { status: 503 });
    const linkId = req.headers.get(LINK_HEADER);
    if (req.method === "POST" && linkId !== null && linkId !== "open") {
      return this.#upstream(linkId, req);
    }
    const upgrade = req.headers.get("upgrade")?.toLowerCase() === "websocket";
    if (!upgrade && !(req.method === "POST" && linkId === "open")) {
      return new Response("this endpoint takes immortal links (WebSocket, or HTTP streaming)", {
        status: 426,
        headers: { upgrade: "websocket" },
      });
    }
    if (this.#ready.length >= this.#backlog) {
      return new Response("too many links waiting", { status: 503 });
    }
    // Read before the upgrade: the request's details are gone after it.
    const remoteAddr = info?.remoteAddr;
    if (!upgrade) {
      const link: ServerHttpStreamLink = new ServerHttpStreamLink(
        remoteAddr,
        () => this.#streams.delete(link.id),
      );
      this.#streams.set(link.id, link);
      this.#push(link);
      return link.response;
    }
    // No idle timeout of the socket's own: the session's heartbeats decide
    // when a link is dead, and say so in the same way for every transport.
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
    const link = new WebSocketLink(socket, { remoteAddr });
    socket.addEventListener("open", () => this.#push(link), { once: true });
    return response;
  }

  /** An upstream POST of the HTTP-streaming link `id`. */
  async #upstream(id: string, req: Request): Promise<Response> {
    const link = this.#streams.get(id);
    const seq = Number(req.headers.get(SEQ_HEADER));
    if (!link || !Number.isSafeInteger(seq)) {
      await req.body?.cancel();
      return new Response("no such link", { status: link ? 400 : 404 });
    }
    let body: Uint8Array;
    try {
      body = await readBounded(req, MAX_POST_BYTES);
    } catch {
      link.close();
      return new Response("the upstream POST was cut or too large", { status: 400 });
    }
    return await link.post(seq, body);
  }

  /** Waits for the next link; rejects once the acceptor is closed. */
  accept(): Promise<Link> {
    const link = this.#ready.shift();
    if (link) return Promise.resolve(link);
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("the acceptor is closed"));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Stops accepting: waiting links are closed, `accept()` rejects; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const link of this.#ready.splice(0)) link.close();
    for (const link of this.#streams.values()) link.close();
    const error = new Deno.errors.BadResource("the acceptor is closed");
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
  }

  #push(link: Link): void {
    if (this.#closed) return link.close();
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(link);
    else this.#ready.push(link);
  }
}

/** A request body, whole; throws past `max` bytes. */
async function readBounded(req: Request, max: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body ?? []) {
    size += chunk.length;
    if (size > max) throw new RangeError(`a body over ${max} bytes`);
    parts.push(chunk);
  }
  return concat(...parts);
}
