/**
 * A relay's link to the others of its cluster through Redis: nicknames,
 * membership, message numbers and history live in Redis (atomic Lua
 * scripts, `_cluster_scripts.ts`), messages and presence fan out through
 * pub/sub, and a heartbeat lets the others announce a dead relay's nodes as
 * gone. Each relay delivers only to the nodes connected to it.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { createClient } from "@redis/client";
import { errorMessage, isNotCapable } from "../_util.ts";
import { HEARTBEAT, JOIN, LEAVE, MESSAGE, RESERVE, SINCE } from "./_cluster_scripts.ts";
import type { HistoryEntry } from "./_history.ts";
import type { RelayMember, RelayRole } from "./_protocol.ts";
import { newJoinToken } from "./_secret.ts";
import { redactedUrl } from "./_settings.ts";
import { shownName } from "./_shown_name.ts";
import { hex, hmacKey } from "../conn/_handshake.ts";

const log = getLogger(["immortal", "relay", "cluster"]);

/** Heartbeat period; a relay silent for {@linkcode HEARTBEAT_TTL} is given up. */
const HEARTBEAT_EVERY = 1000;
/** A relay not heard for this long is dead: its nodes are announced gone (~3-4 s after it died). */
const HEARTBEAT_TTL = 3000;
/** Where a cluster of relays without a secret keeps its keys; see {@linkcode clusterPrefix}. */
const OPEN_PREFIX = "immortal:relay:";

/**
 * The key prefix of the cluster of relays that share `secret`. Relays with
 * another secret, or none, on the same Redis form a cluster apart: an open
 * relay joined to a secured one's keys would open all its sessions to
 * anyone. The prefix carries a fingerprint of the secret (64 bits of an
 * HMAC), not the secret.
 */
export async function clusterPrefix(secret: string | undefined): Promise<string> {
  if (secret === undefined) return OPEN_PREFIX;
  const key = await hmacKey(utf8.encode(secret));
  const mac = await crypto.subtle.sign("HMAC", key, utf8.encode("immortal relay cluster keys"));
  return `${OPEN_PREFIX}s:${hex(new Uint8Array(mac, 0, 8))}:`;
}

/** A message as it fans out to every relay. */
export type ClusterMessage = HistoryEntry;

/** A message as pub/sub or the history brings it: with the epoch its offset counts in. */
type EpochEntry = HistoryEntry & { epoch: string };

/** Messages that may wait while a gap is filled; past it, the fill reads the history again. */
const MAX_WAITING = 10_000;
/**
 * node-redis's notices of Redis Enterprise moving an endpoint, off: the
 * relays reconnect by themselves, and with them on, the client looked up
 * an IPv6 URL's host brackets and all (`redis://[::1]:6379` never
 * connected: node-redis#2734) and read an environment variable at each
 * connect (a relay needed `--allow-env` for it).
 */
const NO_MAINTENANCE_NOTIFICATIONS = "disabled" as const;
/** Every this many heartbeats, the members Redis lists for this relay are checked for ghosts. */
const GHOST_CHECK_EVERY = 30;

/** What the cluster tells its relay. */
export interface ClusterEvents {
  /** A message for the room, in offset order, each once. */
  message(room: string, message: ClusterMessage): void;
  /** A node joined or left the room (on any relay); `presence` numbers these events per room. */
  presence(
    room: string,
    event:
      | { kind: "join"; presence: number; nickname: string; role: RelayRole }
      | { kind: "leave"; presence: number; nickname: string; reason: "left" | "gone" },
  ): void;
  /** The node `nickname` now reaches the cluster through relay `relay`. */
  moved(room: string, nickname: string, relay: string): void;
  /** A pipe between nodes on two relays: offered to a node here, or refused by it there. */
  pipe(room: string, event: ClusterPipeEvent): void;
  /**
   * The cluster gave this relay up (it was silent too long, or Redis lost
   * its state: `lostData`): its nodes are no longer members and must join
   * again.
   */
  forgotten(lostData: boolean): void;
  /**
   * Whether this relay holds node `nickname` of `room`, or may be about to
   * (a join in flight there). A member Redis lists for this relay that it
   * does not hold is a ghost (a join that failed after Redis ran it, a
   * leave that never got there) and is let go.
   */
  holds(room: string, nickname: string): boolean;
  /**
   * Messages of `room` were trimmed from its history before this relay
   * delivered them (pub/sub lost them and the history no longer holds them).
   */
  trimmed(room: string, count: number): void;
  /**
   * Redis refused this relay for a reason that trying again will not mend
   * (a wrong password, no permission to reach it): a setting to fix. Said
   * once; the relay is of no use to its nodes until then.
   */
  refused?(reason: string): void;
}

/** What relays tell each other about a pipe between their nodes. */
export type ClusterPipeEvent =
  | { kind: "offer"; id: string; from: string; to: string; relay: string }
  | {
    kind: "refuse";
    id: string;
    relay: string;
    /** `refused`: the node said no; `unreachable`: its relay could not reach the dialing one. */
    why: "refused" | "unreachable";
    reason: string;
  };

/** A join as the cluster decided it. */
export interface ClusterJoin {
  /** `join`: a new member; `replace`: the same node back, keeping its membership. */
  kind: "join" | "replace";
  /** The nickname given. */
  nickname: string;
  /** The join token: a fresh one for a new member, the node's own on replace. */
  token: string;
  /** The highest `seq` the cluster has taken from this node. */
  lastSeq: number;
  /** The room history's epoch. */
  epoch: string;
  /** The room's latest offset. */
  offset: number;
  /** The presence number of this join: presence events at or below it are in `members`. */
  presence: number;
  /** The members, this node included. */
  members: RelayMember[];
}

