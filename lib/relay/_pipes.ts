/**
 * Relay pipes (PROTOCOL.md 2.20): two nodes of one session open a binary
 * pipe to each other through the relay, each end a link over HTTP (a
 * WebSocket, or HTTP streaming; PROTOCOL.md Part 4). The relay pairs the
 * two ends and copies bytes between them, and nothing else: it never parses
 * them, and holds at most one buffer per direction — when one end stops
 * reading, the relay stops reading the other, and TCP slows the sender.
 *
 * Who may: only a member of the session (it proves it with its join token),
 * only to a member that hears it, and only if that member accepts the pipe
 * (it answers the relay's `pipe` frame with a pipe request of its own, or
 * refuses with a `pipe-refuse` frame).
 *
 * In a cluster (several relays on Redis) the two nodes may be on different
 * relays: the dialing node's relay announces the pipe through Redis, the
 * relay holding the other node offers it and, once that node opens its end,
 * opens a WebSocket to the first relay's peer listener with the cluster's
 * key. Each relay then copies between its node's end and that link.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { errorMessage } from "../_util.ts";
import {
  HttpLinkEndpoint,
  linkRequestKind,
  type UpgradeToLink,
} from "../link/_http_link_endpoint.ts";
import type { Link } from "../link/link.ts";
import { LINK_HEADER, MAX_POST_BYTES } from "../link/http_stream.ts";
import { WebSocketLink } from "../link/websocket.ts";
import { openWebSocketLink } from "../link/_websocket_client.ts";
import type { ClusterPipeEvent } from "./_cluster.ts";
import { ByteQueue } from "../link/_byte_queue.ts";
import { fetchWithClusterKey, forwardToOwner, openWithClusterKey, ownedId } from "./_forward.ts";
import { type Hub, SHUTTING_DOWN } from "./_hub.ts";
import { refuseRequest } from "./_http.ts";
import { HOP_BY_HOP } from "./_http1_response.ts";
import { connectionOf } from "./_http_server.ts";
import { encodeFrame, PATHS, PIPE_HEADERS, type RelayErrorCode } from "./_protocol.ts";
import { type Member, roleHears } from "./_room.ts";
import type { ServerWebSocket } from "./_server_websocket.ts";
import { secretsEqual } from "./_secret.ts";
import { shownName } from "./_shown_name.ts";

/** What a pipe request waits for becomes, once its dialer gave up (its request closed). */
const DIALER_LEFT = { status: 499, code: "pipe-timeout", message: "the dialer left" } as const;

/** The answer to a pipe request whose dialer gave up: nobody reads it, and it is no refusal. */
function dialerLeft(): Response {
  return new Response(null, { status: 499 });
}

const log = getLogger(["immortal", "relay", "pipe"]);

/** Bytes the relay reads from one end before it writes them to the other, while the pipe is quiet. */
const PIPE_BUFFER = 64 * 1024;
/**
 * ... once a read filled that: the pipe is busy, and each write to an
 * HTTP-streaming end is a chunk of its response, a promise and a syscall.
 */
const BUSY_PIPE_BUFFER = 1 << 20;
/** Most bytes handed over at once by an end that queues what it receives. */
const MAX_TAKEN = 1 << 20;
/** Bytes a WebSocket end may have queued (received, not yet passed on) before it stops reading. */
const SOCKET_QUEUE = 256 * 1024;
/** Largest WebSocket message on a pipe (our link sends at most 256 KiB per message). */
const MAX_PIPE_MESSAGE = 1 << 20;
/** Pipes (waiting or open) one node may be an end of. */
const MAX_PIPES_PER_NODE = 64;
const PIPE_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** A refusal of a pipe request: the HTTP status and error code to answer with. */
interface Refusal {
  status: number;
  code: RelayErrorCode;
  message: string;
}

/** A pipe asked for and not yet answered by the node it is for. */
interface Pending {
  id: string;
  from: Member;
  /** The node asked: here, or (in a cluster) the nickname of a node on another relay. */
  to: Member | string;
  /** The answer: the accepting end's link (or the other relay's), or a refusal. */
  answer: PromiseWithResolvers<PipeEnd | Refusal>;
  /** Answered already: a second accept (or one after the timeout) finds nothing to take. */
  settled: boolean;
}

/**
 * Answers `pending`, once. A second answer is refused rather than dropped:
 * a link opened for it would be neither spliced nor closed.
 */
function settle(pending: Pending, answer: PipeEnd | Refusal): void {
  if (pending.settled) return;
  pending.settled = true;
  pending.answer.resolve(answer);
}

/** A pipe a node on another relay of the cluster asked a node here for. */
interface Offered {
  from: string;
  to: Member;
  /** The id of the relay the dialing node is on. */
  relay: string;
  timer: ReturnType<typeof setTimeout>;
  /** What the offer counts for its node ({@linkcode PipeEndpoint}'s per-node limit). */
  held: Member[];
}

