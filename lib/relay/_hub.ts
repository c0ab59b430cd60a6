/**
 * Rooms, membership and message routing of a relay, independent of the
 * transport that carries frames to and from each node: the hub takes typed
 * frames and writes encoded frames to each node's {@linkcode Sink}.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { CLASH_SUFFIX, type FrameObject, type FrameRules, parseNodeFrame } from "./_parse.ts";
import {
  encodeFrame,
  type FrameProblem,
  type HelloFrame,
  type LeaveReason,
  type NodeFrame,
  type NodeMessageFrame,
  type Parsed,
  type RelayErrorCode,
} from "./_protocol.ts";
import type { HistoryEntry } from "./_history.ts";
import { DETACHED, Member, Room, type Sink } from "./_room.ts";
import { newJoinToken, secretsEqual } from "./_secret.ts";
import type { RelaySettings } from "./_settings.ts";
import type { RelayConnectionStats } from "./_http_server.ts";
import type { PipeStats } from "./_pipes.ts";

const log = getLogger(["immortal", "relay"]);

/** A refused join: HTTP status, a short code and a sentence for people. */
export class JoinRefused extends Error {
  /** A refusal; `status` is the HTTP status a request gets for it. */
  constructor(readonly status: number, readonly code: RelayErrorCode, message: string) {
    super(message);
    this.name = "JoinRefused";
  }
}

/**
 * Why the relay refused something, as counted in `/metrics`: an error code,
 * or a finer reason for some of them. A closed set, so no label ever carries
 * what a node sent (a room id, a nickname).
 */
export type RefusalReason = RelayErrorCode | "secret" | "max-sessions" | "max-nodes";

/** Counters and gauges of a relay, as served at `/metrics`. */
export interface RelayStats {
  /** Rooms (session ids) with at least one node. */
  sessions: number;
  /** Rooms kept, those without nodes included (their history has not expired yet). */
  rooms: number;
  /** Messages held in the rooms' histories. */
  historyMessages: number;
  /** Nodes whose connection broke, waiting out the keep-alive grace to come back. */
  detached: number;
  /** Duplicates of numbered messages dropped (a node resending what the relay had). */
  duplicates: number;
  /** Numbered messages nobody else could hear, dropped and reported to their sender. */
  alone: number;
  /** Messages replayed to nodes back from a blip. */
  replayed: number;
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
  /** Requests and frames refused, by reason (a {@linkcode RelayErrorCode} or a finer reason). */
  refused: Record<string, number>;
  /** The relay's pipes. */
  pipes?: PipeStats;
  /** The relay's connections, when it runs on `serveRelay`'s server. */
  connections?: RelayConnectionStats;
}

const PING = encodeFrame({ t: "ping" });
const PONG = encodeFrame({ t: "pong" });

