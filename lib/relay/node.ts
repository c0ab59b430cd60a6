/**
 * The relay client: {@linkcode RelayNode}.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { Changes } from "../_changes.ts";
import { LogLimiter } from "../_log_limiter.ts";
import {
  backoffDelay,
  delay,
  describeValue,
  errorMessage,
  isNotCapable,
  MAX_TIMER_MS,
  peerText,
} from "../_util.ts";
import { connect, type ConnectOptions } from "../conn/connect.ts";
import { RELAY_NEEDS_KEY, timerMs } from "../conn/_options.ts";
import { ImmortalError } from "../conn/errors.ts";
import type { ImmortalConn } from "../conn/immortal_conn.ts";
import { type ImmortalListener, listen, type ListenOptions } from "../conn/listener.ts";
import type { Acceptor, Dialer } from "../link/link.ts";
import { markThroughRelay } from "../link/_through_relay.ts";
import { NodePipes } from "./_node_pipes.ts";
import { HttpStreamTransport } from "./_http_stream_transport.ts";
import { frameTooLarge } from "./_http.ts";
import { CLAIM_RULE, encodeFrame, isClaim } from "./_protocol.ts";
import type {
  HelloFrame,
  LeaveReason,
  MissedReason,
  NodeMessageFrame,
  RecoverPosition,
  RelayErrorCode,
  RelayFrame,
  RelayMember,
  RelayMessageFrame,
  RelayRole,
  WelcomeFrame,
} from "./_protocol.ts";
import { newJoinToken } from "./_secret.ts";
import {
  type ClientTransport,
  type DialSettings,
  MAX_MEMBERS,
  type OpenTransport,
  RelayConnectError,
  RelayRefusedError,
  type RelayTransportKind,
} from "./_transport.ts";
import { WebSocketTransport } from "./_websocket_transport.ts";

const log = getLogger(["immortal", "relay", "node"]);

/** Connection state of a {@linkcode RelayNode}. */
export type RelayNodeState = "connecting" | "connected" | "disconnected" | "closed";

/** What a {@linkcode RelayNode} hears, from `node.events`. */
export type RelayEvent =
  | { type: "message"; from: string; to?: string; text: string }
  | { type: "numbers"; from: string; to?: string; numbers: number[] }
  | { type: "members"; members: RelayMember[] }
  | { type: "join"; nickname: string; role: RelayRole }
  | { type: "leave"; nickname: string; reason: LeaveReason }
  | { type: "state"; state: RelayNodeState; transport?: RelayTransportKind; reason?: string }
  | { type: "missed"; reason: MissedReason }
  /**
   * A refusal from the relay (its code), or `replaced`: another connection
   * showing this node's token took its membership, and the node closed.
   */
  | { type: "error"; code: RelayErrorCode | "replaced"; message: string; seq?: number };

/** Settings of {@linkcode RelayNode.connect}. */
export interface RelayNodeOptions {
  /**
   * Session id: names the room to join, whose nodes hear each other. Any
   * printable text of 1-64 characters (no control, format or invisible ones).
   */
  session: string;
  /** Wanted nickname; on a clash the relay assigns `name(1)`, `name(2)`, ... */
  nickname: string;
  /** The relay secret, if the relay has one. */
  secret?: string;
  /** `peer` (default), `bridge` or `agent`. */
  role?: RelayRole;
  /**
   * A secret of this node's own, 22-128 characters of A-Z, a-z, 0-9, - and
   * _ (say, base64url of an HMAC of a key it has): once this node is gone
   * (its process crashed), a node with the same claim gets its nickname back
   * at once, where others wait out the relay's reservation of it (30 s by
   * default). It never replaces a node still joined.
   */
  claim?: string;
  /**
   * `"auto"` (default) tries WebSocket first and falls back to HTTP streaming;
   * or force one.
   */
  transport?: "auto" | RelayTransportKind;
  /** Forward HTTP proxy, e.g. `http://proxy.example:3128`. */
  proxy?: string;
  /** Extra trusted CA certificates (PEM) for an `https:` relay. */
  caCerts?: string[];
  /**
   * How long one transport may take to be welcomed, ms; with `"auto"`, each
   * transport tried has its own (a proxy that holds WebSockets must leave
   * HTTP streaming its chance), so an attempt may take twice this. Default
   * 10000.
   */
  connectTimeout?: number;
  /** Attempts for the first connection before `connect` rejects. Default 3. */
  retries?: number;
  /**
   * Gives up the first connection: `connect` rejects with the signal's
   * reason at once, dials in flight abandoned. A node already connected is
   * not affected (close it).
   */
  signal?: AbortSignal;
  /** Reconnect backoff in ms. Default `{ initial: 250, max: 5000 }`. */
  backoff?: { initial?: number; max?: number };
  /**
   * Events kept for a slow `events` reader before the oldest are dropped
   * (counted in {@linkcode RelayNode.droppedEvents}, and logged). Default 10000.
   */
  maxBufferedEvents?: number;
  /**
   * Messages sent but not yet acknowledged by the relay (kept to resend after
   * a reconnect) before `send` throws. Default 1024.
   */
  maxUnacked?: number;
}

const utf8 = new TextEncoder();

/**
 * At least the UTF-8 bytes of `frame` as JSON, without encoding it: a UTF-16
 * unit of text takes at most 6 (`\uXXXX`), a number at most 25 with its
 * comma, and the rest (`{"t":"msg","to":"","seq":…,"text":""}`) under 96.
 */
function frameBytesBound(frame: NodeMessageFrame): number {
  return 96 + 6 * (frame.to?.length ?? 0) +
    (frame.text !== undefined ? 6 * frame.text.length : 25 * (frame.numbers?.length ?? 0));
}

/** What the sessions of a node that closes tell their peers. */
const NODE_CLOSED = "the relay node closed";

/** `text` of a message, checked: `String(undefined)` sent "undefined". */
function messageText(text: string): string {
  if (typeof text !== "string") {
    throw new TypeError(`a message's text must be a string, got ${describeValue(text)}`);
  }
  return text;
}

/** Senders a node remembers the last message number of, to drop duplicates. */
const MAX_SENDERS_REMEMBERED = 10_000;