const NOT_ALLOWED: Refusal = {
  status: 403,
  code: "not-allowed",
  message: "an agent opens pipes to bridges only",
};

/** Pipe endpoints by relay, for `serveRelay`'s peer listener. */
export const pipeEndpoints: WeakMap<object, PipeEndpoint> = new WeakMap();

/** Counters of the relay's pipes. */
export interface PipeStats {
  /**
   * Pipes open now; a pipe this relay carries between a node and its relay
   * (a request relayed in a cluster) counts too.
   */
  open: number;
  /** Pipes opened since start. */
  opened: number;
  /** Bytes copied through pipes since start, both directions. */
  bytes: number;
  /** Pipe requests of nodes joined on another relay of the cluster, sent on to it since start. */
  relayed: number;
  /**
   * Bytes the relay holds for its pipes now: read from one end and not yet
   * written to the other, and queued in the ends (to send, or received).
   */
  heldBytes: number;
}

/**
 * A pipe's end, with what it holds: bytes received and not yet passed on,
 * or queued to send; and, for our own WebSocket, the socket itself.
 */
type PipeEnd = Link & {
  readonly queuedBytes?: number;
  readonly socket?: ServerWebSocket;
  /** The received bytes as they came (whole POST bodies, messages): no copy into a buffer. */
  take?(max: number): Promise<Uint8Array | null>;
  /** `write` that keeps `data` as it is: the caller gives it away. */
  writeOwned?(data: Uint8Array): Promise<void>;
};

/**
 * A {@linkcode Link} over our own server's WebSocket: messages are queued
 * until read, and the socket stops reading frames while too many are.
 */
function serverSocketLink(socket: ServerWebSocket, remoteAddr?: Deno.Addr): PipeEnd {
  const received = new ByteQueue();
  socket.onmessage = (data) => {
    if (typeof data === "string") return socket.close(1003, "pipes carry bytes");
    received.push(data);
    if (received.size > SOCKET_QUEUE) socket.pause();
  };
  socket.onoversize = () => socket.close(1009, "message too large");
  socket.onclose = () => received.end();
  return {
    remoteAddr,
    socket,
    get queuedBytes() {
      return received.size + socket.bufferedAmount;
    },
    async read(buffer) {
      const n = await received.read(buffer);
      if (received.size <= SOCKET_QUEUE / 2) socket.resume();
      return n;
    },
    async take(max) {
      const chunk = await received.take(max);
      if (received.size <= SOCKET_QUEUE / 2) socket.resume();
      return chunk;
    },
    write: (data) => socket.sendBytes(data),
    close() {
      socket.close(1000, "pipe closed");
      received.end();
    },
  };
}