/** Why the cluster refused a join. */
export type ClusterRefusal = "bad-suffix" | "max-nodes" | "max-sessions" | "lost";

/** A join to try again in `rejoining` ms: newcomers wait while the relays reserve nicknames. */
export interface ClusterWait {
  rejoining: number;
}

/** What became of a message. */
export type ClusterSent =
  | { status: "ok"; offset: number }
  | { status: "dup" | "gap" | "alone" | "no-such-node" | "not-allowed" };

/** Settings of a {@linkcode RelayCluster}. */
export interface ClusterSettings {
  /** Redis URL (`redis://host:port/db`, `rediss://` for TLS). */
  url: string;
  /** Messages each room keeps. */
  historyLength: number;
  /** How long an empty room's history and reservations are kept, ms. */
  roomTtl: number;
  /** How long a nickname stays reserved, ms. */
  reclaimWindow: number;
  /**
   * After Redis lost the cluster's data, how long (ms) messages that nobody
   * hears yet are kept for the nodes on their way back (0: refused at once).
   */
  rejoinGrace: number;
  /** Most nodes per room. */
  maxNodesPerSession: number;
  /** Most rooms in the cluster. */
  maxSessions: number;
  /** A Redis command not answered within this many ms fails (a Redis that is down or stalled). */
  commandTimeout: number;
  /** Where its keys go: {@linkcode clusterPrefix} of the relays' secret. */
  prefix: string;
}

type RedisClient = ReturnType<typeof createClient>;
const SCRIPTS = {
  join: JOIN,
  message: MESSAGE,
  leave: LEAVE,
  heartbeat: HEARTBEAT,
  since: SINCE,
  reserve: RESERVE,
};
type ScriptName = keyof typeof SCRIPTS;

/** A room this relay listens to, and where its messages are. */
interface Subscription {
  /** The room's name (its key is hex: kept here, not decoded again per message). */
  room: string;
  /** Local users of the subscription. */
  refs: number;
  /**
   * The epoch {@linkcode Subscription.lastOffset} counts in ('' before the
   * room has one). A Redis that lost the room starts a new epoch, offsets
   * from 1 again: keeping the old offset would drop those as duplicates.
   */
  epoch: string;
  /** The last offset delivered; messages at or below are duplicates, above the next are a gap. */
  lastOffset: number;
  /** Messages that came while a gap was being filled. */
  waiting: EpochEntry[] | null;
  /** More came while filling than may wait: read the history again once done. */
  overflowed: boolean;
  /** Resolves once subscribed. */
  ready: Promise<void>;
}

/** A Redis command waiting for its answer, failed at `deadline`. */
interface Waiter {
  deadline: number;
  fail: (error: Error) => void;
}