const FADE_BEATS = 3;
/** The close code of a connection the relay replaced with a newer one of the same node. */
const REPLACED = 4409;
/**
 * Messages unacknowledged this long, with nothing at all heard from the
 * relay meanwhile, make the node ask: it pings. A relay answers a ping at
 * once, even when its acks wait (in a cluster, Redis takes each message
 * before it is acknowledged), so no answer within {@linkcode PROBE_GRACE_MS}
 * means a dead link: the node reconnects (and resends) without waiting for
 * the keep-alive's 3 periods (30 s with the relay's default).
 */
const ACK_SILENCE_MS = 2000;
const PROBE_GRACE_MS = 1000;

/**
 * Sessions through a relay are encrypted end to end, and the key is what
 * keeps the relay from standing in the middle of their key exchange.
 */
function requireKey(key: string | Uint8Array | undefined): void {
  if (key === undefined || key.length === 0) throw new TypeError(RELAY_NEEDS_KEY);
}

/**
 * The `encrypt` of a session through a relay: always on. `false` is refused
 * rather than obeyed: the relay would read, and could change, every byte (an
 * options object forwarded with `encrypt: undefined` turned it off before).
 */
function relayEncrypt(encrypt: unknown): true {
  if (encrypt === undefined || encrypt === true) return true;
  throw new TypeError(
    `encrypt must be true or left out through a relay, got ${describeValue(encrypt)}: ` +
      "sessions through a relay are always encrypted end to end, so that the relay can " +
      "neither read nor change them",
  );
}

/** What each failure says about the cause, most specific first. */
const TELLING = ["tls", "not-a-relay", "unreachable", "timeout", "broken"];

/**
 * Of the transports' failures, the one that says most about why: a TLS
 * mismatch or a wrong server over "the connection broke"; of two alike, the
 * more detailed (fetch says "Connection refused" where a WebSocket says
 * "tcp connect error").
 */
function mostTelling(failures: unknown[]): unknown {
  const rank = (error: unknown) =>
    error instanceof RelayConnectError ? TELLING.indexOf(error.code) : TELLING.length;
  const detail = (error: unknown) => errorMessage(error).length;
  return failures.reduce((best, error) =>
    rank(error) < rank(best) || (rank(error) === rank(best) && detail(error) > detail(best))
      ? error
      : best
  );
}

/** Whether the relay refused for good (a relay that cannot reach its Redis may take us later). */
function final(error: unknown): boolean {
  // A missing permission will not be granted by waiting either.
  if (isNotCapable(error)) return true;
  return error instanceof RelayRefusedError && error.code !== "unavailable";
}

const TRANSPORTS: Record<RelayTransportKind, OpenTransport> = {
  websocket: WebSocketTransport.open,
  http: HttpStreamTransport.open,
};

/** A connection the relay closed sooner than this after its welcome did not work: the backoff grows on. */
const STABLE_CONNECTION_MS = 5000;
/**
 * A connection that ended otherwise (a cut, a close without a reason) this
 * soon after its welcome worked only for a moment. Not 5 s: a relay
 * restarted twice in a few seconds cuts two connections that worked, and
 * each is a blip to redial at once.
 */
const MOMENTARY_CONNECTION_MS = 500;

/**
 * An optional whole number of at least `min`, or `fallback`: a `TypeError`
 * for another type, a `RangeError` for a number out of range.
 */
function count(name: string, value: unknown, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number") {
    throw new TypeError(`${name} must be an integer >= ${min}, got ${describeValue(value)}`);
  }
  // Infinity is a count too: retry for ever, keep without bound.
  if (!(Number.isInteger(value) || value === Infinity) || value < min) {
    throw new RangeError(`${name} must be an integer >= ${min}, got ${value}`);
  }
  return value;
}

/**
 * Checks the settings the node acts on itself, before anything is dialed:
 * a bad one would otherwise show only later, as an odd error (an unknown
 * transport), a warning (a negative timeout), or a node whose every send
 * throws (`maxUnacked: 0`). What the relay checks (session, nickname, role,
 * secret) it refuses with its reason.
 */
function checkOptions(options: RelayNodeOptions): void {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`the options must be an object, got ${describeValue(options)}`);
  }
  const { transport, backoff, claim } = options;
  if (claim !== undefined && !isClaim(claim)) {
    // A secret: its length says what is wrong, its text would be logged.
    const value: unknown = claim; // what a caller without types may pass
    const got = typeof value === "string" ? `${value.length} characters` : describeValue(value);
    throw new TypeError(`claim must be ${CLAIM_RULE}, got ${got}`);
  }

  if (transport !== undefined && transport !== "auto" && !Object.hasOwn(TRANSPORTS, transport)) {
    throw new TypeError(
      `transport must be "auto", "websocket" or "http", got ${describeValue(transport)}`,
    );
  }
  timerMs("connectTimeout", options.connectTimeout, 10_000, 1);
  // 0 has always meant one attempt, as 1 does.
  count("retries", options.retries, 3, 0);
  count("maxUnacked", options.maxUnacked, 1024, 1);
  count("maxBufferedEvents", options.maxBufferedEvents, 10_000, 1);
  if (backoff !== undefined) {
    if (typeof backoff !== "object" || backoff === null) {
      throw new TypeError(`backoff must be an object, got ${describeValue(backoff)}`);
    }
    // 0 is allowed: reconnect at once (tests of reconnects want it).
    const initial = timerMs("backoff.initial", backoff.initial, 250, 0);
    // Left out, the cap stays 5000 whatever the initial delay, as before; a
    // cap alone may be under the default initial delay (which it then caps).
    if (backoff.max !== undefined) {
      timerMs("backoff.max", backoff.max, 5000, backoff.initial === undefined ? 0 : initial);
    }
  }
}

/**
 * The failure of a node not allowed to reach the relay (no `--allow-net`
 * for it), in the terms `connect` promises: a {@linkcode RelayConnectError}.
 * Its code is `unreachable`, the nearest there is (Deno blocks the
 * connection); the message says that a permission is missing, and `cause`
 * keeps Deno's `NotCapable`.
 */
function noPermission(url: URL, error: unknown): RelayConnectError {
  return new RelayConnectError(
    "unreachable",
    `no permission to connect to ${url.host}: ${errorMessage(error)}`,
    { cause: error },
  );
}

