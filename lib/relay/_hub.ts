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
  type MessageBody,
  type MissedReason,
  type NodeFrame,
  type NodeMessageFrame,
  type Parsed,
  type RelayErrorCode,
  type WelcomeFrame,
} from "./_protocol.ts";
import type { ClusterJoin, ClusterPipeEvent, RelayCluster } from "./_cluster.ts";
import type { History, HistoryBudget, HistoryEntry } from "./_history.ts";
import { type Arrival, DETACHED, Member, Room, type Sink } from "./_room.ts";
import { LogLimiter } from "../_log_limiter.ts";
import { newJoinToken, secretsEqual } from "./_secret.ts";
import { shownName } from "./_shown_name.ts";
import { type RelaySettings, sweepEvery } from "./_settings.ts";
import { delay, errorMessage } from "../_util.ts";
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

/** Whether `nickname` ends in what looks like the relay's clash suffix `(n)`. */
function suffixed(nickname: string): boolean {
  // NFKC first: a fullwidth `max（１）` or superscript `max⁽¹⁾` looks the same.
  return CLASH_SUFFIX.test(nickname.normalize("NFKC"));
}

/**
 * A message frame as two halves around its offset, which only the cluster
 * gives out: a placeholder offset is encoded and cut out. Quotes inside JSON
 * strings are escaped, so the first `"offset":-1` is the field itself.
 */
function frameAroundOffset(frame: Record<string, unknown>): [string, string] {
  const text = encodeFrame({ ...frame, offset: -1 } as unknown as NodeFrame);
  const marker = '"offset":-1';
  const at = text.indexOf(marker) + '"offset":'.length;
  return [text.slice(0, at), text.slice(at + 2)];
}

/** The error frame that tells a node why (naming `seq`, if numbered); counting is the caller's. */
export function errorFrame(problem: FrameProblem, seq?: number): string {
  return encodeFrame({
    t: "error",
    code: problem.code,
    message: problem.reason,
    ...(seq === undefined ? {} : { seq }),
  });
}

/** Counters and gauges of a relay, as served at `/metrics`. */
export interface RelayStats {
  /** Rooms (session ids) with at least one node. */
  sessions: number;
  /** Rooms kept, those without nodes included (their history has not expired yet). */
  rooms: number;
  /** Messages held in the rooms' histories. */
  historyMessages: number;
  /** Bytes held in the rooms' histories (in memory: two a character past Latin-1). */
  historyBytes: number;
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
  /** Frames handed to receiving nodes since start: message copies, and join and leave news. */
  deliveries: number;
  /** Message copies dropped because a node's queue was full (overflow `"drop"`). */
  dropped: number;
  /** Nodes disconnected because their queue was full (overflow `"disconnect"`). */
  slowDisconnects: number;
  /**
   * Nodes declared gone: silent past the fade time (keep-alive), or whose
   * connection broke and did not come back within the grace.
   */
  faded: number;
  /** POSTs that reached this relay for a stream another relay of the cluster holds, passed on to it. */
  forwarded: number;
  /** Requests and frames refused, by reason (a {@linkcode RelayErrorCode} or a finer reason). */
  refused: Record<string, number>;
  /**
   * Whether the relay reaches its cluster store (Redis) now; absent without
   * one. While it does not, every join is refused.
   */
  clusterStoreUp?: boolean;
  /** The relay's pipes. */
  pipes?: PipeStats;
  /** The relay's connections, when it runs on `serveRelay`'s server. */
  connections?: RelayConnectionStats;
}

/** What a relay that is closing says to whoever asks. */
export const SHUTTING_DOWN = "the relay is shutting down";

const PING = encodeFrame({ t: "ping" });
const PONG = encodeFrame({ t: "pong" });
/**
 * How long a node whose connection broke keeps its place (at most
 * `fadeAfter`). A broken connection is news, not silence: a node that does
 * not reconnect within a blip's time is gone, however long the keep-alive.
 */
const BLIP_GRACE_MS = 2500;
/**
 * How long presence waits, once the cluster store answers again, before it
 * judges nodes that are away: their redials back off to 5 s meanwhile (the
 * store's outage refused them), and each gets its whole blip grace after.
 */
const STORE_BACK_GRACE_MS = 10_000;
/**
 * How long a newcomer's join is held while the relays settle after Redis
 * lost their data (the script's `settle` lives a heartbeat's lifetime, 3 s),
 * and how often it is tried again meanwhile.
 */
