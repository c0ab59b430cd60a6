/**
 * The relay as an HTTP request handler: mount it in any `Deno.serve` app, or
 * use {@linkcode serveRelay}. This file only routes requests; the rules live
 * in `_hub.ts`, the transports in `_websocket_endpoint.ts` and
 * `_http_stream_endpoint.ts`, the pages in `_status_page.ts`, `_metrics.ts`
 * and `_chat_page.ts`.
 *
 * @module
 */

import { chatPage } from "./_chat_page.ts";
import { clusterRefusals, fromClusterPeer, peerHandlers } from "./_forward.ts";
import { Hub, type RelayStats, SHUTTING_DOWN } from "./_hub.ts";
import { refuseRequest } from "./_http.ts";
import { serverStats } from "./_http_server.ts";
import { HttpStreamEndpoint } from "./_http_stream_endpoint.ts";
import { PipeEndpoint, pipeEndpoints } from "./_pipes.ts";
import { metricsResponse } from "./_metrics.ts";
import { PATHS, PIPE_HEADERS } from "./_protocol.ts";
import { secretsEqual } from "./_secret.ts";
import { relaySettings } from "./_settings.ts";
import { statusPage } from "./_status_page.ts";
import { acceptWebSocket } from "./_websocket_endpoint.ts";
import { requestSource } from "../link/_forwarded_for.ts";
import type { RelayOptions } from "./options.ts";

/** The methods each path answers: the Allow of a 405 there (RFC 9110 15.5.6). */
const ALLOWED_METHODS: Readonly<Record<string, string>> = {
  "/": "GET, HEAD",
  "/chat": "GET, HEAD",
  "/chat/": "GET, HEAD",
  "/healthz": "GET, HEAD",
  "/metrics": "GET, HEAD",
  [PATHS.ws]: "GET",
  [PATHS.stream]: "POST",
  [PATHS.send]: "POST",
  [PATHS.pipe]: "GET, POST",
};

/**
 * A relay: rooms of nodes (each named by a session id) that reach it over
 * WebSocket or, where proxies break WebSockets, over a streaming response
 * plus POSTs.
 */
export class Relay implements Disposable {
  #hub: Hub;
  #httpStreams: HttpStreamEndpoint;
  #pipes: PipeEndpoint;

