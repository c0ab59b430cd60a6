/**
 * Sessions, membership and message routing of a relay, independent of the
 * transport that carries frames to and from each node.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import type { _RelaySettings } from "./options.ts";
import {
  _nicknameProblem,
  type _RelayFrame,
  _sessionProblem,
  _textProblem,
  type RelayMember,
  type RelayRole,
} from "./protocol.ts";

const log = getLogger(["immortal", "relay"]);
const ROLES: readonly RelayRole[] = ["peer", "bridge", "agent"];

/** @internal Where frames towards one node go (a WebSocket, or an event stream). */
export interface _Sink {
  /** Queues one serialized frame; `false` when the node's queue is full. */
  push(frame: string): boolean;
  /** Ends the connection, telling the node why when the transport can. */
  close(code: number, reason: string): void;
}

/** @internal A joined node. */
export class _Member {
  lastHeard = performance.now();
  lastPinged = performance.now();
  #tokens: number;
  #refilled = performance.now();

  constructor(
    readonly session: _Session,
    readonly nickname: string,
    readonly role: RelayRole,
    readonly token: string,
    public sink: _Sink,
    readonly rate: number,
  ) {
    this.#tokens = rate * 2;
  }

  /** Token bucket: `rate` per second, bursts of twice that. */
  takeToken(now: number): boolean {
    this.#tokens = Math.min(
      this.rate * 2,
      this.#tokens + (now - this.#refilled) * this.rate / 1000,
    );
    this.#refilled = now;
    if (this.#tokens < 1) return false;
    this.#tokens--;
    return true;
  }

  get public(): RelayMember {
    return { nickname: this.nickname, role: this.role };
  }
}

/** @internal */
export class _Session {
  readonly members = new Map<string, _Member>();
  /** Nicknames of nodes that left, kept for their join token until the time given. */
  readonly reserved = new Map<string, { token: string; until: number }>();
  constructor(readonly id: string) {}
}

/** @internal A refused join: HTTP status, a short code and a sentence for people. */
export class _JoinRefused extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** Counters and gauges of a relay, as served at `/metrics`. */
export interface RelayStats {
  /** Sessions with at least one node. */
  sessions: number;
  /** Nodes joined. */
  nodes: number;
  /** Joins accepted since start. */
  joins: number;
  /** Messages accepted from nodes since start. */
  messages: number;
  /** Message copies handed to receiving nodes since start. */
  deliveries: number;
  /** Message copies dropped because a node's queue was full (overflow `"drop"`). */
  dropped: number;
  /** Nodes disconnected because their queue was full (overflow `"disconnect"`). */
  slowDisconnects: number;
  /** Nodes declared gone after missing keep-alives. */
  faded: number;
  /** Requests and frames refused, by reason. */
  refused: Record<string, number>;
}

/** @internal */
export class _Hub {
  readonly settings: _RelaySettings;
  readonly sessions = new Map<string, _Session>();
  #nodes = 0;
  #counters = { joins: 0, messages: 0, deliveries: 0, dropped: 0, slowDisconnects: 0, faded: 0 };
  #refused: Record<string, number> = {};
  #timer: ReturnType<typeof setInterval>;

  constructor(settings: _RelaySettings) {
    this.settings = settings;
    this.#timer = setInterval(() => this.#keepAlive(), Math.max(50, settings.keepAlive / 4));
  }