const MAX_JOIN_HOLD_MS = 5000;
const JOIN_RETRY_MS = 250;

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
  /** What all rooms' histories hold together, and the most they may. */
  #historyBudget: HistoryBudget;
  /** A room with history may have emptied since the last eviction went through them all. */
  #idleHistory = false;
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
    forwarded: 0,
  };
  /** Nodes owed an `ack`, sent once per turn of the event loop, not once per message. */
  #acksDue = new Set<Member>();
  #refused: Partial<Record<RefusalReason, number>> = {};
  /** Refusals an operator should see, at most a line per kind per interval (a flood stays quiet). */
  #logs = new LogLimiter((template, properties) => log.warn(template, properties));
  /**
   * A node back from a blip, a line per node per interval: one that comes
   * back again and again (a proxy that cuts it each time, a client bug)
   * must not fill the log.
   */
  #returns = new LogLimiter((template, properties) => log.info(template, properties));
  #timer: ReturnType<typeof setInterval>;
  /** ms between keep-alive sweeps. */
  #sweepEvery: number;
  /** No node is declared gone before this (`#clock()` time): the cluster store was down. */
  #presenceWaitsUntil = 0;
  /** Where a node's refusal of a pipe goes (the relay's pipe endpoint). */
  onPipeRefuse: ((member: Member, id: string, reason: string) => void) | null = null;
  /** Where other relays' word about pipes goes (the relay's pipe endpoint). */
  onClusterPipe: ((room: string, event: ClusterPipeEvent) => void) | null = null;
  /** Where Redis refusing this relay for good goes (`serveRelay` stops the server). */
  onClusterRefused: ((reason: string) => void) | null = null;
  /** With `redis`: the cluster this relay shares its rooms with, once loaded. */
  #cluster: RelayCluster | null = null;
  /**
   * Loads the cluster: its Redis client is imported only when asked for, so
   * a relay without Redis needs none of its permissions.
   */
  #clusterReady: Promise<RelayCluster> | null = null;
  #closed = false;

  /** With `redis`: the cluster, once loaded (null without Redis). */
  get cluster(): Promise<RelayCluster | null> {
    return this.#clusterReady ?? Promise.resolve(null);
  }

  /**
   * A hub with `settings`. `clock` (ms) is for tests that must not depend on
   * timing: keep-alives, reservations and the rate limit all read it.
   */
  constructor(settings: RelaySettings, clock: () => number = () => performance.now()) {
    this.settings = settings;
    this.rules = { maxNicknameLength: settings.maxNicknameLength };
    this.#clock = clock;
    this.#historyBudget = {
      used: 0,
      max: settings.totalHistoryBytes,
      evict: (history) => this.#evictHistory(history),
    };
    // At most 250 ms: a broken connection's grace is counted in sweeps too.
    this.#sweepEvery = sweepEvery(settings.keepAlive);
    this.#timer = setInterval(() => this.sweep(), this.#sweepEvery);
    const url = settings.redis;
    if (url !== undefined) {
      this.#clusterReady = import("./_cluster.ts").then(async ({ clusterPrefix, RelayCluster }) => {
        const prefix = await clusterPrefix(settings.secret);
        const cluster = new RelayCluster({
          url,
          historyLength: settings.historyLength,
          roomTtl: Math.max(settings.historyAge, settings.reclaimWindow),
          reclaimWindow: settings.reclaimWindow,
          rejoinGrace: settings.rejoinGrace,
          maxNodesPerSession: settings.maxNodesPerSession,
          maxSessions: settings.maxSessions,
          commandTimeout: settings.redisTimeout,
          prefix,
        }, {
          message: (room, entry) => this.#fromCluster(room, entry),
          presence: (room, event) => this.#presenceFromCluster(room, event),
          moved: (room, nickname, relay) => this.#movedInCluster(room, nickname, relay),
          forgotten: (lostData) => this.#forgottenByCluster(cluster, lostData),
          holds: (room, nickname) => {
            // A join in flight may hold any nickname: Redis answers it later.
            const local = this.rooms.get(room);
            return local !== undefined && (local.joining.size > 0 || local.members.has(nickname));
          },
          pipe: (room, event) => this.onClusterPipe?.(room, event),
          trimmed: (room) => this.#trimmedInCluster(room),
          refused: (reason) => this.onClusterRefused?.(reason),
        });
        if (this.#closed) cluster.close();
        return this.#cluster = cluster;
      });
    }
  }

  /** Closed: its nodes were told to go, and none may join again. */
  get closed(): boolean {
    return this.#closed;
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
      historyBytes: this.#historyBudget.used,
      detached,
      ...this.#counters,
      refused: { ...this.#refused },
      ...(this.clusterStoreUp === undefined ? {} : { clusterStoreUp: this.clusterStoreUp }),
    };
  }

  /** Whether the cluster store (Redis) answers now; `undefined` for a relay on its own. */
  get clusterStoreUp(): boolean | undefined {
    // Not yet made (its module loads first) is not up either.
    return this.settings.redis === undefined ? undefined : this.#cluster?.healthy ?? false;
  }

  #closing = new AbortController();

  /** Aborted when the relay closes: requests it made on a node's behalf end with it. */
  get closing(): AbortSignal {
    return this.#closing.signal;
  }

  /** Counts one POST passed on to the relay of the cluster that holds its stream. */
  countForwarded(): void {
    this.#counters.forwarded++;
  }

  /** Counts one refusal. */
  refuse(reason: RefusalReason): void {
    this.#refused[reason] = (this.#refused[reason] ?? 0) + 1;
  }

  /**
   * Checks the secret from a header or the hello frame; throws a 401
   * {@linkcode JoinRefused}. A refusal is logged (with `from`, where the
   * node connects from, when known), at most a line per interval.
   */
  checkSecret(secret: string | null | undefined, from?: string): void {
    if (this.settings.secret === undefined) return;
    if (typeof secret !== "string" || !secretsEqual(secret, this.settings.secret)) {
      this.refuse("secret");
      this.#logs.event(
        "secret",
        from === undefined
          ? "Refused a node: {which} relay secret"
          : "Refused a node from {from}: {which} relay secret",
        { from, which: typeof secret === "string" ? "wrong" : "no" },
      );
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
    extra: {
      stream?: string;
      from?: string;
      /** Whether the node's connection is gone (asked while a join waits). */
      left?: () => boolean;
    } = {},
  ): Member | Promise<Member> {
    // Its nodes were just told "relay shutting down": none may join it again.
    if (this.#closed) throw new JoinRefused(503, "unavailable", SHUTTING_DOWN);
    this.checkSecret(
      headerSecret ?? (typeof hello.secret === "string" ? hello.secret : null),
      extra.from,
    );
    const parsed = parseNodeFrame(hello, this.rules);
    if (!parsed.ok || parsed.frame.t !== "hello") {
      this.refuse("bad-hello");
      const reason = parsed.ok ? "the first frame must be a hello" : parsed.problem.reason;
      throw new JoinRefused(400, "bad-request", reason);
    }
    if (this.#clusterReady) {
      const hello = parsed.frame;
      return this.#clusterReady.then((cluster) => this.#joinCluster(cluster, hello, sink, extra));
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
    // A suffixed nickname is one the relay gave: only its holder may ask for
    // it, or, if it is free, a node back from the room's earlier life (the
    // relay restarted, and forgot who held it) while that life is recent: a
    // position from another epoch is easy to make up.
    const earlier = fromEarlierLife(room, hello) &&
      (room === undefined || now - room.createdAt < s.rejoinGrace);
    if (
      suffixed(wanted) && !room?.givenTo(wanted, token, now) &&
      !(earlier && (room?.freeName(wanted, token, now) ?? wanted) === wanted)
    ) throw this.#badSuffix();
    if (!room) {
      // Rooms nobody is in only keep history (and nicknames) for nodes that
      // may come back: at the limit, one of them makes room for a session with a node.
      if (this.rooms.size >= s.maxSessions && !this.#dropEmptyRoom()) {
        throw this.#full("max-sessions", id);
      }
      room = new Room(
        id,
        {
          count: s.historyLength,
          bytes: s.historyBytes,
          age: s.historyAge,
        },
        now,
        this.#historyBudget,
      );
      this.rooms.set(id, room);
    }

    // The same node back after a blip the relay has not noticed yet: swap its
    // connection in place; to the others nothing happened.
    const current = room.members.get(wanted);
    if (
      current && token !== undefined && secretsEqual(current.token, token) &&
      current.role === role
    ) {
      const old = current.attach(sink, now);
      current.id = hello.id ?? current.id;
      old.close(4409, "replaced by a newer connection of the same node");
      this.#welcome(current, hello, extra.stream);
      this.#backAgain(wanted, id);
      return current;
    }
    if (room.members.size >= s.maxNodesPerSession) {
      // An empty room is never left behind: this refusal needs a full one.
      throw this.#full("max-nodes", id);
    }
    const nickname = room.freeName(wanted, token, now, hello.claim);
    const reservation = room.reserved.get(nickname);
    room.reserved.delete(nickname);
    const member = new Member(room, nickname, role, newJoinToken(), sink, s.rate, now);
    this.#startKeepAlive(member, now);
    member.id = hello.id;
    member.claim = hello.claim;
    // Back after it was declared gone: its resent messages are still duplicates.
    // (Not by its claim: that is a new process, numbering its messages anew.)
    if (reservation && token !== undefined && secretsEqual(reservation.token, token)) {
      member.lastSeq = member.ackedSeq = reservation.lastSeq;
    }
    room.members.set(nickname, member);
    this.#nodes++;
    this.#counters.joins++;
    this.#welcome(member, hello, extra.stream);
    this.#announce(member, encodeFrame({ t: "join", nickname, role }));
    log.info("Node {nickname} joined {session} as {role}", {
      nickname: shownName(nickname),
      session: shownName(id),
      role,
    });
    return member;
  }

  /**
   * The welcome, and for a node that says where it is in the room's history,
   * the messages it missed, right after: nothing can come between them.
   */
  #welcome(member: Member, hello: HelloFrame, stream?: string): void {
    const room = member.room;
    const history = room.history;
    let replay: HistoryEntry[] = [];
    let missed: MissedReason | undefined;
    if (member.id !== undefined && hello.recover) {
      const { epoch, offset } = hello.recover;
      if (epoch !== history.epoch) {
        missed = "epoch";
        // Back from an earlier life of the room (this relay restarted, or it
        // forgot the room): the room's other members may be on their way too.
        // Only in a room just made, and never longer than the grace from then:
        // in a room that lives on, a foreign position is stale (or made up).
        const grace = this.settings.rejoinGrace;
        if (this.#clock() - room.createdAt < grace) room.rejoinUntil = room.createdAt + grace;
        // Nothing of this epoch can have reached the node: all of it is news.
        replay = history.heldAfter(0);
      } else {
        const since = history.since(offset);
        if (since) replay = since;
        else {
          missed = "window";
          replay = history.heldAfter(offset);
        }
      }
    }
    replay = replay.filter((entry) => this.#addressedTo(member, entry));
    this.#sendWelcome(member, {
      members: room.snapshot(member),
      epoch: history.epoch,
      offset: welcomeOffset(history.offset, missed, replay),
      recover: hello.recover !== undefined,
      missed,
      stream,
    });
    this.#replay(member, replay);
  }

  /** The welcome frame; the position fields only for a node with an id. */
  #sendWelcome(member: Member, welcome: {
    members: { nickname: string; role: string }[];
    epoch: string;
    offset: number;
    recover: boolean;
    missed: MissedReason | undefined;
    stream: string | undefined;
  }): void {
    const { epoch, offset, recover, missed, stream } = welcome;
    this.#send(
      member,
      encodeFrame({
        t: "welcome",
        session: member.room.id,
        nickname: member.nickname,
        role: member.role,
        token: member.token,
        members: welcome.members as WelcomeFrame["members"],
        keepAlive: this.settings.keepAlive,
        fadeAfter: this.settings.fadeAfter,
        rate: this.settings.rate,
        maxMessageBytes: this.settings.maxMessageBytes,
        ...(stream ? { stream } : {}),
        ...(member.id === undefined ? {} : {
          epoch,
          offset,
          acked: member.ackedSeq,
          ...(recover ? { recovered: missed === undefined } : {}),
          ...(missed ? { missed } : {}),
        }),
      }),
    );
  }

  /** The messages of `entries` that `member` hears, right after its welcome. */
  #replay(member: Member, entries: readonly HistoryEntry[]): void {
    for (const entry of entries) {
      if (!this.#addressedTo(member, entry)) continue;
      // A node too slow for its own replay reconnects and goes on from where it got to.
      if (!this.#deliver(member, entry.data)) return;
      this.#counters.replayed++;
    }
  }

  /** Whether `entry` is a message `member` hears. */
  #addressedTo(member: Member, entry: HistoryEntry): boolean {
    if (entry.to !== undefined) return entry.to === member.nickname && member.hears(entry);
    return entry.from !== member.nickname && member.hears(entry);
  }

  /**
   * The connection `sink` of `member` broke: the node keeps its place (and
   * what it misses waits in the history) until it comes back, or until the
   * keep-alive declares it gone. A blip is not announced to the others.
   */
  detach(member: Member, sink: Sink): void {
    if (member.sink === sink) member.detach(this.#clock());
  }

  /**
   * Removes a node; `gone` when it faded or its connection broke, `left`
   * when it said bye. `why` says what happened, for the log. In a cluster,
   * returns the leave on its way to Redis (it settles once Redis has it, or
   * it failed, and never rejects).
   */
  leave(member: Member, reason: LeaveReason, why?: string): Promise<void> | undefined {
    const room = member.room;
    if (room.members.get(member.nickname) !== member) return;
    // Said by the relay that held the node's connection, in a cluster too.
    log.info("Node {nickname} {verb} {session}{why}", {
      nickname: shownName(member.nickname),
      verb: reason === "left" ? "left" : "is gone from",
      session: shownName(room.id),
      why: why === undefined ? "" : ` (${why})`,
    });
    if (this.#cluster) {
      // The cluster announces it, to the nodes on this relay too.
      this.#dropLocal(member);
      return this.#cluster.leave(room.id, member.nickname, reason).catch((error) =>
        log.warn("Could not tell the cluster that {nickname} {verb}: {reason}", {
          nickname: shownName(member.nickname),
          verb: reason === "left" ? "left" : "is gone",
          reason: errorMessage(error),
        })
      );
    }
    room.members.delete(member.nickname);
    if (room.members.size === 0) this.#idleHistory = true;
    this.#nodes--;
    // A node that said bye is done: its nickname is free at once (a tunnel
    // server stopped and started again gets its name back). One that is gone
    // may come back: its nickname waits for its token.
    if (reason !== "left") {
      room.reserved.set(member.nickname, {
        token: member.token,
        ...(member.claim === undefined ? {} : { claim: member.claim }),
        until: this.#clock() + this.settings.reclaimWindow,
        lastSeq: member.lastSeq,
      });
    }
    if (room.members.size === 0) {
      // A room with history, or a nickname held for a node that may come
      // back, stays until they expire (the sweep): a lone node that blipped
      // would otherwise find its name free to anyone.
      if (room.history.size === 0 && room.reserved.size === 0) this.#forgetRoom(room);
      return;
    }
    this.#announce(member, encodeFrame({ t: "leave", nickname: member.nickname, reason }));
  }

  /**
   * Handles one parsed frame from a joined node: a refused one gets an error
   * frame. A bye, in a cluster, returns its leave on its way to Redis: the
   * transport holds what ends the node's connection (its close, the answer
   * to its POST) until then, so that a node that said bye and joins again at
   * once, through another relay, finds its nickname free.
   */
  handle(member: Member, parsed: Parsed<NodeFrame>): Promise<void> | undefined {
    if (parsed.ok) return this.receive(member, parsed.frame);
    if (!this.isMember(member)) return; // as receive says
    member.lastHeard = this.#clock();
    this.refuseFrame(member.sink, parsed.problem);
  }

  /** Whether `member` is still one of its room (not left, nor let go). */
  isMember(member: Member): boolean {
    return member.room.members.get(member.nickname) === member;
  }

  /** Handles one frame from a joined node (a bye: see {@linkcode Hub.handle}). */
  receive(member: Member, frame: NodeFrame): Promise<void> | undefined {
    // Left (a bye whose leave is on its way to Redis, its connection not
    // closed yet): what else it sends is not a member's, nor answered.
    if (!this.isMember(member)) return;
    const now = this.#clock();
    member.lastHeard = now;
    switch (frame.t) {
      case "ping":
        this.#send(member, PONG);
        return;
      case "pong":
        return;
      case "bye": {
        const left = this.leave(member, "left");
        if (left === undefined) return void member.sink.close(1000, "bye");
        return left.then(() => member.sink.close(1000, "bye"));
      }
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
    sink.push(errorFrame(problem, seq));
  }

  /** Owes `member` an ack of its latest `seq`; acks go out once this turn's frames are handled. */
  #ack(member: Member): void {
    if (this.#acksDue.size === 0) queueMicrotask(() => this.#sendAcks());
    this.#acksDue.add(member);
  }

  #sendAcks(): void {
    // A full queue loses the ack, not the message: the welcome after its reconnect says it.
    for (const member of this.#acksDue) {
      this.#send(member, encodeFrame({ t: "ack", seq: member.ackedSeq }));
    }
    this.#acksDue.clear();
  }

  #message(from: Member, frame: NodeMessageFrame, now: number): void {
    const { seq, to } = frame;
    // A connection whose message Redis did not take is closing: the node resends from there.
    if (from.sink === DETACHED) return;
    if (seq !== undefined) {
      // Resent after a blip, and taken already: the ack is all it needs.
      if (seq <= from.lastSeq) {
        this.#counters.duplicates++;
        this.#ack(from);
        return;
      }
      from.lastSeq = seq;
      // In a cluster, safe only once Redis has it.
      if (!this.#cluster) {
        from.ackedSeq = seq;
        this.#ack(from);
      }
    }
    const refuse = (code: RelayErrorCode, reason: string) =>
      this.refuseFrame(from.sink, { code, reason }, seq);
    const body = frame.text !== undefined ? { text: frame.text } : { numbers: frame.numbers };
    if (this.#cluster) return this.#messageToCluster(this.#cluster, from, frame, body);
    if (!from.takeToken(now)) {
      return refuse("rate-limited", `more than ${this.settings.rate} messages/s`);
    }
    this.#counters.messages++;
    const room = from.room;
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
    // Kept for members on their way back, not refused, while the room is rejoining.
    const rejoining = room.rejoinUntil > now;
    if (to !== undefined) {
      const target = room.members.get(to);
      if (!target && rejoining && to !== from.nickname) return room.history.append(entry);
      if (!target || target === from) {
        return refuse("no-such-node", noSuchNode(from, to));
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
    // Only a room whose members are coming back keeps it for them.
    if (!heard && rejoining) room.history.append(entry);
    else if (!heard && seq !== undefined) {
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
    // Away (in its grace, or cut in this burst): nothing is handed to it, and
    // nothing counted; a node back from a blip gets its share from the history.
    if (member.sink === DETACHED) return true;
    if (this.#send(member, data)) {
      this.#counters.deliveries++;
      return true;
    }
    if (this.settings.overflow === "drop") {
      this.#counters.dropped++;
      return false;
    }
    this.#counters.slowDisconnects++;
    log.warn("Node {nickname} in {session} disconnected: its queue is full (a slow reader)", {
      nickname: shownName(member.nickname),
      session: shownName(member.room.id),
    });
    const sink = member.sink;
    if (member.id !== undefined) {
      // It comes back for the rest: the history has what this queue could not take.
      member.detach(this.#clock());
      sink.close(4429, "too slow: send queue full");
      return false;
    }
    // Deferred: `member` may be the one we are iterating past right now. What
    // comes for it meanwhile (the rest of a burst) is not its to take: it is
    // cut once, logged and counted once.
    member.detach(this.#clock());
    queueMicrotask(() => {
      this.leave(member, "gone", "too slow: its send queue was full");
      sink.close(4429, "too slow: send queue full");
    });
    return false;
  }

  /** Queues `frame` for `member`: `false` when its queue is full. */
  #send(member: Member, frame: string): boolean {
    member.sent = true;
    return member.sink.push(frame);
  }

  /** A new member's first keep-alive check: at a random point of its first period. */
  #startKeepAlive(member: Member, now: number): void {
    member.nextCheck = now + this.settings.keepAlive * (0.5 + Math.random() / 2);
  }

  /**
   * One keep-alive round (the hub's timer runs it): checks the nodes whose
   * turn it is, declares gone those silent past `fadeAfter`, and forgets
   * expired nickname reservations.
   *
   * A ping does two jobs: its answer tells the relay the node is alive, and
   * the ping itself tells the node the relay is (a node that hears nothing
   * for 3 keep-alives reconnects). A node that spoke and was spoken to since
   * its last check needs neither, so a node in a conversation costs the
   * keep-alive nothing; any other gets one ping per period.
   */
  sweep(): void {
    const now = this.#clock();
    const { keepAlive, fadeAfter } = this.settings;
    // A node heard within this long needs no ping now. A pong comes back just
    // after its ping, a period minus a sweep before the next check; and a node
    // not pinged now is pinged at the next check at the latest (a period and
    // a late sweep from now), whose answer must come before `fadeAfter`.
    const heardRecently = Math.min(
      keepAlive - this.#sweepEvery,
      fadeAfter - keepAlive - 2 * this.#sweepEvery,
    );
    const blipGrace = Math.min(fadeAfter, BLIP_GRACE_MS);
    // While the cluster store is down, a node that is away is away because of
    // us: its messages closed its connection (4503) and its joins are refused.
    // Declared gone then, it left the room (and Redis, once back, its ghost
    // check too), and the messages it held were resent, one node back, into a
    // room without the others: refused `alone` or `no-such-node`, and lost.
    if (this.clusterStoreUp === false) this.#presenceWaitsUntil = now + STORE_BACK_GRACE_MS;
    const judging = now >= this.#presenceWaitsUntil;
    for (const room of this.rooms.values()) {
      for (const member of room.members.values()) {
        // In a cluster, not while a join is in flight in the room: it may be this
        // node's, and a leave sent now could land after it and undo it.
        const absent = member.detachedAt !== undefined && now - member.detachedAt > blipGrace &&
          room.joining.size === 0;
        // A node still connected but silent is judged all the same: it is dead
        // whatever Redis does, and held its socket while Redis stayed down.
        const waits = !judging && member.detachedAt !== undefined;
        if (!waits && (now - member.lastHeard > fadeAfter || absent)) {
          this.#counters.faded++;
          this.leave(
            member,
            "gone",
            absent
              ? `its connection broke and it did not come back within ${blipGrace} ms`
              : `nothing heard from it for ${Math.round(now - member.lastHeard)} ms`,
          );
          member.sink.close(4408, "keep-alive missed");
        } else if (now >= member.nextCheck) {
          if (now - member.lastHeard >= heardRecently || !member.sent) this.#send(member, PING);
          member.sent = false;
          member.nextCheck = now + keepAlive;
        }
      }
      for (const [name, reservation] of room.reserved) {
        if (reservation.until < now) room.reserved.delete(name);
      }
      room.history.expire(now);
      if (
        room.members.size === 0 && room.history.size === 0 && room.joining.size === 0 &&
        room.reserved.size === 0
      ) {
        this.#forgetRoom(room);
      }
    }
  }

  // In a cluster (Redis): the cluster decides joins and numbers messages;
  // this relay delivers what the cluster fans out to the nodes connected here.

  /**
   * Redis failed a node's request (`what` was refused): the operator's log
   * says why (a line per interval); the node is told without where Redis is
   * or what it said.
   */
  storeUnreachable(error: unknown, what: string): string {
    this.#logs.event("unavailable", "{what}: Redis cannot be reached ({reason})", {
      what,
      reason: errorMessage(error),
    });
    return "the relay cannot reach its cluster store (Redis)";
  }

  /**
   * A join refused for a limit: counted, logged (a line per interval: a
   * client retrying cannot flood the log) and returned to throw.
   */
  #full(limit: "max-sessions" | "max-nodes", session: string): JoinRefused {
    this.refuse(limit);
    const [what, count] = limit === "max-nodes"
      ? ["the session has reached its node limit", this.settings.maxNodesPerSession]
      : ["the relay has reached its session limit", this.settings.maxSessions];
    this.#logs.event(limit, "Refused a node in {session}: {what} ({count})", {
      session: shownName(session),
      what,
      count,
    });
    return new JoinRefused(503, "full", what);
  }

  /**
   * A join refused after it was held as long as it may be while the relays
   * recover from Redis's loss of the cluster's data: the nodes connected
   * then come back first, to the nicknames kept for them. A node retries
   * `unavailable`.
   */
  #recovering(session: string): JoinRefused {
    this.refuse("unavailable");
    const what = "the relays are recovering from Redis's loss of their data";
    this.#logs.event("recovering", "Refused a node in {session} for now: {what}", {
      session: shownName(session),
      what,
    });
    return new JoinRefused(503, "unavailable", `${what}: try again in a few seconds`);
  }

  #backAgain(nickname: string, session: string): void {
    this.#returns.event(`${session}\n${nickname}`, "Node {nickname} is back in {session}", {
      nickname: shownName(nickname),
      session: shownName(session),
    });
  }

  #badSuffix(): JoinRefused {
    this.refuse("bad-hello");
    return new JoinRefused(
      400,
      "bad-request",
      "a nickname may not end in (n): the relay adds that to tell clashing nicknames apart " +
        "(a node keeps one it was given by reconnecting with its join token)",
    );
  }

  async #joinCluster(
    cluster: RelayCluster,
    hello: HelloFrame,
    sink: Sink,
    extra: { stream?: string; left?: () => boolean },
  ): Promise<Member> {
    const s = this.settings;
    const id = hello.session;
    let room = this.rooms.get(id);
    if (!room) {
      room = new Room(
        id,
        { count: s.historyLength, bytes: s.historyBytes, age: s.historyAge },
        this.#clock(),
        this.#historyBudget,
      );
      this.rooms.set(id, room);
    }
    // What the cluster fans out from now on waits here until the welcome is out.
    const arrived: Arrival[] = [];
    room.joining.add(arrived);
    let subscribed = false;
    let member: Member | undefined;
    try {
      let result: ClusterJoin;
      let replay: HistoryEntry[] = [];
      let missed: MissedReason | undefined;
      try {
        await cluster.subscribe(id);
        subscribed = true;
        const join = () =>
          cluster.join(id, {
            nickname: hello.nickname,
            token: hello.token,
            role: hello.role,
            id: hello.id,
            claim: hello.claim,
            suffixed: suffixed(hello.nickname),
            // A node with a position may be back from the room's earlier life
            // (Redis lost it): the script compares the epochs.
            recoverEpoch: hello.id !== undefined ? hello.recover?.epoch : undefined,
          });
        let joined = await join();
        // A newcomer right after Redis lost the data waits, a heartbeat's
        // lifetime at most, while the relays reserve their nodes' nicknames:
        // its join takes longer, as with a slow Redis, rather than fail.
        // Real time (the hub's clock may be a test's, standing still).
        const holdUntil = performance.now() + MAX_JOIN_HOLD_MS;
        // (`lost`: this relay had not noticed, and beats now; then the same.)
        for (;;) {
          const wait = joined === "lost"
            ? JOIN_RETRY_MS
            : typeof joined === "object" && "rejoining" in joined
            ? Math.min(Math.max(joined.rejoining, 10), JOIN_RETRY_MS)
            : null;
          const left = holdUntil - performance.now();
          if (wait === null || left <= 0) break;
          await delay(Math.min(wait, left));
          // Not for a relay that is stopping, nor for a node that left
          // meanwhile (it would be a member nobody holds, then gone).
          if (this.#closed) throw new JoinRefused(503, "unavailable", SHUTTING_DOWN);
          if (extra.left?.()) throw new JoinRefused(503, "unavailable", "the node left");
          joined = await join();
        }
        if (joined === "bad-suffix") throw this.#badSuffix();
        if (joined === "max-sessions" || joined === "max-nodes") throw this.#full(joined, id);
        if (joined === "lost" || "rejoining" in joined) throw this.#recovering(id);
        result = joined;
        ({ replay, missed } = await this.#recoverFromCluster(cluster, hello, result));
      } catch (error) {
        if (error instanceof JoinRefused) throw error;
        this.refuse("unavailable");
        throw new JoinRefused(
          503,
          "unavailable",
          this.storeUnreachable(error, `Refused a node in ${shownName(id)}`),
        );
      }
      const now = this.#clock();
      member = room.members.get(result.nickname);
      if (member && (result.kind !== "replace" || member.role !== hello.role)) {
        // Redis let the node here go (its leave event is on its way) and gave its
        // nickname to a new node: that one is a member of its own, token and all.
        this.#dropLocal(member);
        member.sink.close(4408, "the cluster declared this node gone");
        member = undefined;
      }
      if (member) {
        // The same node again on this relay, before its old connection was noticed dead.
        const old = member.attach(sink, now);
        old.close(4409, "replaced by a newer connection of the same node");
        cluster.unsubscribe(id); // it holds one subscription already
      } else {
        member = new Member(room, result.nickname, hello.role, result.token, sink, s.rate, now);
        this.#startKeepAlive(member, now);
        room.members.set(result.nickname, member);
        this.#nodes++;
        if (result.kind === "join") this.#counters.joins++;
      }
      member.id = hello.id ?? member.id;
      // (No member.claim here: in a cluster, Redis keeps the claim's hash with
      // the membership and the reservation, and judges it.)
      member.lastSeq = member.ackedSeq = member.sentSeq = result.lastSeq;
      member.presence = result.presence;
      const self = member;
      this.#sendWelcome(member, {
        members: result.members.filter((m) => m.nickname !== self.nickname),
        epoch: result.epoch,
        offset: welcomeOffset(
          result.offset,
          missed,
          replay.filter((entry) => this.#addressedTo(self, entry)),
        ),
        recover: hello.recover !== undefined,
        missed,
        stream: extra.stream,
      });
      this.#replay(member, replay);
      // Then what came meanwhile, minus what the welcome and the replay hold.
      let last = replay.at(-1)?.offset ?? result.offset;
      for (const arrival of arrived) {
        if ("entry" in arrival) {
          if (arrival.entry.offset <= last) continue;
          last = arrival.entry.offset;
          if (this.#addressedTo(member, arrival.entry)) this.#deliver(member, arrival.entry.data);
        } else if (arrival.presence > result.presence && arrival.nickname !== member.nickname) {
          this.#deliver(member, arrival.data);
        }
      }
      if (result.kind === "join") {
        log.info("Node {nickname} joined {session} as {role}", {
          nickname: shownName(member.nickname),
          session: shownName(id),
          role: member.role,
        });
      } else this.#backAgain(member.nickname, id);
      return member;
    } finally {
      room.joining.delete(arrived);
      if (!member) {
        if (subscribed) cluster.unsubscribe(id);
        if (room.members.size === 0 && room.joining.size === 0) this.#forgetRoom(room);
      }
    }
  }

  /** What a node that says where it was gets from the cluster's history. */
  async #recoverFromCluster(
    cluster: RelayCluster,
    hello: HelloFrame,
    joined: ClusterJoin,
  ): Promise<{ replay: HistoryEntry[]; missed?: MissedReason }> {
    if (hello.id === undefined || !hello.recover) return { replay: [] };
    const sameEpoch = hello.recover.epoch === joined.epoch;
    // Nothing of another epoch can have reached the node: all of this one is news.
    const offset = sameEpoch ? hello.recover.offset : 0;
    if (sameEpoch && offset >= joined.offset) return { replay: [] };
    const since = await cluster.since(hello.session, offset);
    const now = Date.now();
    // What a node told it missed some can still be given.
    const held = since.epoch === joined.epoch
      ? since.entries.filter((entry) => now - entry.at <= this.settings.historyAge)
      : [];
    if (!sameEpoch) return { replay: held, missed: "epoch" };
    if (held.length === 0 || held[0] !== since.entries[0] || held[0].offset !== offset + 1) {
      return { replay: held, missed: "window" };
    }
    return { replay: since.entries };
  }

  #messageToCluster(
    cluster: RelayCluster,
    from: Member,
    frame: NodeMessageFrame,
    body: MessageBody,
  ): void {
    const { seq, to } = frame;
    const refuse = (code: RelayErrorCode, reason: string) =>
      this.refuseFrame(from.sink, { code, reason }, seq);
    const taken = () => {
      if (seq === undefined) return;
      from.ackedSeq = Math.max(from.ackedSeq, seq);
      this.#ack(from);
    };
    if (!from.takeToken(this.#clock())) {
      // After the messages before it: its refusal acknowledges it, and acks are cumulative.
      from.pending = from.pending.then(() => {
        refuse("rate-limited", `more than ${this.settings.rate} messages/s`);
        taken();
      });
      return;
    }
    this.#counters.messages++;
    const [before, after] = frameAroundOffset({
      t: "msg",
      from: from.nickname,
      ...(to === undefined ? {} : { to }),
      ...(seq !== undefined && from.id !== undefined ? { id: from.id, seq } : {}),
      ...body,
    });
    const prev = from.sentSeq;
    if (seq !== undefined) from.sentSeq = seq;
    // Sent at once (Redis runs them in order); their results are handled in order too.
    const sent = cluster.send(from.room.id, {
      from: from.nickname,
      role: from.role,
      seq,
      prev,
      to,
      before,
      after,
    });
    const sink = from.sink;
    const notTaken = (reason: string) => {
      // The node resends it once it is back, through this relay or another.
      if (from.sink !== sink) return;
      // A line per interval: with Redis full or down, every message of every node fails.
      this.#logs.event(
        "not-taken",
        "Node {nickname}: Redis did not take its message ({reason}); it will resend",
        { nickname: shownName(from.nickname), reason },
      );
      from.detach(this.#clock());
      sink.close(4503, "the relay cannot reach its cluster store");
    };
    from.pending = from.pending.then(() => sent).then((result) => {
      if (result.status === "gap") return notTaken("one before it was not taken");
      if (result.status === "dup") this.#counters.duplicates++;
      else if (result.status === "alone") {
        if (seq !== undefined) {
          this.#counters.alone++;
          refuse("alone", "nobody else in the session hears it: dropped");
        }
      } else if (result.status === "no-such-node") {
        refuse("no-such-node", noSuchNode(from, to!));
      } else if (result.status === "not-allowed") {
        refuse("not-allowed", "an agent talks to bridges only");
      }
      taken();
    }, (error) => notTaken(errorMessage(error)));
  }

  /** Forgets `room`, and what its history held of the relay's budget. */
  #forgetRoom(room: Room): void {
    room.history.clear();
    this.rooms.delete(room.id);
  }

  /**
   * The rooms' histories together passed the relay's budget as `history`
   * appended: rooms nobody is in (kept for nodes that may come back) lose
   * theirs first, oldest room first; then `history` its oldest messages.
   * A node back in a room whose history went is told it cannot be recovered.
   */
  #evictHistory(history: History): void {
    const budget = this.#historyBudget;
    if (this.#idleHistory) {
      for (const room of this.rooms.values()) {
        if (budget.used <= budget.max) return;
        if (room.members.size === 0 && room.history !== history) room.history.clear();
      }
      // Gone through all of them: none to look at again until a room empties.
      this.#idleHistory = false;
    }
    while (budget.used > budget.max && history.size > 0) history.dropOldest();
  }

  /**
   * Forgets a room with nobody in it (and no join on its way): one that holds
   * no nickname for a node coming back if there is one (its history is all
   * that goes), the first created of them; false if there is none.
   */
  #dropEmptyRoom(): boolean {
    let fallback: Room | undefined;
    const now = this.#clock();
    for (const room of this.rooms.values()) {
      if (room.members.size > 0 || room.joining.size > 0) continue;
      // Reservations run out before the sweep clears them: only live ones count.
      if (![...room.reserved.values()].some((reservation) => reservation.until >= now)) {
        this.#forgetRoom(room);
        return true;
      }
      fallback ??= room;
    }
    if (fallback === undefined) return false;
    this.#forgetRoom(fallback);
    return true;
  }

  /** Forgets a node on this relay only (it left, moved, or the cluster let it go). */
  #dropLocal(member: Member): void {
    const room = member.room;
    if (room.members.get(member.nickname) !== member) return;
    room.members.delete(member.nickname);
    if (room.members.size === 0) this.#idleHistory = true;
    this.#nodes--;
    this.#cluster?.unsubscribe(room.id);
    if (room.members.size === 0 && room.joining.size === 0) this.#forgetRoom(room);
  }

  #fromCluster(id: string, entry: HistoryEntry): void {
    const room = this.rooms.get(id);
    if (!room) return;
    for (const arrived of room.joining) arrived.push({ entry });
    for (const member of room.members.values()) {
      if (this.#addressedTo(member, entry)) this.#deliver(member, entry.data);
    }
  }

  #presenceFromCluster(
    id: string,
    event:
      | { kind: "join"; presence: number; nickname: string; role: Member["role"] }
      | { kind: "leave"; presence: number; nickname: string; reason: LeaveReason },
  ): void {
    const room = this.rooms.get(id);
    if (!room) return;
    const { nickname, presence } = event;
    const data = event.kind === "join"
      ? encodeFrame({ t: "join", nickname, role: event.role })
      : encodeFrame({ t: "leave", nickname, reason: event.reason });
    for (const arrived of room.joining) arrived.push({ presence, nickname, data });
    const local = room.members.get(nickname);
    if (event.kind === "leave" && local && presence > local.presence) {
      // The cluster let it go while it is here (this relay had been given up).
      this.#dropLocal(local);
      local.sink.close(4408, "the cluster declared this node gone");
    }
    for (const member of room.members.values()) {
      if (member.nickname !== nickname) this.#deliver(member, data);
    }
  }

  async #movedInCluster(id: string, nickname: string, relay: string): Promise<void> {
    const cluster = this.#cluster;
    if (!cluster || relay === cluster.id) return;
    const local = this.rooms.get(id)?.members.get(nickname);
    if (!local) return;
    // The event may be late: the node may have come back here since. Redis knows.
    let now;
    try {
      now = await cluster.member(id, nickname);
    } catch {
      return; // Redis cannot tell: keep the node (a stale one fades by its keep-alive)
    }
    if (now?.relay === cluster.id || this.rooms.get(id)?.members.get(nickname) !== local) return;
    this.#dropLocal(local);
    local.sink.close(4409, "replaced by a newer connection of the same node");
  }

  /**
   * Messages of room `id` never reached this relay's nodes and are gone from
   * the history: a node that counts on every message (it has an id) is sent
   * away to come back, and its welcome says what it missed (`window`).
   */
  #trimmedInCluster(id: string): void {
    for (const member of this.rooms.get(id)?.members.values() ?? []) {
      if (member.id === undefined || member.sink === DETACHED) continue;
      const sink = member.sink;
      member.detach(this.#clock());
      sink.close(4503, "the relay lost messages on their way to this node: reconnect to recover");
    }
  }

  #forgottenByCluster(cluster: RelayCluster, lostData: boolean): void {
    const rooms = [...this.rooms.values()].map((room) => ({
      room,
      members: [...room.members.values()],
    }));
    // After a data loss, their nicknames first, each for its own token: told
    // to join again at once, a node could find its name taken by a newcomer
    // who asked first. (Given up after a stall, the others' sweep reserved
    // them already, with their claims: not overwritten.)
    const reserved = !lostData
      ? Promise.resolve()
      : Promise.all(rooms.map(({ room, members }) =>
        cluster.reserve(
          room.id,
          members.map((m) => ({
            nickname: m.nickname,
            token: m.token,
            claim: m.claim,
            lastSeq: m.ackedSeq,
          })),
        )
      )).catch((error) =>
        log.warn("Could not keep the nicknames of this relay's nodes: {reason}", {
          reason: errorMessage(error),
        })
      );
    reserved.then(() => {
      for (const { members } of rooms) {
        for (const member of members) {
          // Back already (through another relay), or gone meanwhile: not ours to close.
          if (member.room.members.get(member.nickname) !== member) continue;
          this.#dropLocal(member);
          member.sink.close(1012, "the relay lost its place in the cluster: join again");
        }
      }
    }).catch((error) =>
      log.warn("Could not tell this relay's nodes to join again: {reason}", {
        reason: errorMessage(error),
      })
    );
  }

  /** Closes every node and stops the keep-alive timer. */
  close(): void {
    this.#logs.flush();
    this.#returns.flush();
    clearInterval(this.#timer);
    this.#closed = true;
    this.#closing.abort();
    this.#cluster?.close();
    for (const room of this.rooms.values()) {
      for (const member of room.members.values()) member.sink.close(1001, "relay shutting down");
      room.history.clear();
    }
    this.rooms.clear();
    this.#nodes = 0;
  }
}

/**
 * The offset a welcome gives a node as its position: for a node told it
 * `missed` some and given what is still held that it hears (`heard`), the
 * one just before the first of those, so that it takes them; otherwise the
 * room's `latest` (a position further back than what the node hears would
 * make its next recovery fail for messages it never needed).
 */
function welcomeOffset(
  latest: number,
  missed: MissedReason | undefined,
  heard: readonly HistoryEntry[],
): number {
  return missed && heard.length > 0 ? heard[0].offset - 1 : latest;
}

/**
 * Whether `hello` comes back to `room` from an earlier life of it: it has a
 * position from another epoch (the relay restarted, or forgot the room).
 */
function fromEarlierLife(room: Room | undefined, hello: HelloFrame): boolean {
  return hello.id !== undefined && hello.recover !== undefined &&
    hello.recover.epoch !== room?.history.epoch;
}

/** Why a message `from` a node to `to` has nobody to go to. */
function noSuchNode(from: Member, to: string): string {
  return to === from.nickname
    ? `"${to}" is you: a message to yourself goes nowhere`
    : `no node "${to}" in this session`;
}
