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
import { WebSocketLink } from "../link/websocket.ts";
import { ByteQueue } from "../link/_byte_queue.ts";
import type { Hub } from "./_hub.ts";
import { refuseRequest } from "./_http.ts";
import { connectionOf } from "./_http_server.ts";
import { encodeFrame, PIPE_HEADERS, type RelayErrorCode } from "./_protocol.ts";
import type { Member } from "./_room.ts";
import type { ServerWebSocket } from "./_server_websocket.ts";
import { secretsEqual } from "./_secret.ts";

const log = getLogger(["immortal", "relay", "pipe"]);

/** Bytes the relay reads from one end before it writes them to the other. */
const PIPE_BUFFER = 64 * 1024;
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
  to: Member;
  /** The answer: the accepting end's link, or a refusal. */
  answer: PromiseWithResolvers<PipeEnd | Refusal>;
}

/** Counters of the relay's pipes. */
export interface PipeStats {
  /** Pipes open now. */
  open: number;
  /** Pipes opened since start. */
  opened: number;
  /** Bytes copied through pipes since start, both directions. */
  bytes: number;
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
type PipeEnd = Link & { readonly queuedBytes: number; readonly socket?: ServerWebSocket };

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
  #links = new HttpLinkEndpoint();
  #pending = new Map<string, Pending>();
  /** Pipes (waiting or open) per node. */
  #perNode = new Map<Member, number>();
  #open = new Set<[PipeEnd, PipeEnd]>();
  #counters = { opened: 0, bytes: 0 };
  /** Bytes read from one end and being written to the other. */
  #inTransit = 0;

  /** Pipes between members of `hub`'s sessions. */
  constructor(hub: Hub) {
    this.#hub = hub;
  }