  get stats(): RelayStats {
    return {
      sessions: this.sessions.size,
      nodes: this.#nodes,
      ...this.#counters,
      refused: { ...this.#refused },
    };
  }

  refuse(reason: string): void {
    this.#refused[reason] = (this.#refused[reason] ?? 0) + 1;
  }

  /** Checks the secret from a header or the hello frame; throws a 401 refusal. */
  checkSecret(secret: unknown): void {
    if (this.settings.secret === undefined) return;
    if (typeof secret !== "string" || !_timingSafeEqual(secret, this.settings.secret)) {
      this.refuse("secret");
      throw new _JoinRefused(401, "unauthorized", "missing or wrong relay secret");
    }
  }

  /**
   * Joins a node. Sends the welcome (with the member snapshot) on `sink`, and
   * announces the join to the others. Throws a {@linkcode _JoinRefused}.
   */
  join(hello: Record<string, unknown>, sink: _Sink, extra: { stream?: string } = {}): _Member {
    const s = this.settings;
    const problem = _sessionProblem(hello.session) ??
      _nicknameProblem(hello.nickname, s.maxNicknameLength);
    if (problem) {
      this.refuse("bad-hello");
      throw new _JoinRefused(400, "bad-request", problem);
    }
    const role = (hello.role ?? "peer") as RelayRole;
    if (!ROLES.includes(role)) {
      this.refuse("bad-hello");
      throw new _JoinRefused(400, "bad-request", `role must be peer, bridge or agent`);
    }
    const token = typeof hello.token === "string" ? hello.token : undefined;
    const id = hello.session as string;
    let session = this.sessions.get(id);
    if (!session) {
      if (this.sessions.size >= s.maxSessions) {
        this.refuse("max-sessions");
        throw new _JoinRefused(503, "full", "the relay has reached its session limit");
      }
      session = new _Session(id);
      this.sessions.set(id, session);
    }
    const wanted = hello.nickname as string;
    const now = performance.now();

    // The same node back after a blip the relay has not noticed yet: swap its
    // connection in place; to the others nothing happened.
    const current = session.members.get(wanted);
    if (current && token !== undefined && current.token === token && current.role === role) {
      const old = current.sink;
      current.sink = sink;
      current.lastHeard = now;
      old.close(4409, "replaced by a newer connection of the same node");
      this.#welcome(current, extra.stream);
      log.info("Node {nickname} in {session} reconnected", { nickname: wanted, session: id });
      return current;
    }
    if (session.members.size >= s.maxNodesPerSession) {
      this.refuse("max-nodes");
      throw new _JoinRefused(503, "full", "the session has reached its node limit");
    }
    const nickname = this.#freeName(session, wanted, token, now);
    session.reserved.delete(nickname);
    const member = new _Member(session, nickname, role, _newToken(), sink, s.rate);
    session.members.set(nickname, member);
    this.#nodes++;
    this.#counters.joins++;
    this.#welcome(member, extra.stream);
    this.#announce(member, JSON.stringify({ t: "join", nickname, role }));
    log.info("Node {nickname} joined {session} as {role}", { nickname, session: id, role });
    return member;
  }

  #welcome(member: _Member, stream?: string): void {
    const frame: _RelayFrame = {
      t: "welcome",
      session: member.session.id,
      nickname: member.nickname,
      role: member.role,
      token: member.token,
      members: [...member.session.members.values()].filter((m) => m !== member).map((m) =>
        m.public
      ),
      keepAlive: this.settings.keepAlive,
      ...(stream ? { stream } : {}),
    };
    member.sink.push(JSON.stringify(frame));
  }