/** The relay's pipes: requests, pairing, and the copying. */
export class PipeEndpoint {
  #hub: Hub;
  /** This relay's id in its cluster, once loaded: the start of its HTTP-streaming links' ids. */
  #relayId: string | null = null;
  #links = new HttpLinkEndpoint(() => ownedId(this.#relayId));
  #pending = new Map<string, Pending>();
  #offered = new Map<string, Offered>();
  /** Where other relays of the cluster open pipes to this one; null: nowhere (no pipes across). */
  #peerUrl: string | null = null;
  /** Pipes (waiting or open) per node. */
  #perNode = new Map<Member, number>();
  #open = new Set<[PipeEnd, PipeEnd]>();
  #counters = { opened: 0, bytes: 0, relayed: 0 };
  /** HTTP-streaming pipe ends whose answer streams through this relay from another: ended on close. */
  #relayedStreams = new Set<AbortController>();
  /** Of those, the ones whose answer is streaming (open pipes, as this relay sees them). */
  #relayedOpen = 0;
  /**
   * Bytes of a relayed pipe this relay holds (`bytes`, when it takes them)
   * or let go of (`-bytes`): counted as carried once, held meanwhile.
   */
  #holdingRelayed = (bytes: number): void => {
    this.#inTransit += bytes;
    if (bytes > 0) this.#counters.bytes += bytes;
  };
  /** Bytes read from one end and being written to the other. */
  #inTransit = 0;

  /** Pipes between members of `hub`'s sessions. */
  constructor(hub: Hub) {
    this.#hub = hub;
    hub.onClusterPipe = (room, event) => this.#fromCluster(room, event);
    // Set before any node can join (each join waits for the cluster too, and
    // this was asked first), so before any HTTP-streaming link is opened.
    hub.cluster.then((cluster) => this.#relayId = cluster?.id ?? null, () => {});
  }

  /**
   * In a cluster: other relays reach {@linkcode PipeEndpoint.handlePeer} at
   * `url`. Until this is called, pipes go only between nodes on this relay.
   */
  advertise(url: string): void {
    this.#peerUrl = url;
    this.#hub.cluster.then((cluster) => cluster?.advertise(url));
  }

  /** Counters and gauges. */
  get stats(): PipeStats {
    let held = this.#inTransit;
    for (const [a, b] of this.#open) held += (a.queuedBytes ?? 0) + (b.queuedBytes ?? 0);
    return { open: this.#open.size + this.#relayedOpen, ...this.#counters, heldBytes: held };
  }

  /**
   * `POST`/`GET /relay/pipe`: a pipe request of either end, or an upstream
   * POST of one. In a cluster, one that belongs to another relay (a POST for
   * its link, a request of a node joined there) goes on to it, unless it came
   * from a relay (`forwarded`) already.
   */
  async handle(req: Request, info?: Deno.ServeHandlerInfo, forwarded = false): Promise<Response> {
    const hub = this.#hub;
    const kind = linkRequestKind(req);
    if (kind === "upstream") {
      const elsewhere = forwarded || this.#links.holds(req) ? null : await forwardToOwner(
        hub,
        req,
        req.headers.get(LINK_HEADER) ?? "",
        MAX_POST_BYTES,
        // A relayed pipe's upstream: its bytes are this relay's too.
        this.#holdingRelayed,
      );
      return elsewhere ?? await this.#links.upstream(req);
    }
    if (kind === null) {
      return refuseRequest(hub, 426, "upgrade-required", "pipes are WebSockets or HTTP streams");
    }
    const member = this.#member(req);
    if (member === null) {
      const relayed = forwarded ? null : await this.#toMembersRelay(req, kind, info?.remoteAddr);
      return relayed ?? refuseRequest(
        hub,
        401,
        "unauthorized",
        "a pipe request needs the session, nickname and join token of a joined node",
        "RelayJoinToken",
      );
    }
    const id = req.headers.get(PIPE_HEADERS.pipe) ?? "";
    if (!PIPE_ID.test(id)) {
      return refuseRequest(hub, 400, "bad-request", "a pipe id is 1-64 of A-Z a-z 0-9 _ -");
    }
    // Read before any upgrade: the request's details are gone after it.
    const remoteAddr = info?.remoteAddr;
    const to = req.headers.get(PIPE_HEADERS.to);
    return to === null
      ? await this.#accept(member, id, req, remoteAddr)
      : await this.#dial(member, id, to, req, remoteAddr);
  }

  /**
   * A request to `/relay/pipe` on the cluster listener, from a relay of the
   * cluster (the caller checked its key): the end of pipe `id` that its node
   * accepted, or an upstream POST for one of our links that reached it.
   */
  async handlePeer(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> {
    const hub = this.#hub;
    const kind = linkRequestKind(req);
    if (kind === "upstream") return await this.#links.upstream(req);
    if (kind !== "websocket") {
      return refuseRequest(hub, 426, "upgrade-required", "relays bring pipes over WebSocket");
    }
    const id = req.headers.get(PIPE_HEADERS.pipe) ?? "";
    const pending = this.#pending.get(id);
    if (!pending || typeof pending.to !== "string" || pending.settled) {
      return refuseRequest(hub, 404, "no-such-stream", "no such pipe waiting");
    }
    const opened = this.#openLink(req, info?.remoteAddr);
    if (typeof opened === "string") return refuseRequest(hub, 400, "bad-request", opened);
    settle(pending, opened.link);
    return opened.response;
  }

  /** `member` refused the pipe `id` it was offered. */
  refuse(member: Member, id: string, reason: string): void {
    const offered = this.#offered.get(id);
    if (offered && offered.to === member) {
      this.#forget(id, offered);
      return this.#refuseAcross(member.room.id, id, offered.relay, "refused", reason);
    }
    const pending = this.#pending.get(id);
    if (!pending || pending.to !== member) return;
    settle(pending, {
      status: 403,
      code: "pipe-refused",
      message: `${member.nickname} refused the pipe: ${reason}`,
    });
  }

  /** Ends every pipe. */
  close(): void {
    for (const [id, offered] of this.#offered) this.#forget(id, offered);
    for (const pending of this.#pending.values()) {
      settle(pending, { status: 503, code: "unavailable", message: SHUTTING_DOWN });
    }
    for (const [a, b] of this.#open) {
      a.close();
      b.close();
    }
    this.#links.close();
    for (const relayed of this.#relayedStreams) relayed.abort();
    this.#relayedStreams.clear();
    this.#relayedOpen = 0;
  }

  /** The joined node a request comes from, by its session, nickname and join token. */
  #member(req: Request): Member | null {
    const room = this.#hub.rooms.get(req.headers.get(PIPE_HEADERS.session) ?? "");
    const member = room?.members.get(req.headers.get(PIPE_HEADERS.nickname) ?? "");
    const token = req.headers.get(PIPE_HEADERS.token);
    if (!member || token === null || !secretsEqual(token, member.token)) return null;
    return member;
  }

  async #dial(
    from: Member,
    id: string,
    nickname: string,
    req: Request,
    remoteAddr?: Deno.Addr,
  ): Promise<Response> {
    const hub = this.#hub;
    let to: Member | string | undefined = from.room.members.get(nickname);
    if (!to) {
      const elsewhere = await this.#elsewhere(from, nickname);
      if (typeof elsewhere === "object") {
        return refuseRequest(hub, elsewhere.status, elsewhere.code, elsewhere.message);
      }
      to = elsewhere;
    }
    if (!to || to === from) {
      return refuseRequest(hub, 404, "no-such-node", `no node "${nickname}" in this session`);
    }
    if (typeof to !== "string" && !to.hears(from)) {
      return refuseRequest(hub, NOT_ALLOWED.status, NOT_ALLOWED.code, NOT_ALLOWED.message);
    }
    if (this.#pending.has(id)) {
      return refuseRequest(hub, 409, "bad-request", "that pipe id is in use");
    }
    for (const end of [from, to]) {
      if (typeof end !== "string" && (this.#perNode.get(end) ?? 0) >= MAX_PIPES_PER_NODE) {
        const message = `${end.nickname} has ${MAX_PIPES_PER_NODE} pipes already`;
        return refuseRequest(hub, 503, "full", message);
      }
    }
    const pending: Pending = { id, from, to, answer: Promise.withResolvers(), settled: false };
    this.#pending.set(id, pending);
    // A pipe asked for counts for both its nodes from now, not once paired:
    // dials waiting for an answer passed the limit without end.
    const held = this.#hold([from, to]);
    let spliced = false;
    const timeout = hub.settings.authTimeout;
    const timer = setTimeout(() =>
      settle(pending, {
        status: 504,
        code: "pipe-timeout",
        message: `${nickname} did not answer the pipe within ${timeout} ms`,
      }), timeout);
    // A dialer that gives up (it races fresh dials while its session resumes)
    // closes its request: the pipe is dropped then, not held for the timeout,
    // its connection counted among the unjoined ones all that while.
    const gaveUp = () => settle(pending, DIALER_LEFT);
    try {
      if (typeof to !== "string") {
        to.sink.push(encodeFrame({ t: "pipe", id, from: from.nickname }));
      } else {
        // The relay holding `to` offers it; its answer comes to handlePeer, or as a refusal.
        const cluster = (await hub.cluster)!;
        cluster.announcePipe(from.room.id, {
          kind: "offer",
          id,
          from: from.nickname,
          to,
          relay: cluster.id,
        }).catch((error) => settle(pending, this.#storeUnreachable(error, from)));
      }
      req.signal.addEventListener("abort", gaveUp, { once: true });
      if (req.signal.aborted) gaveUp(); // gone already, during the lookups above
      const answer = await pending.answer.promise;
      if (req.signal.aborted) {
        if ("read" in answer) answer.close();
        return dialerLeft();
      }
      if (!("read" in answer)) {
        return refuseRequest(hub, answer.status, answer.code, answer.message);
      }
      const opened = this.#openLink(req, remoteAddr);
      if (typeof opened === "string") {
        answer.close();
        return refuseRequest(hub, 400, "bad-request", opened);
      }
      this.#splice(from, to, opened.link, answer, held);
      spliced = true;
      return opened.response;
    } finally {
      req.signal.removeEventListener("abort", gaveUp);
      clearTimeout(timer);
      this.#pending.delete(id);
      if (!spliced) this.#release(held);
    }
  }

  async #accept(
    member: Member,
    id: string,
    req: Request,
    remoteAddr?: Deno.Addr,
  ): Promise<Response> {
    const hub = this.#hub;
    const offered = this.#offered.get(id);
    if (offered && offered.to === member) {
      return await this.#acceptForPeer(id, offered, req, remoteAddr);
    }
    const pending = this.#pending.get(id);
    // Answered already (accepted, refused, timed out): a link opened now
    // would be neither spliced nor closed.
    if (!pending || pending.to !== member || pending.settled) {
      return refuseRequest(hub, 404, "no-such-stream", "no such pipe waiting for you");
    }
    const opened = this.#openLink(req, remoteAddr);
    if (typeof opened === "string") return refuseRequest(hub, 400, "bad-request", opened);
    settle(pending, opened.link);
    return opened.response;
  }

  /**
   * A pipe request of a node joined on another relay of the cluster (behind
   * one port shared by several relays, or a load balancer without
   * stickiness, a node's requests reach any of them): sent on to that relay,
   * which checks it as its own. An HTTP-streaming end's answer streams back
   * through this relay; a WebSocket end is spliced to a WebSocket this relay
   * opens to that relay. Null when the node is joined nowhere else (the
   * caller refuses it as before).
   */
  async #toMembersRelay(
    req: Request,
    kind: "websocket" | "open",
    remoteAddr?: Deno.Addr,
  ): Promise<Response | null> {
    const hub = this.#hub;
    const cluster = await hub.cluster;
    const session = req.headers.get(PIPE_HEADERS.session);
    const nickname = req.headers.get(PIPE_HEADERS.nickname);
    // Only what could be a member asks Redis where it is.
    if (cluster === null || !session || !nickname || session.length + nickname.length > 512) {
      return null;
    }
    let url: string | null;
    let key: string;
    try {
      const where = await cluster.member(session, nickname);
      if (where === null || where.relay === cluster.id) return null;
      url = await cluster.relayUrl(where.relay);
      key = await cluster.key();
    } catch {
      return null; // Redis is away
    }
    if (url === null) return null;
    this.#counters.relayed++;
    const headers: Record<string, string> = {};
    for (const name of Object.values(PIPE_HEADERS)) {
      const value = req.headers.get(name);
      if (value !== null && name !== PIPE_HEADERS.cluster) headers[name] = value;
    }
    const withKey = (key: string) => ({ ...headers, [PIPE_HEADERS.cluster]: key });
    if (kind === "open") {
      return await this.#relayStreamOpen(
        req,
        (abort) =>
          fetchWithClusterKey(cluster, key, (key) =>
            fetch(new URL(PATHS.pipe, url), {
              method: "POST",
              headers: { ...withKey(key), [LINK_HEADER]: "open" },
              redirect: "manual",
              signal: abort,
            })),
      );
    }
    const target = new URL(PATHS.pipe, url);
    target.protocol = target.protocol === "https:" ? "wss:" : "ws:";
    let peer: Link;
    try {
      // That relay answers once the pipe is paired (or refused), within its
      // auth timeout: so does this one; and a dialer that gives up ends it.
      const signal = AbortSignal.any([
        req.signal,
        AbortSignal.timeout(hub.settings.authTimeout + 5000),
      ]);
      peer = await openWithClusterKey(
        cluster,
        key,
        (key) => openWebSocketLink(target, signal, withKey(key)),
      );
    } catch (error) {
      log.debug("Pipe request of {nickname} sent on to its relay: {reason}", {
        nickname,
        reason: errorMessage(error),
      });
      // Its dialer gave up: nobody to answer, no refusal to count.
      if (req.signal.aborted) return dialerLeft();
      // Over WebSocket the node sees only the status; ours asks again over
      // HTTP streaming to learn why, and that request brings the reason back.
      // The cluster's addresses stay out of what the node is told.
      const status = Number(/answered (\d{3})/.exec(errorMessage(error))?.[1] ?? 503);
      const code = RELAYED_REFUSALS[status] ?? "unavailable";
      return refuseRequest(
        hub,
        code === "unavailable" ? 503 : status,
        code,
        `its relay answered ${status}`,
      );
    }
    const opened = this.#openLink(req, remoteAddr);
    if (typeof opened === "string") {
      peer.close();
      return refuseRequest(hub, 400, "bad-request", opened);
    }
    this.#splice(nickname, `the relay of ${nickname}`, opened.link, peer, []);
    return opened.response;
  }

  /**
   * An HTTP-streaming pipe end's opening request, sent on by `open` (with
   * the node's pipe headers and the cluster's key, ended by its signal); its
   * answer, the link's downstream included, streams back through this relay
   * until either side ends it or this relay closes.
   */
  async #relayStreamOpen(
    req: Request,
    open: (signal: AbortSignal) => Promise<Response>,
  ): Promise<Response> {
    await req.body?.cancel(); // an opening request has no body
    const abort = new AbortController();
    this.#relayedStreams.add(abort);
    // A dialer that gives up while the other relay pairs its pipe ends that wait too.
    const gaveUp = () => abort.abort();
    req.signal.addEventListener("abort", gaveUp, { once: true });
    if (req.signal.aborted) gaveUp(); // gone already
    let answer: Response;
    try {
      answer = await open(abort.signal);
    } catch (error) {
      this.#relayedStreams.delete(abort);
      log.debug("Pipe link opening sent on to its relay: {reason}", {
        reason: errorMessage(error),
      });
      if (req.signal.aborted) return dialerLeft(); // nobody to answer
      return refuseRequest(this.#hub, 503, "unavailable", "the node's relay cannot be reached");
    } finally {
      req.signal.removeEventListener("abort", gaveUp);
    }
    const streaming = answer.body !== null && answer.status === 200;
    if (streaming) {
      connectionOf(req)?.joined();
      this.#counters.opened++;
      this.#relayedOpen++;
    } else {
      this.#relayedStreams.delete(abort);
    }
    const passed = new Headers();
    for (const [name, value] of answer.headers) {
      if (!HOP_BY_HOP.has(name)) passed.set(name, value);
    }
    const body = answer.body === null ? null : passThrough(answer.body, abort.signal, {
      holding: this.#holdingRelayed,
      done: () => {
        abort.abort();
        if (this.#relayedStreams.delete(abort) && streaming) this.#relayedOpen--;
      },
    });
    return new Response(body, { status: answer.status, headers: passed });
  }

  /**
   * The node here accepted a pipe dialed on another relay: this relay opens
   * a link to that relay's peer listener first, then takes the node's end.
   */
  async #acceptForPeer(
    id: string,
    offered: Offered,
    req: Request,
    remoteAddr?: Deno.Addr,
  ): Promise<Response> {
    const hub = this.#hub;
    // Its count for the node goes on with the pipe, or ends with a failure here.
    this.#forget(id, offered, true);
    let peer: Link;
    try {
      const cluster = (await hub.cluster)!;
      const url = await cluster.relayUrl(offered.relay);
      if (url === null) throw new Error("that relay is gone from the cluster");
      const target = new URL(PATHS.pipe, url);
      target.protocol = target.protocol === "https:" ? "wss:" : "ws:";
      const signal = AbortSignal.timeout(hub.settings.authTimeout);
      peer = await openWithClusterKey(
        cluster,
        await cluster.key(),
        (key) =>
          openWebSocketLink(target, signal, {
            [PIPE_HEADERS.pipe]: id,
            [PIPE_HEADERS.cluster]: key,
          }),
      );
    } catch (error) {
      const message = `cannot reach the relay of ${offered.from}: ${errorMessage(error)}`;
      log.warn("Pipe {from} -> {to}: {message}", {
        from: shownName(offered.from),
        to: shownName(offered.to.nickname),
        message,
      });
      // The dialing node hears it now, not at its timeout.
      this.#refuseAcross(offered.to.room.id, id, offered.relay, "unreachable", errorMessage(error));
      this.#release(offered.held);
      return refuseRequest(hub, 503, "unavailable", message);
    }
    const opened = this.#openLink(req, remoteAddr);
    if (typeof opened === "string") {
      peer.close();
      this.#release(offered.held);
      return refuseRequest(hub, 400, "bad-request", opened);
    }
    this.#splice(offered.to, offered.from, opened.link, peer, offered.held);
    return opened.response;
  }

  /** `from`'s pipe refused because Redis failed: logged for the operator, said to the node. */
  #storeUnreachable(error: unknown, from: Member): Refusal {
    return {
      status: 503,
      code: "unavailable",
      message: this.#hub.storeUnreachable(
        error,
        `Refused a pipe from ${shownName(from.nickname)} in ${shownName(from.room.id)}`,
      ),
    };
  }

  /**
   * In a cluster: `nickname` on another relay, if it is a member there
   * (its nickname), or why `from` may not open a pipe to it.
   */
  async #elsewhere(from: Member, nickname: string): Promise<string | Refusal | undefined> {
    const cluster = await this.#hub.cluster;
    if (!cluster || this.#peerUrl === null) return undefined;
    let member;
    try {
      member = await cluster.member(from.room.id, nickname);
    } catch (error) {
      return this.#storeUnreachable(error, from);
    }
    if (!member || member.relay === cluster.id) return undefined;
    if (!roleHears(member.role, from.role)) return NOT_ALLOWED;
    return nickname;
  }

  /** Another relay's word about a pipe: an offer for a node here, or a refusal of ours. */
  #fromCluster(room: string, event: ClusterPipeEvent): void {
    if (event.kind === "refuse") {
      const pending = this.#pending.get(event.id);
      if (!pending || typeof pending.to !== "string" || pending.from.room.id !== room) return;
      const reason = event.reason.slice(0, 200);
      settle(
        pending,
        event.why === "unreachable"
          ? {
            status: 503,
            code: "unavailable",
            message: `the relay of ${pending.to} cannot reach this one: ${reason}`,
          }
          : {
            status: 403,
            code: "pipe-refused",
            message: `${pending.to} refused the pipe: ${reason}`,
          },
      );
      return;
    }
    const to = this.#hub.rooms.get(room)?.members.get(event.to);
    if (!to || !PIPE_ID.test(event.id) || this.#offered.has(event.id)) return;
    if ((this.#perNode.get(to) ?? 0) >= MAX_PIPES_PER_NODE) {
      const reason = `${to.nickname} has ${MAX_PIPES_PER_NODE} pipes already`;
      return this.#refuseAcross(room, event.id, event.relay, "refused", reason);
    }
    // Forgotten if the node never answers: the dialing relay gives up after authTimeout.
    const timer = setTimeout(() => this.#forget(event.id, offered), this.#hub.settings.authTimeout);
    // Counted for the node while offered, as a pipe asked for here is.
    const offered: Offered = {
      from: event.from,
      to,
      relay: event.relay,
      timer,
      held: this.#hold([to]),
    };
    this.#offered.set(event.id, offered);
    to.sink.push(encodeFrame({ t: "pipe", id: event.id, from: event.from }));
  }

  /** Tells the relay that asked for pipe `id` that it is refused. */
  #refuseAcross(
    room: string,
    id: string,
    relay: string,
    why: "refused" | "unreachable",
    reason: string,
  ): void {
    this.#hub.cluster.then((cluster) =>
      cluster?.announcePipe(room, { kind: "refuse", id, relay, why, reason })
    ).catch(() => {}); // the dialing relay's timeout answers instead
  }

  /** Drops an offer; what it held for its node is released, unless `keep` (it is being accepted). */
  #forget(id: string, offered: Offered, keep = false): void {
    clearTimeout(offered.timer);
    if (this.#offered.get(id) !== offered) return; // forgotten already
    this.#offered.delete(id);
    if (!keep) this.#release(offered.held);
  }

  /** Counts a pipe for each of `ends` that is a node here; returns those, for {@linkcode #release}. */
  #hold(ends: (Member | string)[]): Member[] {
    const members = ends.filter((end): end is Member => typeof end !== "string");
    for (const end of members) this.#perNode.set(end, (this.#perNode.get(end) ?? 0) + 1);
    return members;
  }

  #release(members: Member[]): void {
    for (const member of members) {
      const left = this.#perNode.get(member)! - 1;
      if (left === 0) this.#perNode.delete(member);
      else this.#perNode.set(member, left);
    }
  }

  /** Opens this end's link: our strict WebSocket under `serveRelay`, Deno's when mounted elsewhere. */
  #openLink(req: Request, remoteAddr?: Deno.Addr): { link: PipeEnd; response: Response } | string {
    const connection = connectionOf(req);
    connection?.joined();
    const upgrade: UpgradeToLink = connection
      ? (request) => {
        const upgraded = connection.upgradeWebSocket(request, {
          maxMessageBytes: MAX_PIPE_MESSAGE,
        });
        if (typeof upgraded === "string") return upgraded;
        const link = serverSocketLink(upgraded.socket, remoteAddr);
        return { link, response: upgraded.response };
      }
      : (request) => {
        let upgraded: { socket: WebSocket; response: Response };
        try {
          upgraded = Deno.upgradeWebSocket(request, { idleTimeout: 0 });
        } catch (error) {
          // A handshake with a header missing or wrong: the client's mistake, a 400.
          return `not a WebSocket handshake: ${errorMessage(error)}`;
        }
        // Deno's WebSocket cannot stop reading: a bound on what it queues
        // instead (the end that overruns it loses the pipe).
        const link = new WebSocketLink(upgraded.socket, {
          remoteAddr,
          maxQueuedBytes: 4 * SOCKET_QUEUE,
        });
        return { link, response: upgraded.response };
      };
    return this.#links.open(req, remoteAddr, upgrade) as
      | { link: PipeEnd; response: Response }
      | string;
  }

  /**
   * Copies between the ends `a` of `from` and `b` of `to`; a nickname is a
   * node on another relay (`b` is then the link to that relay). `held` is
   * what was counted for the nodes here; released when the pipe ends.
   */
  #splice(
    from: Member | string,
    to: Member | string,
    a: PipeEnd,
    b: PipeEnd,
    held: Member[],
  ): void {
    const pair: [PipeEnd, PipeEnd] = [a, b];
    this.#open.add(pair);
    this.#counters.opened++;
    const names = { from: shownName(nicknameOf(from)), to: shownName(nicknameOf(to)) };
    log.debug("Pipe {from} -> {to} open", names);
    const copied = a.socket && b.socket
      ? this.#forwardMessages(a.socket, b.socket)
      : Promise.all([this.#copy(a, b, names), this.#copy(b, a, names)]);
    copied.finally(() => {
      this.#open.delete(pair);
      this.#release(held);
    });
  }

  /**
   * Two ends on our own WebSockets: each message goes on as it is, no copy
   * into a pipe buffer. A receiver that reads slowly makes its queue grow;
   * past `SOCKET_QUEUE` the sender's socket stops being read until that
   * queue is written out (TCP then slows the sender).
   */
  #forwardMessages(a: ServerWebSocket, b: ServerWebSocket): Promise<void> {
    const ended = Promise.withResolvers<void>();
    let open = 2;
    const one = (source: ServerWebSocket, sink: ServerWebSocket) => {
      // Each message goes to the other end as it is, and nowhere else.
      source.passOn = true;
      source.onmessage = (data) => {
        if (typeof data === "string") return source.close(1003, "pipes carry bytes");
        sink.sendBinary(data);
        this.#counters.bytes += data.length;
        if (sink.bufferedAmount > SOCKET_QUEUE) source.pause();
      };
      sink.ondrain = () => source.resume();
      source.onclose = () => {
        sink.close(1000, "the other end of the pipe closed");
        if (--open === 0) ended.resolve();
      };
    };
    one(a, b);
    one(b, a);
    return ended.promise;
  }

  /** Copies one direction between two links; ends both when it ends. */
  async #copy(
    source: PipeEnd,
    sink: PipeEnd,
    names: { from: string; to: string },
  ): Promise<void> {
    // An end that queues what it receives (an HTTP stream's POSTs, one of
    // our WebSockets) hands its chunks over as they are; the copy buffer is
    // for the others. A sink that can keep a chunk keeps it: an upstream POST
    // goes down the other end's response without one copy in the relay.
    const take = source.take?.bind(source);
    const give = take ? sink.writeOwned?.bind(sink) ?? null : null;
    let buffer = new Uint8Array(take ? 0 : PIPE_BUFFER);
    try {
      for (;;) {
        let chunk: Uint8Array;
        if (take) {
          const taken = await take(MAX_TAKEN);
          if (taken === null) break;
          chunk = taken;
        } else {
          const n = await source.read(buffer);
          if (n === null) break;
          chunk = buffer.subarray(0, n);
        }
        const n = chunk.length;
        if (give) {
          // Counted in the sink's queue from now on (it keeps the chunk).
          await give(chunk);
        } else {
          this.#inTransit += n;
          try {
            await sink.write(chunk);
          } finally {
            this.#inTransit -= n;
          }
        }
        this.#counters.bytes += n;
        if (take) continue;
        // A read that fills the buffer: the pipe is busy, each write a chunk
        // of a response or a WebSocket message, so larger ones, while it lasts.
        if (n === buffer.length && n < BUSY_PIPE_BUFFER) buffer = new Uint8Array(BUSY_PIPE_BUFFER);
        else if (n < PIPE_BUFFER && buffer.length > PIPE_BUFFER) {
          buffer = new Uint8Array(PIPE_BUFFER);
        }
      }
    } catch (error) {
      log.debug("Pipe {from} -> {to} ended: {reason}", { ...names, reason: errorMessage(error) });
    } finally {
      source.close();
      sink.close();
    }
  }
}