/** One relay's membership in a cluster on Redis. */
export class RelayCluster {
  /** This relay's id in the cluster. */
  readonly id: string = newJoinToken();
  #settings: ClusterSettings;
  /** Where this cluster's keys and channels are (a getter: used before the constructor's body). */
  get #prefix(): string {
    return this.#settings.prefix;
  }
  #events: ClusterEvents;
  #redis: RedisClient;
  #sub: RedisClient;
  /** Settles once both connections are up the first time, or one failed (then it rejects). */
  #connected: Promise<unknown>;
  /** Why a client of ours cannot reach Redis now (it lost it, or never had it); absent while it can. */
  #down = new Map<RedisClient, string>();
  #refused = false;
  #firstFailure = Promise.withResolvers<never>();
  /** SHA-1 of each script, once Redis has it (loaded again after a Redis restart). */
  #shas = new Map<ScriptName, string>();
  #rooms = new Map<string, Subscription>();
  #heartbeat: ReturnType<typeof setInterval>;
  #beats = 0;
  /** A heartbeat is under way: the next waits (a slow Redis must not pile them up). */
  #beating = false;
  /** When the heartbeat under way started (`performance.now()`). */
  #beatStartedAt = 0;
  /** A Redis command failed since the last ghost check: a member may be left in Redis. */
  #suspectGhosts = false;
  /**
   * Members (`room key\nnickname`, as Redis lists them for this relay) whose
   * leave this relay has sent and Redis has not answered: still listed, and
   * no ghost.
   */
  #leaving = new Map<string, number>();
  /** Channels whose unsubscribe failed (Redis away): tried again at the next heartbeat. */
  #staleChannels = new Set<string>();
  #closed = false;
  #healthy = true;
  /** Redis has answered once: until then, the relay is not up. */
  #answered = false;
  /** Where other relays open pipes to this one ('' until told). */
  #pipeUrl = "";
  #key: Promise<string> | null = null;
  #keyAt = 0;
  /** The key is being read from Redis: a reload shares that read. */
  #keyReading = false;
  /** When a reload last found the key unchanged (the refusal was for something else). */
  #keyUnchangedAt = -Infinity;
  /** Commands sent and not yet answered, oldest first ({@linkcode RelayCluster.#timed}). */
  #waiting = new Set<Waiter>();
  #watchdog: ReturnType<typeof setInterval> | undefined;
  /** The id of the cluster's data in Redis at the last heartbeat: a new one, and Redis lost it. */
  #incarnation: string | undefined;
  /** The client asking Redis, once, whether it takes clients without a password. */
  #probe: RedisClient | undefined;

  /** Joins the cluster on the Redis at `settings.url`; `events` hears what happens in it. */
  constructor(settings: ClusterSettings, events: ClusterEvents) {
    this.#settings = settings;
    this.#events = events;
    // Reconnects go on for ever (a Redis restarting), each try within a second of the last.
    // Meanwhile commands fail at once instead of queueing without bound: a
    // join is refused (the node tries again), a message not taken is resent.
    const options = {
      url: settings.url,
      maintNotifications: NO_MAINTENANCE_NOTIFICATIONS,
      disableOfflineQueue: true,
      socket: {
        // None once closed, or refused for good: node-redis cannot cancel a
        // wait it started, so a closed relay must not start another.
        reconnectStrategy: (retries: number) =>
          this.#closed || this.#refused ? false : Math.min(50 * 2 ** retries, 1000),
      },
    };
    this.#redis = createClient(options);
    this.#sub = createClient(options);
    for (const client of [this.#redis, this.#sub]) {
      client.on("error", (error: unknown) => this.#failed(client, error));
      client.on("ready", () => this.#down.delete(client));
    }
    // Commands go through again: joins are taken now (healthy, for /healthz),
    // and this relay says it is here without waiting for the next beat.
    this.#redis.on("ready", () => {
      this.#healthyAgain();
      void this.#beat();
    });
    let reconnect = false;
    // After a reconnect, pub/sub may have missed messages: fill from the history.
    this.#sub.on("ready", () => {
      if (reconnect) {
        for (const [room, subscription] of this.#rooms) this.#fill(room, subscription, null);
      }
      reconnect = true;
    });
    const connecting = [this.#redis, this.#sub].map((client) => {
      const connected = client.connect();
      connected.catch((error: unknown) => this.#failed(client, error));
      return connected;
    });
    // The first connection, or its first failure: a join waiting for it gets its answer then.
    this.#connected = Promise.race([Promise.all(connecting), this.#firstFailure.promise]);
    this.#connected.catch(() => {}); // said by #failed
    // Redis takes any password from a client when it asks for none: an
    // operator who put one in the URL would believe Redis locked when it is open.
    if (new URL(settings.url).password !== "") {
      this.#connected.then(() => this.#warnIfOpen(), () => {});
    }
    this.#heartbeat = setInterval(() => this.#beat(), HEARTBEAT_EVERY);
    this.#beat();
  }

  /** Starts listening to `room` (counted: one {@linkcode RelayCluster.unsubscribe} per call). */
  async subscribe(room: string): Promise<void> {
    const hex = roomKey(room);
    let subscription = this.#rooms.get(hex);
    if (!subscription) {
      const ready = (async () => {
        const channel = `${this.#prefix}c:${hex}`;
        this.#staleChannels.delete(channel);
        await this.#timed(
          this.#ready(this.#sub).then(() => this.#sub.subscribe(channel, this.#listener)),
        );
        // Everything up to here is in what a joining node is told; later messages follow.
        const [epoch, latest] = await this.#since(hex, Number.MAX_SAFE_INTEGER);
        const subscribed = subscription!;
        if (subscribed.epoch === "" || subscribed.epoch === epoch) {
          subscribed.epoch = epoch;
          subscribed.lastOffset = Math.max(subscribed.lastOffset, latest);
        }
      })();
      subscription = {
        room,
        refs: 0,
        epoch: "",
        lastOffset: 0,
        waiting: null,
        overflowed: false,
        ready,
      };
      this.#rooms.set(hex, subscription);
    }
    subscription.refs++;
    try {
      await subscription.ready;
    } catch (error) {
      this.unsubscribe(room);
      throw error;
    }
  }

  /** Stops listening to `room` once its last user is done. */
  unsubscribe(room: string): void {
    const hex = roomKey(room);
    const subscription = this.#rooms.get(hex);
    if (!subscription || --subscription.refs > 0) return;
    this.#rooms.delete(hex);
    this.#unsubscribe(`${this.#prefix}c:${hex}`);
  }

  #unsubscribe(channel: string): void {
    this.#timed(this.#sub.unsubscribe(channel)).catch(() => {
      // Still subscribed in Redis: its messages are ignored here until a retry gets through.
      if (!this.#rooms.has(channel.slice(this.#prefix.length + 2))) {
        this.#staleChannels.add(channel);
      }
    });
  }

  /** The one pub/sub listener of every room (subscribing twice adds nothing). */
  #listener = (text: string, channel: string) => this.#received(channel, text);

  /** Joins a node to `room` (after {@linkcode RelayCluster.subscribe}). */
  async join(room: string, hello: {
    nickname: string;
    token?: string;
    role: RelayRole;
    id?: string;
    claim?: string;
    suffixed: boolean;
    recoverEpoch?: string;
  }): Promise<ClusterJoin | ClusterRefusal | ClusterWait> {
    const token = newJoinToken();
    const reply = await this.#run(
      "join",
      roomKey(room),
      hello.nickname,
      hello.token === undefined ? "" : await tokenHash(hello.token),
      hello.role,
      this.id,
      hello.id ?? "",
      await tokenHash(token),
      this.#settings.maxNodesPerSession,
      this.#settings.maxSessions,
      newJoinToken(),
      hello.suffixed ? "1" : "0",
      hello.claim === undefined ? "" : await tokenHash(hello.claim),
      hello.recoverEpoch ?? "",
      this.#incarnation ?? "",
    ) as string[];
    if (reply[0] === "rejoining") return { rejoining: Number(reply[1]) };
    if (reply.length === 1) {
      // Redis lost the data and this relay missed it: a heartbeat now finds
      // out, and reserves its nodes' nicknames, rather than within a second.
      if (reply[0] === "lost") void this.#beat();
      return reply[0] as ClusterRefusal;
    }
    const [kind, nickname, , lastSeq, epoch, offset, presence, ...flat] = reply;
    const members: RelayMember[] = [];
    for (let i = 0; i < flat.length; i += 2) {
      members.push({ nickname: flat[i], role: flat[i + 1] as RelayRole });
    }
    return {
      kind: kind as "join" | "replace",
      nickname,
      // A node that replaces its connection keeps its token (only its hash is stored).
      token: kind === "replace" ? hello.token! : token,
      lastSeq: Number(lastSeq),
      epoch,
      offset: Number(offset),
      presence: Number(presence),
      members,
    };
  }

  /**
   * Numbers and fans out a message: `before` + offset + `after` is the
   * encoded frame every receiver gets.
   */
  async send(room: string, message: {
    from: string;
    role: RelayRole;
    seq?: number;
    /** The seq sent before this one on the node's connection (its join's `lastSeq` at first). */
    prev: number;
    to?: string;
    before: string;
    after: string;
  }): Promise<ClusterSent> {
    const reply = await this.#run(
      "message",
      roomKey(room),
      message.from,
      message.role,
      message.seq ?? "",
      message.to ?? "",
      message.before,
      message.after,
      this.#settings.historyLength,
      message.prev,
    ) as [string, number?];
    return reply[0] === "ok"
      ? { status: "ok", offset: Number(reply[1]) }
      : { status: reply[0] as Exclude<ClusterSent["status"], "ok"> };
  }

  /**
   * Reserves, in a Redis that lost the cluster's data, the nicknames of the
   * nodes this relay still holds, each for its own token (and claim), for
   * the reclaim window, before they are told to join again: a newcomer who
   * asked for one of them first took it, and the holder came back as
   * `name(1)`. `lastSeq` is the highest message of the node this relay took.
   */
  async reserve(
    room: string,
    nodes: { nickname: string; token: string; claim?: string; lastSeq: number }[],
  ): Promise<void> {
    if (nodes.length === 0) return;
    const until = Date.now() + this.#settings.reclaimWindow;
    const fields: string[] = [];
    for (const node of nodes) {
      const claim = node.claim === undefined ? "" : await tokenHash(node.claim);
      fields.push(
        node.nickname,
        `${await tokenHash(node.token)},${until},${node.lastSeq},${claim}`,
      );
    }
    await this.#run("reserve", roomKey(room), this.#settings.roomTtl, ...fields);
  }

  /** The node `nickname` held by this relay leaves `room`. */
  async leave(room: string, nickname: string, reason: "left" | "gone"): Promise<void> {
    const hex = roomKey(room);
    // The relay let go of the node before this: a ghost check that lists it
    // meanwhile must not take it for one (and say so, and leave it again).
    const member = `${hex}\n${nickname}`;
    this.#leaving.set(member, (this.#leaving.get(member) ?? 0) + 1);
    try {
      await this.#run(
        "leave",
        hex,
        nickname,
        this.id,
        reason,
        Date.now() + this.#settings.reclaimWindow,
        this.#settings.roomTtl,
      );
    } finally {
      const count = this.#leaving.get(member)! - 1;
      if (count === 0) this.#leaving.delete(member);
      else this.#leaving.set(member, count);
    }
  }

  /** The room's history after `offset`: its epoch, latest offset, and the messages held. */
  async since(
    room: string,
    offset: number,
  ): Promise<{ epoch: string; latest: number; entries: HistoryEntry[] }> {
    const [epoch, latest, entries] = await this.#since(roomKey(room), offset);
    return { epoch, latest, entries };
  }

  /** Tells the other relays where to open pipes to this one (kept with every heartbeat). */
  advertise(url: string): void {
    this.#pipeUrl = url;
    this.#command(["HSET", `${this.#prefix}urls`, this.id, url])
      .catch(() => {}); // the next heartbeat says it again
  }

  /** Where relay `id` takes pipes, if it said. */
  async relayUrl(id: string): Promise<string | null> {
    return await this.#command(["HGET", `${this.#prefix}urls`, id]) as string | null;
  }

  /**
   * The key relays show each other to open a pipe: made by the first relay
   * that asks, the same for all (anyone who can read Redis is in the cluster).
   * `fresh` reads it again unless it was read within the last second: after
   * Redis lost its state, a relay that asks first makes a new one.
   */
  key(fresh = false): Promise<string> {
    if (fresh && Date.now() - this.#keyAt >= 1000) this.#key = null;
    this.#key ??= (async () => {
      this.#keyAt = Date.now();
      this.#keyReading = true;
      try {
        await this.#command(["SET", `${this.#prefix}key`, newJoinToken(), "NX"]);
        return await this.#command(["GET", `${this.#prefix}key`]) as string;
      } finally {
        this.#keyReading = false;
      }
    })();
    // A failure is not kept: the next pipe asks Redis again.
    this.#key.catch(() => this.#key = null);
    return this.#key;
  }

  /**
   * The key read from Redis again now, whenever it was last read: another
   * relay refused the one this relay keeps. After Redis lost its state, the
   * relay that asked first made a new key, and the others' is stale until
   * they read it again. A read under way is shared. Within a second of a
   * reload that found the key unchanged, the key kept is the answer: a 401
   * is also what a node's own bad token gets through a relay in between, and
   * a stream of those must not become a stream of Redis reads.
   */
  reloadKey(): Promise<string> {
    if (this.#keyReading || performance.now() - this.#keyUnchangedAt < 1000) return this.key();
    const kept = this.#key;
    this.#key = null;
    const fresh = this.key();
    return (async () => {
      const key = await fresh;
      // A kept read that had failed says nothing about the key.
      if (key === await kept?.catch(() => null)) this.#keyUnchangedAt = performance.now();
      return key;
    })();
  }

  /** The member `nickname` of `room` anywhere in the cluster: its role and its relay. */
  async member(room: string, nickname: string): Promise<{ role: RelayRole; relay: string } | null> {
    const record = await this.#command([
      "HGET",
      `${this.#prefix}r:${roomKey(room)}:m`,
      nickname,
    ]) as string | null;
    if (record === null) return null;
    const [role, relay] = record.split(",");
    return { role: role as RelayRole, relay };
  }

  /** Tells the relays of `room` about a pipe (the one holding the node concerned acts on it). */
  async announcePipe(room: string, event: ClusterPipeEvent): Promise<void> {
    const fields = event.kind === "offer"
      ? ["o", event.id, event.from, event.to, event.relay]
      : ["q", event.id, event.relay, event.why, event.reason];
    await this.#command(["PUBLISH", `${this.#prefix}c:${roomKey(room)}`, fields.join("\n")]);
  }

  /** Heartbeats Redis answered so far. */
  get heartbeats(): number {
    return this.#beats;
  }

  /** Whether Redis answered the last heartbeat, and neither connection to it is down. */
  get healthy(): boolean {
    // Joins need both connections: commands, and pub/sub for the room; and
    // before Redis first answered, nothing says it will.
    return this.#answered && this.#healthy && this.#down.size === 0;
  }

  /** Leaves the cluster: stops the heartbeat (the others sweep this relay's nodes) and disconnects. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#heartbeat);
    clearInterval(this.#watchdog);
    this.#watchdog = undefined;
    // Nothing is left waiting on a watchdog that no longer runs.
    for (const waiter of this.#waiting) waiter.fail(new Error("the relay left the cluster"));
    this.#waiting.clear();
    this.#redis.destroy();
    this.#sub.destroy();
    this.#probe?.destroy();
  }

  /** Warns once if the Redis answers a client that gives no password (see the constructor). */
  async #warnIfOpen(): Promise<void> {
    const open = new URL(this.#settings.url);
    open.username = open.password = "";
    const probe = this.#probe = createClient({
      url: open.href,
      maintNotifications: NO_MAINTENANCE_NOTIFICATIONS,
      socket: { reconnectStrategy: false, connectTimeout: 5000 },
    });
    probe.on("error", () => {}); // a refusal is the good answer
    try {
      if (this.#closed) return;
      await probe.connect();
      await probe.ping();
    } catch (error) {
      // It asks for a password (NOAUTH), or could not be asked: nothing to warn of.
      log.debug("Redis at {url}, asked without a password: {reason}", {
        url: redactedUrl(this.#settings.url),
        reason: errorMessage(error),
      });
      return;
    } finally {
      this.#probe = undefined;
      probe.destroy();
    }
    log.warn(
      "Redis at {url} answers clients that give no password: the password in the Redis URL " +
        "keeps nobody out (set requirepass, or ACL users, on the Redis server)",
      { url: redactedUrl(this.#settings.url) },
    );
  }

  /**
   * Runs script `name` with `args` after the key prefix, by its hash (the
   * script's text goes to Redis once, and again after a Redis restart). A
   * Redis that does not answer within the command timeout fails it;
   * the command may still run later, which every script allows for.
   */
  #run(name: ScriptName, ...args: (string | number)[]): Promise<unknown> {
    const argv = [this.#prefix, ...args].map(String);
    const run = async () => {
      await this.#ready(this.#redis);
      let sha = this.#shas.get(name);
      if (sha === undefined) {
        sha = await this.#redis.sendCommand(["SCRIPT", "LOAD", SCRIPTS[name]]) as string;
        this.#shas.set(name, sha);
      }
      try {
        return await this.#redis.sendCommand(["EVALSHA", sha, "0", ...argv]);
      } catch (error) {
        if (!/NOSCRIPT/.test(errorMessage(error))) throw error;
        this.#shas.delete(name);
        return await this.#redis.sendCommand(["EVAL", SCRIPTS[name], "0", ...argv]);
      }
    };
    return this.#timed(run());
  }

  /** One Redis command, within the command timeout. */
  #command(args: string[]): Promise<unknown> {
    return this.#timed(this.#ready(this.#redis).then(() => this.#redis.sendCommand(args)));
  }

  /**
   * Settles once `client` can take commands: at once if it can, or after
   * the first connection; fails at once while it cannot reach Redis. A join
   * then gets its answer (`unavailable`, try again) now, not after the
   * command timeout. Each client for itself: the pub/sub connection
   * reconnecting does not stop the commands of the other.
   */
  #ready(client: RedisClient): Promise<unknown> {
    if (client.isReady) return Promise.resolve();
    const down = this.#down.get(client);
    if (down !== undefined) return Promise.reject(new Error(`Redis is unreachable: ${down}`));
    return this.#connected;
  }

  /** `client` failed: Redis is down, or refuses us for good. */
  #failed(client: RedisClient, error: unknown): void {
    const reason = errorMessage(error);
    if (!client.isReady) {
      this.#down.set(client, reason);
      this.#firstFailure.reject(new Error(`Redis is unreachable: ${reason}`));
    }
    this.#refusedIf(error);
    if (!this.#refused) this.#unhealthy(reason);
  }

  /**
   * Stops this relay's use of the cluster if `error` is Redis refusing it
   * for good (a handshake's, or a command's answer: no permission for a
   * script, say).
   */
  #refusedIf(error: unknown): void {
    const mistake = refusalToMend(error);
    if (mistake === null || this.#refused || this.#closed) return;
    this.#refused = true;
    log.error("{mistake}", { mistake });
    this.#events.refused?.(mistake);
  }

  /**
   * `work`, failed if Redis does not answer within the command timeout.
   * Any failure may leave a member in Redis that no relay holds: the next
   * heartbeat checks.
   */
  #timed<T>(work: Promise<T>): Promise<T> {
    if (this.#closed) {
      work.catch(() => {}); // destroyed clients reject it
      return Promise.reject(new Error("the relay left the cluster"));
    }
    return new Promise<T>((resolve, reject) => {
      const waiter: Waiter = {
        deadline: performance.now() + this.#settings.commandTimeout,
        fail: reject,
      };
      this.#waiting.add(waiter);
      this.#watch();
      work.then((value) => {
        this.#waiting.delete(waiter);
        resolve(value);
      }, (error) => {
        this.#waiting.delete(waiter);
        this.#suspectGhosts = true;
        // A command's answer may be Redis refusing us for good (NOPERM, say).
        this.#refusedIf(error);
        reject(error);
      });
    });
  }

  /**
   * Runs the watchdog while commands wait: one timer for all of them, not
   * one per command (a relay on Redis sends one per message, and a timer
   * each was 2% of its CPU). The oldest command has the earliest deadline
   * (one timeout for all), so a check looks only at the oldest ones.
   */
  #watch(): void {
    if (this.#watchdog !== undefined || this.#closed) return;
    const every = Math.max(10, Math.min(250, this.#settings.commandTimeout / 4));
    this.#watchdog = setInterval(() => {
      const now = performance.now();
      for (const waiter of this.#waiting) {
        if (waiter.deadline > now) break;
        this.#waiting.delete(waiter);
        this.#suspectGhosts = true;
        waiter.fail(new Error(`Redis did not answer within ${this.#settings.commandTimeout} ms`));
      }
      if (this.#waiting.size === 0) {
        clearInterval(this.#watchdog);
        this.#watchdog = undefined;
      }
    }, every);
  }

  async #since(hex: string, offset: number): Promise<[string, number, EpochEntry[]]> {
    const reply = await this.#run("since", hex, offset) as string[];
    const epoch = reply[0];
    const entries: EpochEntry[] = [];
    for (let i = 2; i < reply.length; i += 6) {
      const [id, data, from, role, to, at] = reply.slice(i, i + 6);
      entries.push({
        offset: Number(id.slice(0, id.indexOf("-"))),
        epoch,
        data,
        from,
        role: role as RelayRole,
        ...(to === "" ? {} : { to }),
        at: Number(at),
      });
    }
    return [epoch, Number(reply[1]), entries];
  }

  async #beat(): Promise<void> {
    // A Redis slower than the period must not pile heartbeats up.
    if (this.#closed) return;
    if (this.#beating) {
      // Redis stopped answering without failing (paused, swapping, a network
      // that drops without a reset): the other relays give this one up after
      // the heartbeat's lifetime, and a load balancer asking /healthz should
      // hear it now, not after the command timeout (10 s).
      const waited = performance.now() - this.#beatStartedAt;
      if (waited > HEARTBEAT_TTL) {
        this.#unhealthy(`no answer to a heartbeat for ${Math.round(waited)} ms`);
      }
      return;
    }
    this.#beating = true;
    this.#beatStartedAt = performance.now();
    try {
      const [known, swept, names, incarnation] = await this.#run(
        "heartbeat",
        this.id,
        HEARTBEAT_TTL,
        this.#settings.reclaimWindow,
        this.#settings.roomTtl,
        this.#pipeUrl,
        this.#incarnation ?? "",
      ) as [number, number, string[], string];
      const lostData = this.#incarnation !== undefined && incarnation !== this.#incarnation;
      this.#incarnation = incarnation;
      this.#healthyAgain();
      if (swept > 0) {
        const more = swept > names.length ? ` and ${swept - names.length} more` : "";
        log.info("Nodes of relays that stopped beating declared gone: {names}{more}", {
          names: names.join(", "),
          more,
        });
      }
      // First, before anything else that may fail: the first beat registers this
      // relay; a later one that finds it unknown was given up.
      if (this.#beats++ > 0 && known === 0 && !this.#closed) {
        // Which one decides what to look at: Redis's persistence, or this process's stalls.
        if (lostData) {
          log.warn(
            "Redis has lost the cluster's data (restarted without it, or flushed): " +
              "this relay's nodes join again",
          );
          // Before they do: the nodes come back one after another, and the
          // first back resends what it held into rooms without the others.
          // Kept for them (MESSAGE), not refused `alone` or `no-such-node`.
          // Its failure must not keep the nodes from joining again: said, and passed over.
          if (this.#settings.rejoinGrace > 0) {
            await this.#command([
              "SET",
              `${this.#prefix}rejoin`,
              "1",
              "PX",
              String(this.#settings.rejoinGrace),
            ]).catch((error) =>
              log.warn("Could not keep messages for the nodes coming back: {reason}", {
                reason: errorMessage(error),
              })
            );
          }
        } else {
          log.warn(
            "The other relays gave this relay up (no heartbeat from it for {ttl} ms: it stalled, " +
              "or could not reach Redis): its nodes join again",
            { ttl: HEARTBEAT_TTL },
          );
        }
        this.#events.forgotten(lostData);
      }
      for (const channel of [...this.#staleChannels]) {
        this.#staleChannels.delete(channel);
        this.#unsubscribe(channel);
      }
      await this.#reconcile();
      if (this.#suspectGhosts || this.#beats % GHOST_CHECK_EVERY === 0) await this.#letGhostsGo();
    } catch (error) {
      this.#unhealthy(errorMessage(error));
    } finally {
      this.#beating = false;
    }
  }

  /**
   * Lets go of the members Redis lists for this relay that it does not hold:
   * a join Redis ran but whose answer never came (or whose node was gone by
   * then), a leave that never got there. Without this they would stay
   * members for ever, holding their nicknames and hearing nothing.
   */
  async #letGhostsGo(): Promise<void> {
    this.#suspectGhosts = false;
    const held = await this.#command(["SMEMBERS", `${this.#prefix}relay:${this.id}`]) as string[];
    // A member is no ghost while this relay holds it, or its leave is in
    // flight (sent after the question, on the same connection, a leave is
    // answered after it, and its node is listed).
    const notGhost = (hex: string, nickname: string) =>
      this.#closed || this.#events.holds(roomName(hex), nickname) ||
      this.#leaving.has(`${hex}\n${nickname}`);
    // Judged all at once, as Redis answered; and each again before its
    // leave: while an earlier one's was awaited, it may have come back (a
    // node resuming here) or begun to leave.
    const ghosts = held.map((entry) => {
      const cut = entry.indexOf("\n");
      return { hex: entry.slice(0, cut), nickname: entry.slice(cut + 1) };
    }).filter(({ hex, nickname }) => !notGhost(hex, nickname));
    for (const { hex, nickname } of ghosts) {
      if (notGhost(hex, nickname)) continue;
      const room = roomName(hex);
      log.warn("Node {nickname} of {room} was left in Redis by a failed join or leave: gone", {
        nickname: shownName(nickname),
        room: shownName(room),
      });
      await this.#run(
        "leave",
        hex,
        nickname,
        this.id,
        "gone",
        Date.now() + this.#settings.reclaimWindow,
        this.#settings.roomTtl,
      );
    }
  }

  /**
   * Catches up on what pub/sub lost (it promises nothing: a Redis restart, a
   * reconnect before the resubscription): any room whose latest offset is
   * past what was delivered here, or whose epoch changed, is filled from its
   * history.
   */
  async #reconcile(): Promise<void> {
    const rooms = [...this.#rooms.entries()];
    for (let i = 0; i < rooms.length; i += 500) {
      const chunk = rooms.slice(i, i + 500);
      const values = await this.#command([
        "MGET",
        ...chunk.flatMap(([hex]) => [`${this.#prefix}r:${hex}:o`, `${this.#prefix}r:${hex}:e`]),
      ]) as (string | null)[];
      chunk.forEach(([hex, subscription], j) => {
        const latest = Number(values[2 * j] ?? 0);
        const epoch = values[2 * j + 1] ?? "";
        if (this.#rooms.get(hex) !== subscription) return;
        if (latest > subscription.lastOffset || epoch !== subscription.epoch) {
          this.#fill(hex, subscription, null);
        }
      });
    }
  }

  #healthyAgain(): void {
    if (!this.#healthy && !this.#closed) log.info("Redis answers again");
    this.#healthy = this.#answered = true;
  }

  #unhealthy(reason: string): void {
    if (this.#closed || !this.#healthy) return;
    this.#healthy = false;
    // A Redis at its maxmemory (no eviction) answers, and refuses every
    // write: "unreachable" sent operators looking at the network.
    if (/^OOM\b/.test(reason)) {
      log.warn("Redis is full (its maxmemory, with no eviction) and refuses writes: {reason}", {
        reason,
      });
    } else log.warn("Redis is unreachable: {reason}", { reason });
  }

  #received(channel: string, text: string): void {
    if (this.#closed) return;
    const hex = channel.slice(this.#prefix.length + 2);
    const subscription = this.#rooms.get(hex);
    if (!subscription) return;
    const room = subscription.room;
    const fields = text.split("\n");
    switch (fields[0]) {
      case "m": {
        // The frame text itself may hold no newline (JSON escapes them), so it is the seventh field.
        const [, offset, epoch, from, role, to] = fields;
        const data = fields.slice(6).join("\n");
        const message: EpochEntry = {
          offset: Number(offset),
          epoch,
          at: Date.now(),
          from,
          role: role as RelayRole,
          ...(to === "" ? {} : { to }),
          data,
        };
        this.#ordered(room, hex, subscription, message);
        return;
      }
      case "j":
        this.#events.presence(room, {
          kind: "join",
          presence: Number(fields[1]),
          nickname: fields[2],
          role: fields[3] as RelayRole,
        });
        return;
      case "l":
        this.#events.presence(room, {
          kind: "leave",
          presence: Number(fields[1]),
          nickname: fields[2],
          reason: fields[3] === "left" ? "left" : "gone",
        });
        return;
      case "r":
        this.#events.moved(room, fields[1], fields[2]);
        return;
      case "o":
        this.#events.pipe(room, {
          kind: "offer",
          id: fields[1],
          from: fields[2],
          to: fields[3],
          relay: fields[4],
        });
        return;
      case "q":
        this.#events.pipe(room, {
          kind: "refuse",
          id: fields[1],
          relay: fields[2],
          why: fields[3] === "unreachable" ? "unreachable" : "refused",
          reason: fields.slice(4).join("\n"),
        });
        return;
    }
  }

  /** Delivers `message` in offset order: a gap is filled from the history first. */
  #ordered(room: string, hex: string, subscription: Subscription, message: EpochEntry): void {
    if (subscription.waiting) return this.#wait(subscription, message);
    if (message.epoch !== subscription.epoch) {
      if (subscription.epoch !== "") {
        log.warn("Redis lost the history of {room}: its offsets start again", {
          room: shownName(room),
        });
        subscription.lastOffset = 0;
      }
      subscription.epoch = message.epoch;
    }
    if (message.offset <= subscription.lastOffset) return;
    if (message.offset === subscription.lastOffset + 1) {
      subscription.lastOffset = message.offset;
      this.#events.message(room, message);
      return;
    }
    this.#fill(hex, subscription, message);
  }

  /** Keeps `message` until the fill under way is done (or notes that there were too many). */
  #wait(subscription: Subscription, message: EpochEntry): void {
    if (subscription.waiting!.length < MAX_WAITING) subscription.waiting!.push(message);
    else subscription.overflowed = true;
  }

  /**
   * Fetches what pub/sub did not bring (a gap, or a reconnect), then what
   * waited meanwhile. A gap among what waited (pub/sub lost more while the
   * history was read) starts another fill from there; a gap at the start of
   * the history is one it no longer holds (trimmed), and is passed over. A
   * history of another epoch (Redis lost the room) is read again from its
   * start.
   */
  #fill(hex: string, subscription: Subscription, trigger: EpochEntry | null): void {
    if (subscription.waiting) {
      if (trigger) this.#wait(subscription, trigger);
      return;
    }
    subscription.waiting = trigger ? [trigger] : [];
    subscription.overflowed = false;
    const room = subscription.room;
    const from = subscription.lastOffset;
    this.#since(hex, from).then(([epoch, , entries]) => {
      const waiting = (subscription.waiting ?? []).sort((a, b) => a.offset - b.offset);
      const overflowed = subscription.overflowed;
      subscription.waiting = null;
      if (this.#closed || this.#rooms.get(hex) !== subscription) return;
      if (epoch !== subscription.epoch) {
        const lost = subscription.epoch !== "";
        subscription.epoch = epoch;
        if (lost) {
          log.warn("Redis lost the history of {room}: its offsets start again", {
            room: shownName(room),
          });
          subscription.lastOffset = 0;
          if (from > 0) {
            // What was read starts at the old offset: read the new history from its start.
            this.#fill(hex, subscription, null);
            for (const message of waiting) this.#wait(subscription, message);
            return;
          }
        }
      }
      if (entries.length > 0 && entries[0].offset > from + 1) {
        const count = entries[0].offset - from - 1;
        log.warn("{count} messages of {room} were trimmed from its history before they were seen", {
          count,
          room: shownName(room),
        });
        this.#events.trimmed(room, count);
      }
      // What waited from another epoch is stale, or from one newer than what was
      // read: the next heartbeat sees that epoch and fills from it.
      const all = [...entries, ...waiting.filter((message) => message.epoch === epoch)];
      for (let i = 0; i < all.length; i++) {
        const entry = all[i];
        if (entry.offset <= subscription.lastOffset) continue;
        if (i >= entries.length && entry.offset > subscription.lastOffset + 1) {
          // Lost by pub/sub after the history was read: read it again.
          this.#fill(hex, subscription, entry);
          for (const rest of all.slice(i + 1)) this.#ordered(room, hex, subscription, rest);
          return;
        }
        subscription.lastOffset = entry.offset;
        this.#events.message(room, entry);
      }
      if (overflowed) this.#fill(hex, subscription, null);
    }, (error) => {
      // Redis went away again: the next heartbeat's reconcile fills it once Redis is back.
      subscription.waiting = null;
      log.warn("Could not fetch missed messages: {reason}", { reason: errorMessage(error) });
    });
  }
}