/**
 * A node in a relay room (named by its session id).
 *
 * @example Two nodes in a room
 * ```ts
 * import { RelayNode, serveRelay } from "@immortal/sockets/relay";
 * import assert from "node:assert/strict";
 *
 * await using server = serveRelay({ hostname: "127.0.0.1", port: 0 });
 * const url = `http://127.0.0.1:${server.addr.port}`;
 * await using max = await RelayNode.connect(url, { session: "lab", nickname: "max" });
 * await using eve = await RelayNode.connect(url, { session: "lab", nickname: "eve" });
 * eve.send("hello, everyone");
 * for await (const event of max.events) {
 *   if (event.type !== "message") continue;
 *   assert.equal(`${event.from}: ${event.text}`, "eve: hello, everyone");
 *   break;
 * }
 * ```
 */
export class RelayNode implements AsyncDisposable {
  #options: RelayNodeOptions;
  #settings: DialSettings;
  #transport: ClientTransport | null = null;
  #preferred: RelayTransportKind;
  #nickname: string;
  #token: string | undefined;
  #members = new Map<string, RelayMember>();
  #state: RelayNodeState = "connecting";
  /** This node's id for its whole life: what the relay and the receivers know its messages by. */
  readonly #id = newJoinToken();
  #seq = 0;
  /** Messages the relay has not acknowledged yet, oldest first: resent after a reconnect. */
  #unacked: (NodeMessageFrame & { seq: number })[] = [];
  #flushWaiters: (() => void)[] = [];
  /** Whether the relay acknowledges messages and keeps history (it says so in its welcome). */
  #reliable = false;
  /** Where this node is in its room's history. */
  #position: RecoverPosition | undefined;
  /** The last message number seen per sender id, oldest sender first. */
  #seen = new Map<string, number>();
  #events: RelayEvent[] = [];
  #eventsHead = 0;
  /**
   * The readers waiting for an event, all woken by one: with a single
   * waiter, a second reader took the first one's place, and the first
   * waited for ever.
   */
  #eventWaiters = new Set<() => void>();
  #lastHeard = performance.now();
  /** When the current (or last) connection was welcomed. */
  #welcomedAt = -Infinity;
  /**
   * Connections in a row the relay closed soon after their welcome: the
   * backoff of the next reconnect starts there, so a relay that welcomes and
   * then drops every node (its cluster store is down, say) is not redialed
   * at once, for ever, by all of them.
   */
  #shortLived = 0;
  /** Since when messages sent on this link wait for an ack without progress (null: none wait). */
  #waitingSince: number | null = null;
  /**
   * The first `#sent` of `#unacked` went out on this connection; the rest
   * wait for the pace the relay allows (its welcome's `rate`), so that a
   * backlog (messages sent while away, say) is not refused `rate-limited`.
   */
  #sent = 0;
  /** Messages per second the relay takes (Infinity: it did not say). */
  #rate = Infinity;
  /** Events dropped for a reader too far behind; whether it is behind now (said once). */
  #droppedEvents = 0;
  #behind = false;
  /** The relay's frame limit, from its last welcome (older relays say none). */
  #maxMessageBytes: number | undefined;
  /** What this node may send now: a bucket of `#rate`, half the relay's, for slack. */
  #tokens = Infinity;
  #refilled = 0;
  #paceTimer: ReturnType<typeof setTimeout> | undefined;
  /** When the node pinged a relay that was leaving its messages unacknowledged (null: none out). */
  #probedAt: number | null = null;
  #watchdog: ReturnType<typeof setInterval> | undefined;
  #keepAlive = 1000;
  #closed = false;
  /** Aborted by close: a reconnect waiting out its backoff stops at once. */
  #closing = new AbortController();
  #reconnecting: Promise<void> | null = null;
  #pipes: NodePipes;
  /**
   * The link's lines that a relay can make come as fast as it likes (lost,
   * a bad frame; and back, at each reconnect): a line per kind and interval.
   */
  #linkLogs = new LogLimiter((template, properties) => log.warn(template, properties));
  /** The link back after a loss: as many as the losses, so as few lines. */
  #backLogs = new LogLimiter((template, properties) => log.info(template, properties));
  /** Sessions over this node's pipes (connectTo, listen), ended with it. */
  #sessions = new Set<ImmortalConn>();
  /** Listeners over this node's pipes (`listen`), closed with it. */
  #listeners = new Set<ImmortalListener>();
  #session: string;
  /** Every change of state or of members: pipe dials wait for the node or a peer on it. */
  #changes = new Changes();
  /** Welcomes so far: which connection to the relay is the node's now. */
  #generation = 0;
  /** Member lists heard so far (welcomes and joins): is what the node knows newer than before? */
  #memberNews = 0;