/** The relay's rooms and their rules. */
export class Hub {
  /** The relay's settings. */
  readonly settings: RelaySettings;
  /** What the frame parser needs from the settings. */
  readonly rules: FrameRules;
  /** Rooms by session id. */
  readonly rooms: Map<string, Room> = new Map();
  #clock: () => number;
  #nodes = 0;
  #counters = {
    joins: 0,
    messages: 0,
    deliveries: 0,
    dropped: 0,
    slowDisconnects: 0,
    faded: 0,
    duplicates: 0,
    alone: 0,
    replayed: 0,
  };
  /** Nodes owed an `ack`, sent once per turn of the event loop, not once per message. */
  #acksDue = new Set<Member>();
  #refused: Partial<Record<RefusalReason, number>> = {};
  #timer: ReturnType<typeof setInterval>;
  /** Where a node's refusal of a pipe goes (the relay's pipe endpoint). */
  onPipeRefuse: ((member: Member, id: string, reason: string) => void) | null = null;

  /**
   * A hub with `settings`. `clock` (ms) is for tests that must not depend on
   * timing: keep-alives, reservations and the rate limit all read it.
   */
  constructor(settings: RelaySettings, clock: () => number = () => performance.now()) {
    this.settings = settings;
    this.rules = { maxNicknameLength: settings.maxNicknameLength };
    this.#clock = clock;
    this.#timer = setInterval(() => this.sweep(), Math.max(50, settings.keepAlive / 4));
  }

  /** Counters and gauges. */
  get stats(): RelayStats {
    let sessions = 0, historyMessages = 0, detached = 0;
    for (const room of this.rooms.values()) {
      if (room.members.size > 0) sessions++;
      historyMessages += room.history.size;
      for (const member of room.members.values()) if (member.sink === DETACHED) detached++;
    }
    return {
      sessions,
      rooms: this.rooms.size,
      nodes: this.#nodes,
      historyMessages,
      detached,
      ...this.#counters,
      refused: { ...this.#refused },
    };
  }

  /** Counts one refusal. */
  refuse(reason: RefusalReason): void {
    this.#refused[reason] = (this.#refused[reason] ?? 0) + 1;
  }

  /** Checks the secret from a header or the hello frame; throws a 401 {@linkcode JoinRefused}. */
  checkSecret(secret: string | null | undefined): void {
    if (this.settings.secret === undefined) return;
    if (typeof secret !== "string" || !secretsEqual(secret, this.settings.secret)) {
      this.refuse("secret");
      throw new JoinRefused(401, "unauthorized", "missing or wrong relay secret");
    }
  }

  /**
   * Admits a node by its first frame (a `hello`, not yet checked): the secret
   * first (from `headerSecret`, else the frame), so a stranger learns nothing
   * about the other rules; then the hello's fields; then joins it.
   */
  admit(
    hello: FrameObject,
    headerSecret: string | null,
    sink: Sink,
    extra: { stream?: string } = {},
  ): Member {
    this.checkSecret(headerSecret ?? (typeof hello.secret === "string" ? hello.secret : null));
    const parsed = parseNodeFrame(hello, this.rules);
    if (!parsed.ok || parsed.frame.t !== "hello") {
      this.refuse("bad-hello");
      const reason = parsed.ok ? "the first frame must be a hello" : parsed.problem.reason;
      throw new JoinRefused(400, "bad-request", reason);
    }
    return this.join(parsed.frame, sink, extra);
  }

  /**
   * Joins a node. Sends the welcome (with the member snapshot) on `sink`, and
   * announces the join to the others. Throws a {@linkcode JoinRefused}.
   */
  join(hello: HelloFrame, sink: Sink, extra: { stream?: string } = {}): Member {
    const s = this.settings;
    const { session: id, nickname: wanted, role, token } = hello;
    let room = this.rooms.get(id);
    const now = this.#clock();
    // NFKC first: a fullwidth `max（１）` or superscript `max⁽¹⁾` looks the same.
    if (CLASH_SUFFIX.test(wanted.normalize("NFKC")) && !room?.givenTo(wanted, token, now)) {
      this.refuse("bad-hello");
      throw new JoinRefused(
        400,
        "bad-request",
        "a nickname may not end in (n): the relay adds that to tell clashing nicknames apart " +
          "(a node keeps one it was given by reconnecting with its join token)",
      );
    }
    if (!room) {
      if (this.rooms.size >= s.maxSessions) {
        this.refuse("max-sessions");
        throw new JoinRefused(503, "full", "the relay has reached its session limit");
      }
      room = new Room(id, {
        count: s.historyLength,
        bytes: s.historyBytes,
        age: s.historyAge,
      });
      this.rooms.set(id, room);
    }

    // The same node back after a blip the relay has not noticed yet: swap its
    // connection in place; to the others nothing happened.
    const current = room.members.get(wanted);
    if (
      current && token !== undefined && secretsEqual(current.token, token) &&
      current.role === role
    ) {
      const old = current.sink;
      current.sink = sink;
      current.lastHeard = now;
      current.id = hello.id ?? current.id;
      old.close(4409, "replaced by a newer connection of the same node");
      this.#welcome(current, hello, extra.stream);
      log.info("Node {nickname} in {session} reconnected", { nickname: wanted, session: id });
      return current;
    }
    if (room.members.size >= s.maxNodesPerSession) {
      // An empty room is never left behind: this refusal needs a full one.
      this.refuse("max-nodes");
      throw new JoinRefused(503, "full", "the session has reached its node limit");
    }
    const nickname = room.freeName(wanted, token, now);
    const reservation = room.reserved.get(nickname);
    room.reserved.delete(nickname);
    const member = new Member(room, nickname, role, newJoinToken(), sink, s.rate, now);
    member.id = hello.id;
    // Back after it was declared gone: its resent messages are still duplicates.
    if (reservation && token !== undefined && secretsEqual(reservation.token, token)) {
      member.lastSeq = reservation.lastSeq;
    }
    room.members.set(nickname, member);
    this.#nodes++;
    this.#counters.joins++;
    this.#welcome(member, hello, extra.stream);
    this.#announce(member, encodeFrame({ t: "join", nickname, role }));
    log.info("Node {nickname} joined {session} as {role}", { nickname, session: id, role });
    return member;
  }

  /**
   * The welcome, and for a node that says where it is in the room's history,
   * the messages it missed, right after: nothing can come between them.
   */
  #welcome(member: Member, hello: HelloFrame, stream?: string): void {
    const history = member.room.history;
    let replay: HistoryEntry[] | null = null;
    let recovery: { recovered: boolean; missed?: "epoch" | "window" } | null = null;
    if (member.id !== undefined && hello.recover) {
      if (hello.recover.epoch !== history.epoch) recovery = { recovered: false, missed: "epoch" };
      else {
        replay = history.since(hello.recover.offset);
        recovery = replay ? { recovered: true } : { recovered: false, missed: "window" };
      }
    }
    member.sink.push(encodeFrame({
      t: "welcome",
      session: member.room.id,
      nickname: member.nickname,
      role: member.role,
      token: member.token,
      members: member.room.snapshot(member),
      keepAlive: this.settings.keepAlive,
      ...(stream ? { stream } : {}),
      ...(member.id === undefined
        ? {}
        : { epoch: history.epoch, offset: history.offset, acked: member.lastSeq, ...recovery }),
    }));
    for (const entry of replay ?? []) {
      if (!this.#addressedTo(member, entry)) continue;
      // A node too slow for its own replay reconnects and goes on from where it got to.
      if (!this.#deliver(member, entry.data)) return;
      this.#counters.replayed++;
    }
  }

  /** Whether `entry` is a message `member` hears. */
  #addressedTo(member: Member, entry: HistoryEntry): boolean {
    if (entry.to !== undefined) return entry.to === member.nickname;
    return entry.from !== member.nickname && member.hears(entry);
  }

  /**
   * The connection `sink` of `member` broke: the node keeps its place (and
   * what it misses waits in the history) until it comes back, or until the
   * keep-alive declares it gone. A blip is not announced to the others.
   */
  detach(member: Member, sink: Sink): void {
    if (member.sink === sink) member.sink = DETACHED;
  }

  /** Removes a node; `gone` when it faded or its connection broke, `left` when it said bye. */
  leave(member: Member, reason: LeaveReason): void {
    const room = member.room;
    if (room.members.get(member.nickname) !== member) return;
    room.members.delete(member.nickname);
    this.#nodes--;
    room.reserved.set(member.nickname, {
      token: member.token,
      until: this.#clock() + this.settings.reclaimWindow,
      lastSeq: member.lastSeq,
    });
    log.info("Node {nickname} {verb} {session}", {
      nickname: member.nickname,
      verb: reason === "left" ? "left" : "is gone from",
      session: room.id,
    });
    if (room.members.size === 0) {
      // A room with history stays until it expires: its nodes may come back for it.
      if (room.history.size === 0) this.rooms.delete(room.id);
      return;
    }
    this.#announce(member, encodeFrame({ t: "leave", nickname: member.nickname, reason }));
  }

  /** Handles one parsed frame from a joined node: a refused one gets an error frame. */
  handle(member: Member, parsed: Parsed<NodeFrame>): void {
    if (parsed.ok) return this.receive(member, parsed.frame);
    member.lastHeard = this.#clock();
    this.refuseFrame(member.sink, parsed.problem);
  }

  /** Handles one frame from a joined node. */
  receive(member: Member, frame: NodeFrame): void {
    const now = this.#clock();
    member.lastHeard = now;
    switch (frame.t) {
      case "ping":
        member.sink.push(PONG);
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
      case "pipe-refuse":
        this.onPipeRefuse?.(member, frame.id, frame.reason);
        return;
      case "hello":
        // Joined already: a second hello is not a frame this connection may send.
        this.refuseFrame(member.sink, { code: "bad-frame", reason: `unknown frame type "hello"` });
    }
  }

  /** Counts a refused frame and tells the node why, in an error frame (naming `seq`, if numbered). */
  refuseFrame(sink: Sink, problem: FrameProblem, seq?: number): void {
    this.refuse(problem.code);
    sink.push(encodeFrame({
      t: "error",
      code: problem.code,
      message: problem.reason,
      ...(seq === undefined ? {} : { seq }),
    }));
  }

  /** Owes `member` an ack of its latest `seq`; acks go out once this turn's frames are handled. */
  #ack(member: Member): void {
    if (this.#acksDue.size === 0) queueMicrotask(() => this.#sendAcks());
    this.#acksDue.add(member);
  }

  #sendAcks(): void {
    // A full queue loses the ack, not the message: the welcome after its reconnect says it.
    for (const member of this.#acksDue) {
      member.sink.push(encodeFrame({ t: "ack", seq: member.lastSeq }));
    }
    this.#acksDue.clear();
  }

  #message(from: Member, frame: NodeMessageFrame, now: number): void {
    const { seq, to } = frame;
    if (seq !== undefined) {
      this.#ack(from);
      // Resent after a blip, and taken already: the ack is all it needs.
      if (seq <= from.lastSeq) {
        this.#counters.duplicates++;
        return;
      }
      from.lastSeq = seq;
    }
    const refuse = (code: RelayErrorCode, reason: string) =>
      this.refuseFrame(from.sink, { code, reason }, seq);
    if (!from.takeToken(now)) {
      return refuse("rate-limited", `more than ${this.settings.rate} messages/s`);
    }
    this.#counters.messages++;
    const room = from.room;
    const body = frame.text !== undefined ? { text: frame.text } : { numbers: frame.numbers };
    const entry: HistoryEntry = {
      offset: room.history.next(),
      at: now,
      from: from.nickname,
      role: from.role,
      ...(to === undefined ? {} : { to }),
      data: encodeFrame({
        t: "msg",
        from: from.nickname,
        ...(to === undefined ? {} : { to }),
        offset: room.history.next(),
        ...(seq !== undefined && from.id !== undefined ? { id: from.id, seq } : {}),
        ...body,
      }),
    };
    if (to !== undefined) {
      const target = room.members.get(to);
      if (!target || target === from) {
        return refuse("no-such-node", `no node "${to}" in this session`);
      }
      if (!target.hears(from)) return refuse("not-allowed", "an agent talks to bridges only");
      room.history.append(entry);
      this.#deliver(target, entry.data);
      return;
    }
    let heard = false;
    for (const member of room.members.values()) {
      if (member !== from && member.hears(from)) {
        // Appended before the first delivery: a node the delivery disconnects finds it there.
        if (!heard) room.history.append(entry);
        heard = true;
        this.#deliver(member, entry.data);
      }
    }
    // Nobody to hear it: dropped, never kept for later (TcpJLib's rule); a
    // numbered message is reported, so its sender knows it went nowhere.
    if (!heard && seq !== undefined) {
      this.#counters.alone++;
      refuse("alone", "nobody else in the session hears it: dropped");
    }
  }

  #announce(about: Member, data: string): void {
    for (const member of about.room.members.values()) {
      if (member !== about) this.#deliver(member, data);
    }
  }

  /** Hands `data` to `member`; `false` when its queue was full (and the node is dropped or disconnected). */
  #deliver(member: Member, data: string): boolean {
    if (member.sink.push(data)) {
      this.#counters.deliveries++;
      return true;
    }
    if (this.settings.overflow === "drop") {
      this.#counters.dropped++;
      return false;
    }
    this.#counters.slowDisconnects++;
    log.warn("Node {nickname} in {session} disconnected: its queue is full (a slow reader)", {
      nickname: member.nickname,
      session: member.room.id,
    });
    const sink = member.sink;
    if (member.id !== undefined) {
      // It comes back for the rest: the history has what this queue could not take.
      member.sink = DETACHED;
      sink.close(4429, "too slow: send queue full");
      return false;
    }
    // Deferred: `member` may be the one we are iterating past right now.
    queueMicrotask(() => {
      this.leave(member, "gone");
      sink.close(4429, "too slow: send queue full");
    });
    return false;
  }

  /**
   * One keep-alive round (the hub's timer runs it): pings nodes due a ping,
   * declares nodes gone that missed too many, and forgets expired nickname
   * reservations.
   */
  sweep(): void {
    const now = this.#clock();
    const { keepAlive, fadeAfter } = this.settings;
    for (const room of this.rooms.values()) {
      for (const member of room.members.values()) {
        if (now - member.lastHeard > fadeAfter) {
          this.#counters.faded++;
          this.leave(member, "gone");
          member.sink.close(4408, "keep-alive missed");
        } else if (now - member.lastPinged >= keepAlive) {
          member.lastPinged = now;
          member.sink.push(PING);
        }
      }
      for (const [name, reservation] of room.reserved) {
        if (reservation.until < now) room.reserved.delete(name);
      }
      room.history.expire(now);
      if (room.members.size === 0 && room.history.size === 0) this.rooms.delete(room.id);
    }
  }

  /** Closes every node and stops the keep-alive timer. */
  close(): void {
    clearInterval(this.#timer);
    for (const room of this.rooms.values()) {
      for (const member of room.members.values()) member.sink.close(1001, "relay shutting down");
    }
    this.rooms.clear();
    this.#nodes = 0;
  }
}