/** A room id as it appears in keys and channels: hex of its UTF-8 bytes (any text is safe there). */
const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));
const utf8 = new TextEncoder();

/** A room's name as hex (its key in Redis): computed once per message, so kept cheap. */
function roomKey(room: string): string {
  let key = "";
  for (const byte of utf8.encode(room)) key += HEX[byte];
  return key;
}

function roomName(hex: string): string {
  return new TextDecoder().decode(Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16)));
}

/** Only a hash of each join token is stored: Redis (and its backups) cannot act as a node. */
async function tokenHash(token: string): Promise<string> {
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", utf8.encode(token))));
}

/**
 * What went wrong, and what to mend, when reaching Redis failed with
 * `error` for a reason that trying again will not change; null for a
 * failure that may pass (Redis restarting, a network hiccup).
 */
function refusalToMend(error: unknown): string | null {
  const text = errorMessage(error);
  if (isNotCapable(error)) {
    return `this relay may not reach Redis: ${text} (a relay on Redis needs --allow-net ` +
      "for the Redis server)";
  }
  if (/^(WRONGPASS|NOAUTH|ERR AUTH|ERR invalid password|ERR Client sent AUTH)/.test(text)) {
    return `Redis refuses this relay: ${text} (check the user and password in the Redis URL)`;
  }
  if (/^NOPERM/.test(text)) {
    return `Redis refuses this relay: ${text} (its Redis user lacks a permission the relay needs)`;
  }
  if (/^ERR DB index is out of range/.test(text)) {
    return `Redis refuses this relay: ${text} (the database number at the end of the Redis URL)`;
  }
  return null;
}
