/**
 * Settings of a relay, and their defaults.
 *
 * @module
 */

/** What a relay does with a node whose send queue is full (a reader too slow for its session). */
export type OverflowPolicy = "disconnect" | "drop";

/** Settings of a {@linkcode Relay}; all optional. */
export interface RelayOptions {
  /**
   * Relay secret. Nodes send it in the `x-relay-secret` header or in their
   * first frame. Without it, the relay is open to anyone who can reach it.
   */
  secret?: string;
  /**
   * Token that `/metrics`, and the numbers on `/` and `/healthz`, require
   * (`Authorization: Bearer TOKEN`). Without one they require the relay
   * secret; a relay with neither is open, numbers included.
   */
  metricsToken?: string;
  /**
   * Keep-alive interval in ms: the relay pings a node it has not heard from,
   * or has sent nothing to, this often. Default 10000.
   */
  keepAlive?: number;
  /** A node not heard from for this long (ms) is declared gone. Default 2.5 × `keepAlive`. */
  fadeAfter?: number;
  /** Most sessions at once. Default 10000. */
  maxSessions?: number;
  /** Most nodes in one session. Default 1000. */
  maxNodesPerSession?: number;
  /**
   * Largest frame a node may send, in bytes (UTF-8 JSON: a message's text
   * and its frame around it; a hello too, so at least 512). Default 65536.
   */
  maxMessageBytes?: number;
  /** Longest nickname, in characters. Default 32. */
  maxNicknameLength?: number;
  /** Messages per second a node may send (bursts up to twice that). Default 100. */
  rate?: number;
  /** A connection must join within this many ms. Default 5000. */
  authTimeout?: number;
  /** Bytes queued towards one node before `overflow` applies. Default 1 MiB. */
  maxQueueBytes?: number;
  /**
   * Full queue: `"disconnect"` (the default) closes the slow node, which
   * reconnects and learns it missed messages; `"drop"` drops the message for
   * that node and counts it in `/metrics`.
   */
  overflow?: OverflowPolicy;
  /**
   * Messages each room keeps for nodes back from a blip (they say the last
   * one they have, and get the rest, in order, once). Default 1000.
   */
  historyLength?: number;
  /** Bytes of messages each room keeps, at most. Default 4 MiB. */
  historyBytes?: number;
  /** How long (ms) a room keeps a message for nodes back from a blip. Default 120000. */
  historyAge?: number;
  /**
   * Bytes of messages all rooms keep together, at most. Past it, rooms
   * nobody is in lose their history first, then the room that grew its
   * oldest messages. Default 256 MiB.
   */
  totalHistoryBytes?: number;
  /**
   * In a cluster, bytes of request bodies this relay holds at once to pass
   * them on to the relay that owns their stream (2.22): past it, such a
   * request gets 503. Default 64 MiB.
   */
  maxForwardedBytes?: number;
  /**
   * How long (ms) a node that is gone (not one that said bye) keeps its
   * nickname reserved for its join token. Default 30000.
   */
  reclaimWindow?: number;
  /**
   * How long (ms) a room keeps messages nobody hears, for its members on
   * their way back, once a node comes back to it from an earlier life of
   * the room (this relay restarted, or the room was forgotten): a
   * broadcast with no one else here, or a message to a nickname not here,
   * waits in the history for them instead of being refused (`alone`,
   * `no-such-node`). Nodes that come back with their position get it. Only
   * in a room this relay made less than this long ago: in a room that lives
   * on, a position from another epoch is stale, and silences nothing. With
   * `redis`, where a room outlives a relay, the grace starts when a relay
   * finds that Redis lost the cluster's data (restarted empty): for this
   * long, such messages are kept in every room. 0 turns it off.
   * Default 10000.
   */
  rejoinGrace?: number;
  /**
   * Redis URL (`redis://host:6379`, `rediss://` for TLS): several relay
   * processes, on one machine or many, serve the same sessions, sharing
   * nicknames, presence, message numbers and history in Redis. Without it,
   * everything stays in this process's memory.
   */
  redis?: string;
  /**
   * With `redis`: how long (ms) a Redis command may take before the relay
   * gives up on it — a join is refused as `unavailable` (the node tries
   * again), a message not taken is resent by its node. Checked by one
   * timer for all commands, a quarter of this often (at most every 250 ms):
   * a command fails that much after its time at most. Default 10000.
   */
  redisTimeout?: number;
  /** Serve the browser chat page at `/chat`. Default `true`. */
  chatPage?: boolean;
  /**
   * Addresses of reverse proxies in front of the relay whose
   * `X-Forwarded-For` it believes, to name in its log where a node comes
   * from (behind a proxy, every connection comes from the proxy). Only for
   * the log: limits count connections as they come. Default none.
   */
  trustedProxies?: string[];
}