/** The statuses a node's relay may refuse a pipe request with, as told to the node. */
const RELAYED_REFUSALS: Record<number, RelayErrorCode> = {
  400: "bad-request",
  401: "unauthorized",
  403: "pipe-refused",
  404: "no-such-node",
  504: "pipe-timeout",
};

/**
 * `source`, read on by whoever reads the result, until it ends, the reader
 * cancels (then `done` runs) or `signal` aborts: then the result errors at
 * once, whether a read is waiting on `source` or not (a response being
 * written must not wait for the other relay to notice). `holding` hears of
 * each chunk while it is passed on: its length, then minus that when the
 * reader asks for the next one (it has written this one) or the stream ends.
 */
function passThrough(
  source: ReadableStream<Uint8Array>,
  signal: AbortSignal,
  hooks: { holding(bytes: number): void; done(): void },
): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  let output!: ReadableStreamDefaultController<Uint8Array>;
  let held = 0;
  const release = () => {
    if (held > 0) hooks.holding(-held);
    held = 0;
  };
  const done = () => {
    release();
    hooks.done();
  };
  const stop = () => {
    release();
    try {
      output.error(new Deno.errors.Interrupted("the relayed stream was ended"));
    } catch {
      // Ended already.
    }
    reader.cancel().catch(() => {});
  };
  signal.addEventListener("abort", stop, { once: true });
  return new ReadableStream<Uint8Array>({
    start(controller) {
      output = controller;
    },
    async pull(controller) {
      release();
      try {
        const { value, done: ended } = await reader.read();
        if (ended) {
          done();
          controller.close();
        } else {
          held = value.length;
          hooks.holding(held);
          controller.enqueue(value);
        }
      } catch (error) {
        done();
        try {
          controller.error(error);
        } catch {
          // Errored already (aborted).
        }
      }
    },
    cancel() {
      // Not waited for: whoever cancels (a response whose client went away)
      // must not wait on the other relay; `done` aborts that request.
      done();
      reader.cancel().catch(() => {});
    },
  }, { highWaterMark: 0 });
}

function nicknameOf(end: Member | string): string {
  return typeof end === "string" ? end : end.nickname;
}