  /** Counters and gauges. */
  get stats(): PipeStats {
    let held = this.#inTransit;
    for (const [a, b] of this.#open) held += a.queuedBytes + b.queuedBytes;
    return { open: this.#open.size, ...this.#counters, heldBytes: held };
  }

  /** `POST`/`GET /relay/pipe`: a pipe request of either end, or an upstream POST of one. */
  async handle(req: Request, info?: Deno.ServeHandlerInfo): Promise<Response> {
    const hub = this.#hub;
    const kind = linkRequestKind(req);
    if (kind === "upstream") return await this.#links.upstream(req);
    if (kind === null) {
      return refuseRequest(hub, 426, "upgrade-required", "pipes are WebSockets or HTTP streams");
    }
    const member = this.#member(req);
    if (member === null) {
      return refuseRequest(
        hub,
        401,
        "unauthorized",
        "a pipe request needs the session, nickname and join token of a joined node",
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
      ? this.#accept(member, id, req, remoteAddr)
      : await this.#dial(member, id, to, req, remoteAddr);
  }

  /** `member` refused the pipe `id` it was offered. */
  refuse(member: Member, id: string, reason: string): void {
    const pending = this.#pending.get(id);
    if (!pending || pending.to !== member) return;
    pending.answer.resolve({
      status: 403,
      code: "pipe-refused",
      message: `${member.nickname} refused the pipe: ${reason}`,
    });
  }

  /** Ends every pipe. */
  close(): void {
    for (const pending of this.#pending.values()) {
      pending.answer.resolve({ status: 503, code: "full", message: "the relay is shutting down" });
    }
    for (const [a, b] of this.#open) {
      a.close();
      b.close();
    }
    this.#links.close();
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
    const to = from.room.members.get(nickname);
    if (!to || to === from) {
      return refuseRequest(hub, 404, "no-such-node", `no node "${nickname}" in this session`);
    }
    if (!to.hears(from)) {
      return refuseRequest(hub, 403, "not-allowed", "an agent opens pipes to bridges only");
    }
    if (this.#pending.has(id)) {
      return refuseRequest(hub, 409, "bad-request", "that pipe id is in use");
    }
    for (const end of [from, to]) {
      if ((this.#perNode.get(end) ?? 0) >= MAX_PIPES_PER_NODE) {
        const message = `${end.nickname} has ${MAX_PIPES_PER_NODE} pipes already`;
        return refuseRequest(hub, 503, "full", message);
      }
    }
    const pending: Pending = { id, from, to, answer: Promise.withResolvers() };
    this.#pending.set(id, pending);
    const timeout = hub.settings.authTimeout;
    const timer = setTimeout(() =>
      pending.answer.resolve({
        status: 504,
        code: "pipe-timeout",
        message: `${nickname} did not answer the pipe within ${timeout} ms`,
      }), timeout);
    to.sink.push(encodeFrame({ t: "pipe", id, from: from.nickname }));
    const answer = await pending.answer.promise;
    clearTimeout(timer);
    this.#pending.delete(id);
    if (!("read" in answer)) return refuseRequest(hub, answer.status, answer.code, answer.message);
    const opened = this.#openLink(req, remoteAddr);
    if (typeof opened === "string") {
      answer.close();
      return refuseRequest(hub, 400, "bad-request", opened);
    }
    this.#splice(from, to, opened.link, answer);
    return opened.response;
  }

  #accept(member: Member, id: string, req: Request, remoteAddr?: Deno.Addr): Response {
    const pending = this.#pending.get(id);
    if (!pending || pending.to !== member) {
      return refuseRequest(this.#hub, 404, "no-such-stream", "no such pipe waiting for you");
    }
    const opened = this.#openLink(req, remoteAddr);
    if (typeof opened === "string") return refuseRequest(this.#hub, 400, "bad-request", opened);
    pending.answer.resolve(opened.link);
    return opened.response;
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
        // Deno's WebSocket cannot stop reading: a bound on what it queues
        // instead (the end that overruns it loses the pipe).
        const { socket, response } = Deno.upgradeWebSocket(request, { idleTimeout: 0 });
        const link = new WebSocketLink(socket, { remoteAddr, maxQueuedBytes: 4 * SOCKET_QUEUE });
        return { link, response };
      };
    return this.#links.open(req, remoteAddr, upgrade) as
      | { link: PipeEnd; response: Response }
      | string;
  }

  #splice(from: Member, to: Member, a: PipeEnd, b: PipeEnd): void {
    const pair: [PipeEnd, PipeEnd] = [a, b];
    this.#open.add(pair);
    this.#counters.opened++;
    for (const end of [from, to]) this.#perNode.set(end, (this.#perNode.get(end) ?? 0) + 1);
    log.debug("Pipe {from} -> {to} open", { from: from.nickname, to: to.nickname });
    const copied = a.socket && b.socket
      ? this.#forwardMessages(a.socket, b.socket)
      : Promise.all([this.#copy(a, b, from, to), this.#copy(b, a, from, to)]);
    copied.finally(() => {
      this.#open.delete(pair);
      for (const member of [from, to]) {
        const left = this.#perNode.get(member)! - 1;
        if (left === 0) this.#perNode.delete(member);
        else this.#perNode.set(member, left);
      }
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

  /** Copies one direction between two links, with one buffer; ends both when it ends. */
  async #copy(source: PipeEnd, sink: PipeEnd, from: Member, to: Member): Promise<void> {
    const buffer = new Uint8Array(PIPE_BUFFER);
    try {
      for (;;) {
        const n = await source.read(buffer);
        if (n === null) break;
        this.#inTransit += n;
        try {
          await sink.write(buffer.subarray(0, n));
        } finally {
          this.#inTransit -= n;
        }
        this.#counters.bytes += n;
      }
    } catch (error) {
      log.debug("Pipe {from} -> {to} ended: {reason}", {
        from: from.nickname,
        to: to.nickname,
        reason: errorMessage(error),
      });
    } finally {
      source.close();
      sink.close();
    }
  }
}