  private constructor(url: URL, options: RelayNodeOptions) {
    this.#options = options;
    this.#nickname = options.nickname;
    this.#preferred = options.transport === "http" ? "http" : "websocket";
    const client = options.proxy || options.caCerts
      ? Deno.createHttpClient({
        ...(options.proxy ? { proxy: { url: options.proxy } } : {}),
        ...(options.caCerts ? { caCerts: options.caCerts } : {}),
      })
      : undefined;
    this.#settings = {
      base: url,
      secret: options.secret,
      client,
      proxy: options.proxy ? new URL(options.proxy) : undefined,
      timeout: options.connectTimeout ?? 10_000,
    };
    this.#session = options.session;
    this.#pipes = new NodePipes({
      base: url,
      client,
      identity: () =>
        this.#state === "connected" && this.#token !== undefined
          ? { session: this.#session, nickname: this.#nickname, token: this.#token }
          : null,
      generation: () => this.#generation,
      closed: () => this.#closed,
      nextChange: (signal, ms) => this.#changes.next(signal, ms),
      hasMember: (nickname) => this.#members.has(nickname),
      memberNews: () => this.#memberNews,
      transport: () => this.transport,
      refuse: (id, reason) => this.#transport?.send({ t: "pipe-refuse", id, reason }),
    });
  }

  /**
   * Joins a session on the relay at `url` (`http:` or `https:`). Rejects with
   * a {@linkcode RelayRefusedError} when the relay refuses (wrong secret, bad
   * nickname, full), or with a {@linkcode RelayConnectError} once the retries
   * are spent: its `code` says why (`unreachable`, `tls`, `not-a-relay`,
   * `timeout`, `broken`) and its `cause` is the platform's error (a missing
   * net permission is `unreachable` at once, without retries, and says so).
   * Settings that are wrong throw a `TypeError` or `RangeError` naming them,
   * before anything is dialed.
   */
  static async connect(url: string | URL, options: RelayNodeOptions): Promise<RelayNode> {
    const base = new URL(url);
    if (base.protocol !== "http:" && base.protocol !== "https:") {
      throw new TypeError(`the relay URL must be http: or https:, got ${base.protocol}`);
    }
    checkOptions(options);
    const signal = options.signal;
    signal?.throwIfAborted();
    const node = new RelayNode(base, options);
    const retries = options.retries ?? 3;
    let lastError: unknown;
    for (let attempt = 0; attempt < Math.max(1, retries); attempt++) {
      try {
        await node.#open(signal);
        // Given up just as the welcome came: not joined after all (close()
        // lets the HTTP client go too, so not again below).
        if (signal?.aborted) {
          await node.close();
          throw signal.reason;
        }
        node.#watchdog = setInterval(() => node.#checkAlive(), 250);
        return node;
      } catch (error) {
        lastError = error;
        if (signal?.aborted || final(error)) break;
        if (attempt + 1 < retries) await delay(node.#backoff(attempt + 1), signal);
      }
    }
    if (!node.#closed) node.#settings.client?.close();
    if (signal?.aborted) throw signal.reason;
    throw isNotCapable(lastError) ? noPermission(base, lastError) : lastError;
  }

  /** The nickname the relay assigned (may differ from the wanted one). */
  get nickname(): string {
    return this.#nickname;
  }

  /** Current connection state. */
  get state(): RelayNodeState {
    return this.#state;
  }

  /** The transport in use, or `null` while disconnected. */
  get transport(): RelayTransportKind | null {
    return this.#transport?.kind ?? null;
  }

  /** The other nodes of the session, as last heard. */
  get members(): RelayMember[] {
    return [...this.#members.values()];
  }

  /**
   * Events, in order, for one reader: readers at once share them, each
   * event going to one of them. A reader that stops (a `break`) leaves the
   * rest to the next. Ends after {@linkcode RelayNode.close}.
   */
  get events(): AsyncIterable<RelayEvent> {
    return { [Symbol.asyncIterator]: () => this.#iterate() };
  }

  /**
   * Sends `text` to every other node of the session (that may hear it), and
   * returns its number (`seq`): an `error` event naming it says it went
   * nowhere (`alone`: nobody else was there) or was refused. Sent messages
   * survive reconnects, each delivered once (see {@linkcode RelayNode.flush}).
   * Throws an {@linkcode ImmortalError} of code `closed` once the node is
   * closed, a `RangeError` for a message larger than the relay takes, and
   * an `Error` while `maxUnacked` messages wait for the relay (send again
   * after {@linkcode RelayNode.flush}).
   */
  send(text: string): number {
    return this.#post({ t: "msg", text: messageText(text) });
  }

  /** Sends `text` to one node; returns its number, as {@linkcode RelayNode.send} does. */
  sendTo(nickname: string, text: string): number {
    return this.#post({ t: "msg", to: nickname, text: messageText(text) });
  }

  /** Sends numbers (finite) to everyone, or to one node when `to` is given; returns its number. */
  sendNumbers(numbers: readonly number[], to?: string): number {
    if (!numbers.every((n) => typeof n === "number" && Number.isFinite(n))) {
      throw new TypeError("sendNumbers takes finite numbers only");
    }
    return this.#post({ t: "msg", ...(to === undefined ? {} : { to }), numbers: [...numbers] });
  }

  /**
   * Events dropped, oldest first, because the `events` reader fell more
   * than `maxBufferedEvents` behind (a warning is logged each time it does).
   */
  get droppedEvents(): number {
    return this.#droppedEvents;
  }

  /** Messages sent that the relay has not acknowledged yet. */
  get unacked(): number {
    return this.#unacked.length;
  }

  /**
   * Resolves once the relay has taken every message sent so far (through
   * reconnects, if need be); rejects with an {@linkcode ImmortalError} of
   * code `closed` if the node closes first. Close after it to be sure that
   * nothing sent is left behind.
   */
  async flush(): Promise<void> {
    // Only what was sent so far: a node that keeps sending (paced to the
    // relay's rate) may never have nothing unacknowledged.
    const upTo = this.#seq;
    while (this.#unacked.length > 0 && this.#unacked[0].seq <= upTo) {
      if (this.#closed) {
        throw new ImmortalError("closed", `the node closed with ${this.#unacked.length} unsent`);
      }
      await new Promise<void>((resolve) => this.#flushWaiters.push(resolve));
    }
  }

  /**
   * A {@linkcode Dialer} of pipes through the relay to the node `nickname` of
   * this session: each call opens a new pipe. For `connect({ dialer })`, a
   * tunnel client, or anything that runs immortal sessions over links. A
   * dial while this node is rejoining the relay (or has just lost it), or
   * while a node it reached before is away, waits for them (within limits,
   * PROTOCOL.md 2.20), so a session resumes the moment both are back; it
   * rejects with an `ImmortalError` `closed` if this node closes first.
   *
   * Until one of its pipes has linked, a refusal that stands (the node
   * accepts no pipes, or not ours) rejects as an `ImmortalError` `refused`
   * (the relay's `RelayRefusedError` is its `cause`): a session being opened
   * fails at once rather than wait out its connect deadline. After that, a
   * refusal is a `RelayRefusedError`, for the session to retry (the peer may
   * be restarting). This holds per dialer: take a new one for each session.
   *
   * A pipe carries bytes as they are: the relay can read and change them. So
   * `connect` (and a tunnel client) over this dialer needs a `key` (else a
   * `TypeError`) and encrypts the session unless given `encrypt: false`;
   * bytes of your own protocol on a raw pipe are yours to protect.
   */
  pipeDialer(nickname: string): Dialer {
    return markThroughRelay(this.#pipes.dialer(nickname));
  }

  /**
   * Opens an immortal session to the node `nickname` of this session, over
   * pipes through the relay: when a pipe breaks (even when the relay
   * restarts), the session resumes over a new one, nothing lost. That node
   * must accept pipes ({@linkcode RelayNode.listen}). The session is
   * always encrypted end to end (the relay sees only ciphertext), and needs
   * the `key` both nodes share: `encrypt` may be left out or `true`, and
   * `encrypt: false` throws a `TypeError` (so does a missing key). Rejects
   * when the relay refuses (no such node, it refuses the pipe) or the key is
   * wrong.
   *
   * @example Two nodes, one stream, through the relay
   * ```ts
   * import { RelayNode, serveRelay } from "@immortal/sockets";
   *
   * await using relay = serveRelay({ hostname: "127.0.0.1", port: 0, onListen() {} });
   * const url = `http://127.0.0.1:${relay.addr.port}`;
   * await using lab = await RelayNode.connect(url, { session: "s", nickname: "lab" });
   * using listener = lab.listen({ key: "k" });
   * await using laptop = await RelayNode.connect(url, { session: "s", nickname: "laptop" });
   * await using conn = await laptop.connectTo("lab", { key: "k" });
   * await using server = await listener.accept();
   * await conn.write(new TextEncoder().encode("through the relay"));
   * const buffer = new Uint8Array(64);
   * const n = await server.read(buffer); // "through the relay"
   * ```
   */
  async connectTo(
    nickname: string,
    options: Omit<ConnectOptions, "dialer" | "hostname" | "port" | "tls" | "encrypt"> & {
      key: string | Uint8Array;
      encrypt?: true;
    },
  ): Promise<ImmortalConn> {
    requireKey(options.key);
    // The relay would say it knows no such node: it pairs a node with another.
    if (nickname === this.#nickname) {
      throw new ImmortalError("refused", `"${nickname}" is this node: a pipe joins two nodes`);
    }
    const encrypt = relayEncrypt(options.encrypt);
    const conn = await connect({ ...options, encrypt, dialer: this.pipeDialer(nickname) });
    return this.#track(conn);
  }

  /**
   * `conn`, kept until it ends: a node that closes ends its sessions (their
   * pipes go through it: kept open, they went on after the node left, and
   * the peer waited out its resume timeout once they broke).
   */
  #track(conn: ImmortalConn): ImmortalConn {
    if (this.#closed) {
      // Opened as the node closed: ended with the others, and said so.
      conn.close(NODE_CLOSED);
      throw new ImmortalError("closed", NODE_CLOSED);
    }
    this.#sessions.add(conn);
    conn.closed.catch(() => {}).finally(() => this.#sessions.delete(conn));
    return conn;
  }

  /**
   * Accepts pipes other nodes of this session open to this one, as raw
   * links (for your own protocol over them; most want
   * {@linkcode RelayNode.listen}); `accepts` picks which nodes may (every
   * node, if left out), the others' pipes are refused. One acceptor per node at a time; closing it
   * stops accepting pipes.
   *
   * As for {@linkcode RelayNode.pipeDialer}: the relay can read and change
   * what a pipe carries, so `listen` (and a tunnel server) over this
   * acceptor needs a `key` and takes encrypted sessions unless given
   * `encrypt: false`.
   */
  pipeAcceptor(accepts: (nickname: string) => boolean = () => true): Acceptor<Deno.NetAddr> {
    return this.#pipes.listen(accepts); // `relayed`: sessions over it need a key
  }

  /**
   * Accepts immortal sessions over pipes other nodes of this session open to
   * this one ({@linkcode RelayNode.connectTo}), always encrypted end to end
   * under the shared `key` (only encrypted sessions are taken): `encrypt`
   * may be left out or `true`, and `encrypt: false` throws a `TypeError` (so
   * does a missing key). `accepts` picks which nodes may (all, by default),
   * the others' pipes are refused. One listener per node at a time; closing
   * it stops accepting pipes.
   */
  listen(
    options: Omit<ListenOptions, "acceptor" | "hostname" | "port" | "tls" | "encrypt"> & {
      key: string | Uint8Array;
      encrypt?: true;
      accepts?: (nickname: string) => boolean;
    },
  ): ImmortalListener {
    requireKey(options.key);
    const encrypt = relayEncrypt(options.encrypt);
    const { accepts = () => true, ...rest } = options;
    const inner = listen({ ...rest, encrypt, acceptor: this.pipeAcceptor(accepts) });
    this.#listeners.add(inner);
    // The same listener, whose sessions the node ends when it closes.
    const track = (conn: ImmortalConn) => this.#track(conn);
    return {
      get addr() {
        return inner.addr;
      },
      get sessionCount() {
        return inner.sessionCount;
      },
      get stats() {
        return inner.stats;
      },
      accept: async () => track(await inner.accept()),
      async *[Symbol.asyncIterator]() {
        for await (const conn of inner) yield track(conn);
      },
      close: () => {
        inner.close();
        this.#listeners.delete(inner);
      },
      [Symbol.dispose]() {
        this.close();
      },
    };
  }

  /**
   * Leaves the session (the others hear "left"), ends the sessions over its
   * pipes (from `connectTo` and `listen`: their peers are told "the relay
   * node closed"), and ends `events`.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Its sessions first: each tells its peer why, over its pipe; then the
    // listeners, with the sessions they have not handed out yet.
    for (const conn of this.#sessions) conn.close(NODE_CLOSED);
    for (const listener of this.#listeners) listener.close();
    this.#pipes.close();
    this.#closing.abort();
    clearInterval(this.#watchdog);
    clearTimeout(this.#paceTimer);
    this.#paceTimer = undefined;
    const transport = this.#transport;
    this.#transport = null;
    await transport?.close();
    this.#setState("closed");
    await this.#reconnecting?.catch(() => {});
    this.#linkLogs.flush();
    this.#backLogs.flush();
    this.#settings.client?.close();
    this.#wake();
    this.#wakeFlush();
  }

  /** Same as {@linkcode RelayNode.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #post(frame: NodeMessageFrame): number {
    if (this.#closed) throw new ImmortalError("closed", "the node is closed");
    // Kept until acknowledged (for a relay that does not acknowledge: until sent), within reason.
    const max = this.#options.maxUnacked ?? 1024;
    if (this.#unacked.length >= max) {
      throw new Error(
        `${max} messages wait for the relay already (${
          this.#transport ? "sent at its pace, or not acknowledged yet" : "not connected"
        })`,
      );
    }
    const numbered = { ...frame, seq: this.#seq + 1 };
    // One the relay would refuse (without its number, so it would wait in
    // `unacked` and `flush` for ever) is refused here, before it has one.
    const limit = this.#maxMessageBytes;
    // Encoded to be measured (as the relay measures it) only when it may be
    // over: every message is encoded again as it goes out.
    if (limit !== undefined && frameBytesBound(numbered) > limit) {
      const text = encodeFrame(numbered);
      if (frameTooLarge(text, limit)) {
        throw new RangeError(
          `the message is ${
            utf8.encode(text).length
          } bytes as a frame; the relay takes at most ${limit}`,
        );
      }
    }
    this.#seq++;
    if (this.#transport && !this.#reliable) {
      // A relay that acknowledges nothing: sent is all we can know.
      this.#transport.send(numbered);
      return numbered.seq;
    }
    if (this.#unacked.length === 0) this.#waitingSince = performance.now();
    this.#unacked.push(numbered);
    this.#transmit();
    return numbered.seq;
  }

  /**
   * Sends what waits in `#unacked`, in order, as fast as the relay takes it:
   * at once while the bucket allows, then as it refills.
   */
  #transmit(): void {
    const transport = this.#transport;
    if (transport === null || this.#paceTimer !== undefined) return;
    if (this.#rate === Infinity) {
      // A relay that named no rate: everything goes at once.
      while (this.#sent < this.#unacked.length) transport.send(this.#unacked[this.#sent++]);
      return;
    }
    const now = performance.now();
    // At least one message fits, whatever the rate (a relay may allow less than one a second).
    this.#tokens = Math.min(
      Math.max(1, this.#rate),
      this.#tokens + (now - this.#refilled) * this.#rate / 1000,
    );
    this.#refilled = now;
    while (this.#sent < this.#unacked.length && this.#tokens >= 1) {
      transport.send(this.#unacked[this.#sent++]);
      this.#tokens--;
    }
    if (this.#sent < this.#unacked.length) {
      // Capped: a relay that named a tiny rate would otherwise get a timer
      // that fires at once, over and over.
      const wait = Math.min(MAX_TIMER_MS, Math.ceil(((1 - this.#tokens) / this.#rate) * 1000));
      this.#paceTimer = setTimeout(() => {
        this.#paceTimer = undefined;
        this.#transmit();
      }, wait);
    }
  }

  /** The relay has taken every message up to `seq`. */
  #acked(seq: number): void {
    let taken = 0;
    while (taken < this.#unacked.length && this.#unacked[taken].seq <= seq) taken++;
    if (taken === 0) return;
    this.#unacked.splice(0, taken);
    this.#sent = Math.max(0, this.#sent - taken);
    this.#waitingSince = this.#unacked.length === 0 ? null : performance.now();
    this.#wakeFlush();
  }

  #wakeFlush(): void {
    for (const wake of this.#flushWaiters.splice(0)) wake();
  }

  /** The wait before attempt number `attempt` (0-based; 0 waits nothing). */
  #backoff(attempt: number): number {
    const { initial = 250, max = 5000 } = this.#options.backoff ?? {};
    return backoffDelay(attempt, initial, max);
  }

  /** Joins the relay once, over each transport in turn; `signal` gives the dial up. */
  async #open(signal?: AbortSignal): Promise<void> {
    const hello: HelloFrame = {
      t: "hello",
      session: this.#options.session,
      nickname: this.#nickname,
      role: this.#options.role ?? "peer",
      secret: this.#options.secret,
      token: this.#token,
      id: this.#id,
      claim: this.#options.claim,
      recover: this.#position,
    };
    const hooks = {
      onFrame: (frame: RelayFrame) => this.#onFrame(frame),
      // Its reason may quote the frame (an unknown type): the relay's text.
      onBadFrame: (reason: string) =>
        this.#linkLogs.event("bad-frame", "Relay sent a frame this node ignores: {reason}", {
          reason: peerText(reason),
        }),
      onClose: (reason: string, code?: number) => {
        if (code === REPLACED) return this.#replaced(reason);
        this.#lost(reason, code);
      },
    };
    const order: RelayTransportKind[] = this.#options.transport === "auto" ||
        this.#options.transport === undefined
      ? [this.#preferred, this.#preferred === "websocket" ? "http" : "websocket"]
      : [this.#options.transport];
    this.#setState("connecting");
    const failures: { kind: RelayTransportKind; error: unknown }[] = [];
    for (const kind of order) {
      try {
        const { transport, welcome } = await TRANSPORTS[kind](
          this.#settings,
          hello,
          hooks,
          signal,
        );
        if (this.#closed) {
          await transport.close();
          return;
        }
        if (welcome.members.length > MAX_MEMBERS) {
          // Not adopted: the dial fails as one broken before its welcome, retried with backoff.
          await transport.close(false);
          throw new RelayConnectError(
            "broken",
            `the relay's welcome lists ${welcome.members.length} members, more than the ` +
              `${MAX_MEMBERS} a node takes: it is broken`,
          );
        }
        // A fallback is news (a proxy in the way, say); when every transport
        // fails, the caller tells the most telling failure, once.
        for (const failed of failures) {
          log.info("Relay {kind} transport failed: {reason}; using {used}", {
            kind: failed.kind,
            reason: errorMessage(failed.error),
            used: kind,
          });
        }
        this.#transport = transport;
        this.#preferred = kind;
        this.#welcome(welcome);
        return;
      } catch (error) {
        if (error instanceof RelayRefusedError || final(error) || signal?.aborted) throw error;
        failures.push({ kind, error });
        log.debug("Relay {kind} transport failed: {reason}", { kind, reason: errorMessage(error) });
      }
    }
    throw mostTelling(failures.map((failed) => failed.error));
  }

  #welcome(welcome: WelcomeFrame): void {
    // Nicknames are the relay's text, and end up in logs and errors: a relay's
    // own rules keep them printable, so this changes none that a relay gave.
    this.#nickname = peerText(welcome.nickname);
    this.#token = welcome.token;
    this.#keepAlive = welcome.keepAlive;
    this.#lastHeard = this.#welcomedAt = performance.now();
    this.#members.clear();
    for (const { nickname, role } of welcome.members) {
      const shown = peerText(nickname);
      this.#members.set(shown, { nickname: shown, role });
    }
    this.#memberNews++;
    this.#emit({ type: "members", members: this.members });
    this.#reliable = welcome.epoch !== undefined;
    if (this.#reliable) {
      // Recovered: the messages missed follow this welcome, and move the position on.
      if (welcome.recovered !== true) {
        // A node that had a position and is not given what followed it must hear so.
        if (this.#position) this.#emit({ type: "missed", reason: welcome.missed ?? "epoch" });
        this.#position = { epoch: welcome.epoch!, offset: welcome.offset ?? 0 };
      }
      this.#acked(welcome.acked ?? 0);
    }
    this.#setState("connected");
    this.#waitingSince = this.#reliable && this.#unacked.length > 0 ? performance.now() : null;
    this.#probedAt = null;
    // A new connection: everything unacknowledged goes again, at the relay's
    // pace. The bucket is not refilled for it: the relay keeps a member's
    // allowance across its reconnects, so a node that took its own back at
    // every welcome would overrun it after a few quick ones.
    this.#maxMessageBytes = welcome.maxMessageBytes;
    const rate = welcome.rate ?? Infinity;
    if (rate !== this.#rate) {
      this.#rate = rate;
      this.#tokens = Math.max(1, rate);
      this.#refilled = performance.now();
    }
    this.#sent = 0;
    clearTimeout(this.#paceTimer);
    this.#paceTimer = undefined;
    if (this.#reliable) this.#transmit();
    else {
      for (const frame of this.#unacked) this.#transport!.send(frame);
      this.#acked(this.#seq);
    }
  }

  /** Whether `frame` is new to this node (not a replay or resend of one it has). */
  #fresh(frame: RelayMessageFrame): boolean {
    const position = this.#position;
    if (frame.offset !== undefined && position !== undefined) {
      if (frame.offset <= position.offset) return false;
      position.offset = frame.offset;
    }
    // Across a relay restart, offsets start again: the sender's own numbers still tell.
    if (frame.id !== undefined && frame.seq !== undefined) {
      const last = this.#seen.get(frame.id);
      if (last !== undefined && frame.seq <= last) return false;
      this.#seen.delete(frame.id);
      this.#seen.set(frame.id, frame.seq);
      if (this.#seen.size > MAX_SENDERS_REMEMBERED) {
        this.#seen.delete(this.#seen.keys().next().value!);
      }
    }
    return true;
  }

  #onFrame(frame: RelayFrame): void {
    this.#lastHeard = performance.now();
    switch (frame.t) {
      case "ping":
        this.#transport?.send({ t: "pong" });
        return;
      case "msg": {
        if (!this.#fresh(frame)) return;
        // The text is the sender's content (lines and tabs included), not the relay's word.
        const base = {
          from: peerText(frame.from),
          ...(frame.to ? { to: peerText(frame.to) } : {}),
        };
        if (frame.numbers !== undefined) {
          this.#emit({ type: "numbers", ...base, numbers: frame.numbers });
        } else this.#emit({ type: "message", ...base, text: frame.text });
        return;
      }
      case "join": {
        const member = { nickname: peerText(frame.nickname), role: frame.role };
        if (this.#members.size >= MAX_MEMBERS && !this.#members.has(member.nickname)) {
          this.#drop(
            `the relay announced more than ${MAX_MEMBERS} members, more than any session it ` +
              "allows: it is broken",
            true,
          );
          return;
        }
        this.#members.set(member.nickname, member);
        this.#memberNews++;
        this.#emit({ type: "join", ...member });
        this.#changes.notify();
        return;
      }
      case "leave": {
        const nickname = peerText(frame.nickname);
        this.#members.delete(nickname);
        this.#emit({ type: "leave", nickname, reason: frame.reason });
        return;
      }
      case "ack":
        this.#acked(frame.seq);
        return;
      case "error":
        if (frame.seq !== undefined) {
          // Taken, and refused or dropped: it is not resent.
          const index = this.#unacked.findIndex((m) => m.seq === frame.seq);
          if (index >= 0) {
            this.#unacked.splice(index, 1);
            if (index < this.#sent) this.#sent--;
          }
          if (this.#unacked.length === 0) this.#waitingSince = null;
          this.#wakeFlush();
        }
        this.#emit({
          type: "error",
          code: frame.code,
          message: peerText(frame.message),
          ...(frame.seq === undefined ? {} : { seq: frame.seq }),
        });
        return;
      case "pipe":
        // Its `from` names the pipe's peer in log lines.
        this.#pipes.offered({ ...frame, from: peerText(frame.from) });
        return;
    }
  }

  /** The relay has been silent too long: the link is dead even if TCP has not noticed. */
  #checkAlive(): void {
    if (!this.#transport) return;
    const now = performance.now();
    const silence = now - this.#lastHeard;
    let why: string | undefined;
    if (silence > this.#keepAlive * FADE_BEATS) {
      why = `nothing heard from the relay for ${this.#keepAlive * FADE_BEATS} ms`;
    } else if (this.#probedAt !== null) {
      if (this.#lastHeard > this.#probedAt) this.#probedAt = null; // answered: alive, only slow
      else if (now - this.#probedAt > PROBE_GRACE_MS) {
        why = `${this.#unacked.length} messages unacknowledged, and no answer to a ping ` +
          `within ${PROBE_GRACE_MS} ms`;
      }
    } else if (
      this.#unacked.length > 0 && this.#waitingSince !== null &&
      now - this.#waitingSince > ACK_SILENCE_MS &&
      silence > ACK_SILENCE_MS
    ) {
      this.#probedAt = now;
      this.#transport.send({ t: "ping" });
    }
    if (why === undefined) return;
    this.#drop(why, false);
  }

  /**
   * Drops the current connection and reconnects: `why` is logged. `broken`
   * says the relay sent what no relay does: that counts as the relay's close.
   */
  #drop(why: string, broken: boolean): void {
    const transport = this.#transport;
    if (transport === null) return;
    this.#transport = null;
    this.#waitingSince = null;
    this.#probedAt = null;
    // No bye: the node comes back, and its nickname must wait for it (a bye
    // that gets through a half-dead link would free it for anyone).
    transport.close(false).catch(() => {});
    this.#lost(why, undefined, broken);
  }

  /**
   * The relay handed this node's membership to a newer connection showing
   * its token (4409): another process is this node now. Reconnecting would
   * take it back, and that one would take it back again, for ever.
   */
  #replaced(reason: string): void {
    if (this.#closed) return;
    this.#transport = null;
    this.#emit({
      type: "error",
      code: "replaced",
      message: `${reason}: another connection holds this node's token; not reconnecting`,
    });
    this.close();
  }

  /**
   * The connection ended: `code` is the relay's close code, if it closed
   * it; `broken`, that the node dropped it for what the relay sent.
   */
  #lost(reason: string, code?: number, broken = false): void {
    if (this.#closed || this.#reconnecting) return;
    this.#transport = null;
    clearTimeout(this.#paceTimer);
    this.#paceTimer = undefined;
    // One line per interval: a relay that closes every connection right
    // after its welcome must not write hundreds of lines a second, even
    // while the backoff grows.
    this.#linkLogs.event("lost", "Relay link lost: {reason}", { reason });
    this.#setState("disconnected", reason);
    // Every connection that ends soon after its welcome counts, whoever ended
    // it: a relay that welcomes and then closes (1000 as well as 4xxx), or
    // breaks, every connection was redialed at once, some 300 times a second.
    const byRelay = broken || (code !== undefined && code >= 4000 && code < 5000);
    const lived = performance.now() - this.#welcomedAt;
    this.#shortLived = lived < (byRelay ? STABLE_CONNECTION_MS : MOMENTARY_CONNECTION_MS)
      ? this.#shortLived + 1
      : 0;
    // Closed by the relay itself (4xxx, or broken): waited for from the first
    // time. Otherwise one such end is still redialed at once: a link cut
    // under the node (a reset, a relay restart) is a blip, which the others
    // must not see (2.11); twice in a row is no chance, and backs off.
    // A cut is never waited out past 500 ms (the third step): the redial must
    // still come within the blip grace (2.5 s), which the others do not see.
    const first = byRelay ? this.#shortLived : Math.min(2, Math.max(0, this.#shortLived - 1));
    this.#reconnecting = this.#reconnect(first)
      .finally(() => this.#reconnecting = null);
  }

  /** Reconnects, from attempt number `first` of the backoff (0 waits nothing). */
  async #reconnect(first: number): Promise<void> {
    const since = performance.now();
    // A relay down for minutes is tried again and again: a line per interval
    // says it still is, not a line per attempt.
    const failing = new LogLimiter((template, properties) => log.info(template, properties));
    let attempts = 0;
    try {
      await this.#redial(first, (error) => {
        attempts++;
        // By kind: a relay that answers otherwise (TLS, a proxy's page) is news.
        failing.event(
          error instanceof RelayConnectError ? error.code : "other",
          "Relay link not back yet: {reason}; trying again",
          { reason: errorMessage(error) },
        );
      });
    } finally {
      failing.flush();
    }
    if (this.#transport === null) return;
    const seconds = ((performance.now() - since) / 1000).toFixed(1);
    const tries = attempts === 0 ? "" : ` and ${attempts + 1} attempts`;
    this.#backLogs.event(
      "back",
      `Relay link back as {nickname} via {transport} after {downSeconds} s${tries}`,
      {
        nickname: this.#nickname,
        transport: this.#transport.kind,
        downSeconds: seconds,
      },
    );
  }

  /** Dials until linked or closed; `failed` hears each attempt that failed but may be retried. */
  async #redial(first: number, failed: (error: unknown) => void): Promise<void> {
    for (let attempt = first; !this.#closed; attempt++) {
      if (!await delay(this.#backoff(attempt), this.#closing.signal)) return;
      try {
        await this.#open();
        return;
      } catch (error) {
        if (
          error instanceof RelayRefusedError && error.code === "bad-request" &&
          this.#nickname !== this.#options.nickname
        ) {
          // The suffixed nickname the relay gave is no longer this node's (the
          // relay restarted and another node has it, or its reservation ran
          // out): ask for the one it wanted, as a new member. Its id and
          // position still apply, so nothing it sent or missed is lost.
          log.info("Nickname {nickname} is not this node's any more: asking for {wanted}", {
            nickname: this.#nickname,
            wanted: this.#options.nickname,
          });
          this.#nickname = this.#options.nickname;
          this.#token = undefined;
          continue;
        }
        if (final(error)) {
          const code = error instanceof RelayRefusedError ? error.code : "unauthorized";
          this.#emit({ type: "error", code, message: errorMessage(error) });
          await this.close();
          return;
        }
        failed(error);
        this.#setState("disconnected", errorMessage(error));
      }
    }
  }

  #setState(state: RelayNodeState, reason?: string): void {
    if (this.#state === state && state !== "disconnected") return;
    this.#state = state;
    if (state === "connected") this.#generation++;
    this.#changes.notify();
    this.#emit({
      type: "state",
      state,
      ...(this.#transport ? { transport: this.#transport.kind } : {}),
      ...(reason ? { reason } : {}),
    });
  }

  #emit(event: RelayEvent): void {
    this.#events.push(event);
    const max = this.#options.maxBufferedEvents ?? 10_000;
    // The oldest unread events go first when a reader falls this far behind:
    // counted, and said once each time it falls behind (not per event).
    if (this.#events.length - this.#eventsHead > max) {
      const dropped = this.#events.length - max - this.#eventsHead;
      this.#eventsHead += dropped;
      this.#droppedEvents += dropped;
      if (!this.#behind) {
        this.#behind = true;
        log.warn(
          "Node {nickname}: its events reader is more than {max} events behind; the oldest are dropped (see droppedEvents)",
          { nickname: this.#nickname, max },
        );
      }
    }
    // Compact now and then, so a reader that never catches up does not keep read events alive.
    if (this.#eventsHead > 4096 && this.#eventsHead * 2 > this.#events.length) {
      this.#events = this.#events.slice(this.#eventsHead);
      this.#eventsHead = 0;
    }
    this.#wake();
  }

  #wake(): void {
    const waiters = [...this.#eventWaiters];
    this.#eventWaiters.clear();
    for (const wake of waiters) wake();
  }

  async *#iterate(): AsyncGenerator<RelayEvent> {
    for (;;) {
      while (this.#eventsHead < this.#events.length) {
        const event = this.#events[this.#eventsHead++];
        if (this.#eventsHead === this.#events.length) this.#behind = false; // caught up
        // Read events are dropped in one go, not shifted one by one.
        if (this.#eventsHead === this.#events.length) {
          this.#events = [];
          this.#eventsHead = 0;
        }
        yield event;
      }
      if (this.#closed) return;
      await new Promise<void>((resolve) => this.#eventWaiters.add(resolve));
    }
  }
}
