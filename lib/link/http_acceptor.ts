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
import { sourceOf } from "./_source.ts";

/**
 * WebSocket links closed here whose peer has not answered the close
 * ("lingering"): Deno keeps such a socket open for as long as the peer keeps
 * its connection, and buffers whatever message it has begun (up to 64 MiB).
 * A client that never answered reached a thousand descriptors in 25 s, and
 * Deno.serve's accept loop died of EMFILE. So a source (an address; an IPv6
 * /64) with this many lingering, and as many as it has live links, gets no
 * more WebSocket links (503) until they are answered. As many as its live
 * links: a peer that vanished (a laptop asleep, a phone gone to another
 * network) lingers too, until TCP gives up (15 minutes), and many clients
 * behind one NAT must not lock each other out.
 */
const MAX_LINGERING_PER_SOURCE = 8;
/**
 * Lingering sockets in all beyond which a source with any of its own gets
 * no more: strangers from many addresses each add one at most, and a source
 * with none is never refused for others'.
 */
const MAX_LINGERING = 256;

/** A source's WebSocket links whose sockets are open. */
interface SourceSockets {
  live: number;
  lingering: number;
}

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
  /** WebSocket links whose socket is open, by source. */
  #sources = new Map<string, SourceSockets>();
  #lingering = 0;

  /** An acceptor with no links yet; `options` may be left out (each has a default). */
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
   * link; anything else is answered 426 (upgrade required). A new link is
   * answered 503 when the acceptor is closed, too many links wait for
   * `accept()`, or (a WebSocket) the client's address has too many links
   * whose close it never answered; 400 when its opening request has a body.
   * The links of sessions under way still take their POSTs once it closed.
   */
  handle(req: Request, info?: Deno.ServeHandlerInfo): Response | Promise<Response> {
    const kind = linkRequestKind(req);
    if (kind === "upstream") return this.#endpoint.upstream(req);
    if (this.#links.closed) return new Response("not accepting links", { status: 503 });
    if (kind === null) return notALinkRequest();
    if (this.#links.waiting >= this.#backlog) {
      return new Response("too many links waiting", { status: 503 });
    }
    // Read before the upgrade: the request's details are gone after it.
    const client = this.#clientAddr(req, info?.remoteAddr);
    const source = sourceOf(client) ?? "";
    if (kind === "websocket") {
      const refusal = this.#lingeringRefusal(source);
      if (refusal !== null) return new Response(refusal, { status: 503 });
    }
    const opened = this.#endpoint.open(req, client);
    if (typeof opened === "string") return new Response(opened, { status: 400 });
    if (opened.link instanceof WebSocketLink) this.#count(opened.link, source);
    this.#links.push(opened.link);
    return opened.response;
  }

  /** Counts `link`'s socket for `source` until it closes: live, then lingering once closed here. */
  #count(link: WebSocketLink, source: string): void {
    const counts = this.#sources.get(source) ?? { live: 0, lingering: 0 };
    this.#sources.set(source, counts);
    counts.live++;
    let lingering = false;
    link.closing.then(() => {
      lingering = true;
      counts.live--;
      counts.lingering++;
      this.#lingering++;
    });
    link.socketClosed.then(() => {
      if (lingering) {
        counts.lingering--;
        this.#lingering--;
      } else {
        counts.live--;
      }
      if (counts.live === 0 && counts.lingering === 0) this.#sources.delete(source);
    });
  }

  /** Why a WebSocket from `source` is refused now, or null: see MAX_LINGERING_PER_SOURCE. */
  #lingeringRefusal(source: string): string | null {
    const counts = this.#sources.get(source);
    if (counts === undefined || counts.lingering === 0) return null;
    if (counts.lingering >= Math.max(MAX_LINGERING_PER_SOURCE, counts.live)) {
      return `${counts.lingering} WebSocket links from your address were closed and their ` +
        "close not answered: answer them first";
    }
    if (this.#lingering >= MAX_LINGERING) {
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

  /**
   * Stops accepting: new links are refused, links not yet accepted are
   * closed, `accept()` rejects; idempotent. Links already accepted go on
   * (their sessions end them): a listener closing lets its sessions on live
   * links finish, over HTTP as over TCP.
   */
  close(): void {
    this.#links.close();
  }

  /** Same as {@linkcode HttpLinkAcceptor.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
