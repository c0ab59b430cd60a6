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
  /** Keep-alive interval in ms: the relay pings every node this often. Default 1000. */
  keepAlive?: number;
  /** A node not heard from for this long (ms) is declared gone. Default 2.5 × `keepAlive`. */
  fadeAfter?: number;
  /** Most sessions at once. Default 10000. */
  maxSessions?: number;
  /** Most nodes in one session. Default 1000. */
  maxNodesPerSession?: number;
  /** Largest frame a node may send, in bytes (UTF-8). Default 65536. */
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
  /** How long (ms) a node that left keeps its nickname reserved for its join token. Default 30000. */
  reclaimWindow?: number;
  /** Serve the browser chat page at `/chat`. Default `true`. */
  chatPage?: boolean;
}

/** @internal */
export type _RelaySettings = Required<Omit<RelayOptions, "secret">> & { secret?: string };

function _positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) {
    throw new RangeError(`${name} must be a positive number, got ${value}`);
  }
  return value;
}

/** @internal Fills in defaults and checks ranges. */
export function _relaySettings(options: RelayOptions = {}): _RelaySettings {
  const keepAlive = _positive("keepAlive", options.keepAlive ?? 1000);
  const overflow = options.overflow ?? "disconnect";
  if (overflow !== "disconnect" && overflow !== "drop") {
    throw new RangeError(`overflow must be "disconnect" or "drop", got ${overflow}`);
  }
  if (options.secret !== undefined && options.secret.length === 0) {
    throw new RangeError("the relay secret is empty");
  }
  return {
    secret: options.secret,
    keepAlive,
    fadeAfter: _positive("fadeAfter", options.fadeAfter ?? keepAlive * 2.5),
    maxSessions: _positive("maxSessions", options.maxSessions ?? 10_000),
    maxNodesPerSession: _positive("maxNodesPerSession", options.maxNodesPerSession ?? 1000),
    maxMessageBytes: _positive("maxMessageBytes", options.maxMessageBytes ?? 65_536),
    maxNicknameLength: _positive("maxNicknameLength", options.maxNicknameLength ?? 32),
    rate: _positive("rate", options.rate ?? 100),
    authTimeout: _positive("authTimeout", options.authTimeout ?? 5000),
    maxQueueBytes: _positive("maxQueueBytes", options.maxQueueBytes ?? 1 << 20),
    overflow,
    reclaimWindow: options.reclaimWindow ?? 30_000,
    chatPage: options.chatPage ?? true,
  };
}
