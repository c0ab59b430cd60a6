/**
 * Accepting links over HTTP: a request handler that turns WebSocket upgrades,
 * and HTTP-streaming requests for proxies that refuse WebSocket, into
 * {@linkcode Link}s, so an immortal listener can be mounted in any
 * `Deno.serve` app, or sit behind nginx or Caddy on port 443.
 *
 * @module
 */

import { describeValue } from "../_util.ts";
import type { Acceptor, Link } from "./link.ts";
import { HttpLinkEndpoint, linkRequestKind, notALinkRequest } from "./_http_link_endpoint.ts";
import { LinkQueue } from "./_link_queue.ts";
import { canonicalIp, forwardedClient, ipAddresses } from "./_forwarded_for.ts";
import { WebSocketLink } from "./websocket.ts";

/**
 * WebSocket links closed here whose peer has not answered the close, beyond
 * which new ones are refused (503): from one address, and from all. Deno
 * keeps such a socket open for as long as the peer keeps its connection,
 * and buffers whatever message it has begun (up to 64 MiB): a client that
 * never answered reached a thousand descriptors in 25 s, and Deno.serve's
 * accept loop died of EMFILE.
 */
const MAX_LINGERING_PER_SOURCE = 8;
const MAX_LINGERING = 256;

/** Settings of an {@linkcode HttpLinkAcceptor}. */
export interface HttpLinkAcceptorOptions {
  /**
   * The address reported as the listener's (`listener.addr`): the HTTP
   * server's, when you want it shown. Default `0.0.0.0:0`.
   */
  addr?: Deno.NetAddr;
  /** Links waiting for `accept()` beyond this are refused with 503. Default 256. */
  backlog?: number;
  /**
   * IP addresses of the reverse proxies in front (nginx, Caddy): a link from
   * one of them comes from the client it names in `X-Forwarded-For`, so that
   * the listener's limits per source, and its logs, count clients, not the
   * proxy. Anyone else's header is ignored. Default none.
   */
  trustedProxies?: string[];
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
export class HttpLinkAcceptor implements Acceptor<Deno.NetAddr>, Disposable {
  /** The address reported for the listener. */
  readonly addr: Deno.NetAddr;
  #backlog: number;
  #trusted: string[];
  #links = new LinkQueue();
  #endpoint = new HttpLinkEndpoint();
  /** WebSocket links whose socket is open, with their source. */
  #sockets = new Map<WebSocketLink, string>();

  /** An acceptor with no links yet. */
  constructor(options: HttpLinkAcceptorOptions = {}) {
    this.addr = options.addr ?? { transport: "tcp", hostname: "0.0.0.0", port: 0 };
    const backlog = options.backlog ?? 256;
    if (typeof backlog !== "number") {
      throw new TypeError(`backlog must be a number, got ${describeValue(backlog)}`);
    }
    // 0 or less refused every link (503), quietly. (Infinity: no bound, as for `listen`.)
    if (!(backlog >= 1) || (!Number.isInteger(backlog) && backlog !== Infinity)) {
      throw new RangeError(`backlog must be an integer >= 1, got ${backlog}`);
    }
    this.#backlog = backlog;
    this.#trusted = ipAddresses("trustedProxies", options.trustedProxies ?? []);
  }

  /**
   * Handles one request: a WebSocket upgrade, or a POST of the HTTP-streaming
   * transport (opening a link, or carrying its bytes up), becomes or feeds a
   * link; anything else is answered 426 (upgrade required).
   */
  handle(req: Request, info?: Deno.ServeHandlerInfo): Response | Promise<Response> {
    if (this.#links.closed) return new Response("not accepting links", { status: 503 });
    const kind = linkRequestKind(req);
    if (kind === "upstream") return this.#endpoint.upstream(req);
    if (kind === null) return notALinkRequest();
    if (this.#links.waiting >= this.#backlog) {
      return new Response("too many links waiting", { status: 503 });
    }
    // Read before the upgrade: the request's details are gone after it.
    const client = this.#clientAddr(req, info?.remoteAddr);
    const source = client?.transport === "tcp" ? client.hostname : "";
    if (kind === "websocket") {
      const refusal = this.#lingeringRefusal(source);
      if (refusal !== null) return new Response(refusal, { status: 503 });
    }
    const opened = this.#endpoint.open(req, client);
    if (typeof opened === "string") return new Response(opened, { status: 400 });
    const link = opened.link;
    if (link instanceof WebSocketLink) {
      this.#sockets.set(link, source);
      link.socketClosed.then(() => this.#sockets.delete(link));
    }
    this.#links.push(link);
    return opened.response;
  }

  /** Why a WebSocket from `source` is refused now, or null: see MAX_LINGERING. */
  #lingeringRefusal(source: string): string | null {
    let all = 0;
    let mine = 0;
    for (const [link, from] of this.#sockets) {
      if (!link.lingering) continue;
      all++;
      if (from === source) mine++;
    }
    if (mine >= MAX_LINGERING_PER_SOURCE) {
      return `${mine} WebSocket links from your address were closed and not answered: answer them first`;
    }
    if (all >= MAX_LINGERING) {
      return "too many WebSocket links are waiting for their close to be answered";
    }
    return null;
  }

  /** The client's address: the connection's peer, or the client a trusted proxy names. */
  #clientAddr(req: Request, peer: Deno.Addr | undefined): Deno.Addr | undefined {
    if (peer === undefined || this.#trusted.length === 0) return peer;
    const client = forwardedClient(req, peer, this.#trusted);
    const hostname = typeof client === "string" ? canonicalIp(client) : null;
    // Its port, if the proxy wrote one, is of no use: sources are addresses.
    return hostname === null ? peer : { transport: "tcp", hostname, port: 0 };
  }

  /** Waits for the next link; rejects once the acceptor is closed. */
  accept(): Promise<Link> {
    return this.#links.accept();
  }

  /** Stops accepting: waiting links are closed, `accept()` rejects; idempotent. */
  close(): void {
    this.#links.close();
    this.#endpoint.close();
  }

  /** Same as {@linkcode HttpLinkAcceptor.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