  /** Creates a relay; see {@linkcode RelayOptions}. A `RangeError` names a bad setting. */
  constructor(options: RelayOptions = {}) {
    this.#hub = new Hub(relaySettings(options));
    this.#httpStreams = new HttpStreamEndpoint(this.#hub);
    this.#pipes = new PipeEndpoint(this.#hub);
    this.#hub.onPipeRefuse = (member, id, reason) => this.#pipes.refuse(member, id, reason);
    pipeEndpoints.set(this, this.#pipes);
    peerHandlers.set(this, (req, info) => this.#handlePeer(req, info));
    this.#hub.onClusterRefused = (reason) => clusterRefusals.get(this)?.(reason);
  }

  /**
   * A request on the cluster listener (`serveRelay` with `redis`), from
   * another relay showing the cluster's key: a pipe's end its node accepted,
   * or a POST of a node of ours that reached that relay instead.
   */
  async #handlePeer(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> {
    const hub = this.#hub;
    if (!(await fromClusterPeer(hub, req))) {
      await req.body?.cancel();
      return refuseRequest(
        hub,
        401,
        "unauthorized",
        "only relays of this cluster come here",
        "RelayClusterKey",
      );
    }
    const route = `${req.method} ${new URL(req.url).pathname}`;
    if (route === `POST ${PATHS.send}`) return await this.#httpStreams.send(req, true);
    if (route === `GET ${PATHS.pipe}` || route === `POST ${PATHS.pipe}`) {
      // A node's own request (its session, nickname and token), or a relay bringing a pipe's end.
      return req.headers.has(PIPE_HEADERS.session)
        ? await this.#pipes.handle(req, info, true)
        : await this.#pipes.handlePeer(req, info);
    }
    await req.body?.cancel();
    return refuseRequest(
      hub,
      404,
      "not-found",
      "this listener takes pipes and POSTs of other relays",
    );
  }

  /** Whether the relay is open to anyone: it has no secret. */
  get open(): boolean {
    return this.#hub.settings.secret === undefined;
  }

  /** Counters and gauges (also served at `/metrics`). */
  get stats(): RelayStats {
    const connections = serverStats.get(this)?.();
    const stats = { ...this.#hub.stats, pipes: this.#pipes.stats };
    return connections ? { ...stats, connections } : stats;
  }

  /**
   * Handles one HTTP request (a `Deno.serve` handler): the status page `/`,
   * `/healthz`, `/metrics`, the chat page `/chat`, and the two transports
   * under `/relay/`.
   *
   * @example Mount it in your own server
   * ```ts
   * import { Relay } from "@immortal/sockets/relay";
   * import assert from "node:assert/strict";
   *
   * const relay = new Relay({ secret: "s3cret" });
   * const server = Deno.serve(
   *   { hostname: "127.0.0.1", port: 0, onListen() {} },
   *   (req, info) => relay.handle(req, info),
   * );
   * const health = await fetch(`http://127.0.0.1:${server.addr.port}/healthz`, {
   *   headers: { authorization: "Bearer s3cret" }, // the numbers are not public
   * });
   * assert.deepEqual(await health.json(), { status: "ok", sessions: 0, nodes: 0 });
   *
   * // Shut down: disconnect every node, then stop listening.
   * relay.close();
   * await server.shutdown();
   * ```
   */
  handle(req: Request, info?: Deno.ServeHandlerInfo): Response | Promise<Response> {
    const hub = this.#hub;
    // Closed: its nodes were told to go; nothing new begins here (a node that
    // rejoined would hold the server's shutdown open), and a health check
    // hears it.
    if (hub.closed) return refuseRequest(hub, 503, "unavailable", SHUTTING_DOWN);
    const url = new URL(req.url);
    const { pathname } = url;
    switch (`${req.method} ${pathname}`) {
      case "GET /":
      case "HEAD /":
        return statusPage({
          ...(this.#mayWatch(req) ? this.#gauges() : {}),
          open: this.open,
          chatPage: hub.settings.chatPage,
        });
      case "GET /chat":
      case "HEAD /chat":
        return hub.settings.chatPage
          ? chatPage()
          : refuseRequest(hub, 404, "not-found", "no chat page on this relay");
      case "GET /chat/":
      case "HEAD /chat/":
        // A link typed with a slash. Relative, so that it stays under a reverse
        // proxy's prefix (which the relay does not see), as the page's own paths do.
        return hub.settings.chatPage
          ? new Response(null, { status: 308, headers: { location: `../chat${url.search}` } })
          : refuseRequest(hub, 404, "not-found", "no chat page on this relay");
      case "GET /healthz":
      case "HEAD /healthz": // what many health checkers send; the server drops the body
        return this.#health(req);
      case "GET /metrics":
      case "HEAD /metrics": {
        if (this.#mayWatch(req)) return metricsResponse(this.stats);
        return refuseRequest(
          hub,
          401,
          "unauthorized",
          // The one that works: with a metrics token, the secret does not.
          `the metrics need the ${
            hub.settings.metricsToken === undefined ? "relay secret" : "metrics token"
          }: Authorization: Bearer TOKEN`,
          "Bearer",
        );
      }
      case `GET ${PATHS.ws}`:
        return acceptWebSocket(hub, req, this.#source(req, info));
      case `POST ${PATHS.stream}`:
        return this.#httpStreams.open(req, this.#source(req, info));
      case `POST ${PATHS.send}`:
        return this.#httpStreams.send(req);
      case `GET ${PATHS.pipe}`:
      case `POST ${PATHS.pipe}`:
        return this.#pipes.handle(req, info);
    }
    if (Object.hasOwn(ALLOWED_METHODS, pathname)) {
      const refusal = refuseRequest(
        hub,
        405,
        "method-not-allowed",
        `${req.method} is not allowed here`,
      );
      refusal.headers.set("allow", ALLOWED_METHODS[pathname]);
      return refusal;
    }
    return refuseRequest(hub, 404, "not-found", "no such page");
  }

  /** Where a node's request comes from, for the log. */
  #source(req: Request, info?: Deno.ServeHandlerInfo): string | undefined {
    return requestSource(req, info?.remoteAddr, this.#hub.settings.trustedProxies);
  }

  /**
   * Disconnects every node (they hear "relay shutting down"), stops the
   * keep-alive timer, and from now on answers every request 503
   * `unavailable`: close it before its server's shutdown, which waits for
   * the requests under way.
   */
  close(): void {
    this.#hub.close();
    this.#httpStreams.close();
    this.#pipes.close();
  }

  /** Same as {@linkcode Relay.close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Whether `req` may see the relay's numbers: it shows the metrics token
   * (or, without one, the relay secret) as a bearer token. Counters move with
   * every message: public, they would let an outsider watch others' traffic.
   */
  #mayWatch(req: Request): boolean {
    const { metricsToken, secret } = this.#hub.settings;
    const needed = metricsToken ?? secret;
    if (needed === undefined) return true;
    // The scheme's name is case-insensitive (RFC 7235).
    const given = /^Bearer (.+)$/i.exec(req.headers.get("authorization") ?? "")?.[1];
    return given !== undefined && secretsEqual(given, needed);
  }

  /**
   * `/healthz`: 200 `ok` while the relay takes nodes. A relay of a cluster
   * that cannot reach Redis refuses every join: 503, so that a load balancer
   * sends nodes to another.
   */
  #health(req: Request): Response {
    const gauges = this.#mayWatch(req) ? this.#gauges() : {};
    if (this.#hub.clusterStoreUp === false) {
      return Response.json({
        status: "unavailable",
        reason: "the relay cannot reach its cluster store (Redis)",
        ...gauges,
      }, { status: 503 });
    }
    return Response.json({ status: "ok", ...gauges });
  }

  #gauges(): { sessions: number; nodes: number } {
    const { sessions, nodes } = this.#hub.stats;
    return { sessions, nodes };
  }
}