  /** `wanted`, or `wanted(1)`, `wanted(2)`, ...: the first not taken or reserved for someone else. */
  #freeName(session: _Session, wanted: string, token: string | undefined, now: number): string {
    const free = (name: string) => {
      if (session.members.has(name)) return false;
      const reservation = session.reserved.get(name);
      if (!reservation || reservation.until < now) return true;
      return reservation.token === token;
    };
    if (free(wanted)) return wanted;
    for (let i = 1;; i++) {
      const name = `${wanted}(${i})`;
      if (free(name)) return name;
    }
  }

  /** Removes a node; `gone` when it faded or its connection broke, `left` when it said bye. */
  leave(member: _Member, reason: "left" | "gone"): void {
    const session = member.session;
    if (session.members.get(member.nickname) !== member) return;
    session.members.delete(member.nickname);
    this.#nodes--;
    session.reserved.set(member.nickname, {
      token: member.token,
      until: performance.now() + this.settings.reclaimWindow,
    });
    log.info("Node {nickname} {verb} {session}", {
      nickname: member.nickname,
      verb: reason === "left" ? "left" : "is gone from",
      session: session.id,
    });
    if (session.members.size === 0) {
      this.sessions.delete(session.id);
      return;
    }
    this.#announce(member, JSON.stringify({ t: "leave", nickname: member.nickname, reason }));
  }

  /** Handles one parsed frame from a joined node. */
  receive(member: _Member, frame: Record<string, unknown>): void {
    const now = performance.now();
    member.lastHeard = now;
    switch (frame.t) {
      case "ping":
        member.sink.push('{"t":"pong"}');
        return;
      case "pong":
        return;
      case "bye":
        this.leave(member, "left");
        member.sink.close(1000, "bye");
        return;
      case "msg":
        this.#message(member, frame, now);
        return;
      default:
        this.#error(member, "bad-frame", `unknown frame type "${String(frame.t)}"`);
    }
  }

  /** Counts a refused frame and tells the node why, in an error frame. */
  refuseFrame(sink: _Sink, code: string, message: string): void {
    this.refuse(code);
    sink.push(JSON.stringify({ t: "error", code, message }));
  }

  #error(member: _Member, code: string, message: string): void {
    this.refuseFrame(member.sink, code, message);
  }

  #message(from: _Member, frame: Record<string, unknown>, now: number): void {
    const { to, text, numbers } = frame;
    let payload: { text: string } | { numbers: number[] };
    if (typeof text === "string" && numbers === undefined) {
      const problem = _textProblem(text);
      if (problem) return this.#error(from, "bad-message", problem);
      payload = { text };
    } else if (
      text === undefined && Array.isArray(numbers) &&
      numbers.every((n) => typeof n === "number" && Number.isFinite(n))
    ) {
      payload = { numbers };
    } else {
      return this.#error(from, "bad-message", "a message has a text or an array of finite numbers");
    }
    if (to !== undefined && typeof to !== "string") {
      return this.#error(from, "bad-message", "`to` must be a nickname");
    }
    if (!from.takeToken(now)) {
      return this.#error(from, "rate-limited", `more than ${this.settings.rate} messages/s`);
    }
    this.#counters.messages++;
    const members = from.session.members;
    if (to !== undefined) {
      const target = members.get(to);
      if (!target || target === from) {
        return this.#error(from, "no-such-node", `no node "${to}" in this session`);
      }
      if (!_hears(target, from)) {
        return this.#error(from, "not-allowed", `an agent talks to bridges only`);
      }
      this.#deliver(target, JSON.stringify({ t: "msg", from: from.nickname, to, ...payload }));
      return;
    }
    // A message with nobody to hear it is dropped, never kept for later.
    const data = JSON.stringify({ t: "msg", from: from.nickname, ...payload });
    for (const member of members.values()) {
      if (member !== from && _hears(member, from)) this.#deliver(member, data);
    }
  }

  #announce(about: _Member, data: string): void {
    for (const member of about.session.members.values()) {
      if (member !== about) this.#deliver(member, data);
    }
  }

  #deliver(member: _Member, data: string): void {
    if (member.sink.push(data)) {
      this.#counters.deliveries++;
      return;
    }
    if (this.settings.overflow === "drop") {
      this.#counters.dropped++;
      return;
    }
    this.#counters.slowDisconnects++;
    log.warn("Node {nickname} in {session} disconnected: its queue is full (a slow reader)", {
      nickname: member.nickname,
      session: member.session.id,
    });
    // Deferred: `member` may be the one we are iterating past right now.
    queueMicrotask(() => {
      this.leave(member, "gone");
      member.sink.close(4429, "too slow: send queue full");
    });
  }

  #keepAlive(): void {
    const now = performance.now();
    const { keepAlive, fadeAfter } = this.settings;
    for (const session of this.sessions.values()) {
      for (const member of session.members.values()) {
        if (now - member.lastHeard > fadeAfter) {
          this.#counters.faded++;
          this.leave(member, "gone");
          member.sink.close(4408, "keep-alive missed");
        } else if (now - member.lastPinged >= keepAlive) {
          member.lastPinged = now;
          member.sink.push('{"t":"ping"}');
        }
      }
      for (const [name, reservation] of session.reserved) {
        if (reservation.until < now) session.reserved.delete(name);
      }
    }
  }

  /** Closes every node and stops the keep-alive timer. */
  close(): void {
    clearInterval(this.#timer);
    for (const session of this.sessions.values()) {
      for (const member of session.members.values()) member.sink.close(1001, "relay shutting down");
    }
    this.sessions.clear();
    this.#nodes = 0;
  }
}

/** Whether `listener` hears messages from `speaker`: agents and bridges hear only each other. */
function _hears(listener: _Member, speaker: _Member): boolean {
  if (speaker.role === "agent") return listener.role === "bridge";
  if (listener.role === "agent") return speaker.role === "bridge";
  return true;
}

function _newToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(
    /[+/=]/g,
    (c) => c === "+" ? "-" : c === "/" ? "_" : "",
  );
}

/** @internal Compares secrets in time independent of where they differ. */
export function _timingSafeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}
