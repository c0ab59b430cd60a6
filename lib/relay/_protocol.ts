/**
 * The relay's wire protocol: JSON objects, one per WebSocket text message or
 * per Server-Sent Event (and per element of a POSTed array upstream). This
 * file names every frame and error code; `_parse.ts` turns wire JSON into
 * these types, and {@linkcode encodeFrame} is the one way back to JSON.
 *
 * A relay "session" id names a room: the group of nodes that hear each other.
 * The wire keeps the field name `session` for compatibility with TcpJLib.
 *
 * @module
 */

/**
 * What a node is in its room. `peer` nodes hear everyone; `agent` nodes
 * talk to bridges only and hear only bridges; a `bridge` serves many agents
 * (the old TcpBridge/TcpAgent pair).
 */
export type RelayRole = "peer" | "bridge" | "agent";

/** Every role, for validation. */
export const ROLES: readonly RelayRole[] = ["peer", "bridge", "agent"];

/** A node as the others see it. */
export interface RelayMember {
  /** The nickname the relay assigned (unique in the room). */
  nickname: string;
  /** Its role. */
  role: RelayRole;
}

/**
 * Every error code a relay sends, in an `error` frame or in the JSON body of
 * a refused HTTP request.
 *
 * - `unauthorized`: missing or wrong relay secret.
 * - `bad-request`: a hello with a bad session id, nickname or role.
 * - `bad-hello`: the first frame was not a hello.
 * - `full`: the relay's room limit or the room's node limit is reached.
 * - `auth-timeout`: no hello within the relay's auth deadline.
 * - `bad-frame`: not a JSON object frame, or an unknown frame type.
 * - `bad-message`: a message without valid text or numbers, or a bad `to`.
 * - `too-large`: a frame or body over the relay's size limit.
 * - `rate-limited`: more messages per second than the relay allows.
 * - `no-such-node`: a directed message to a nickname not in the room.
 * - `not-allowed`: an agent talking to something other than a bridge.
 * - `no-such-stream`: a POST for an unknown or closed HTTP stream.
 * - `upgrade-required`: a plain request to the WebSocket endpoint.
 * - `not-found`, `method-not-allowed`: an unknown path, or a wrong method.
 * - `pipe-refused`: the node a pipe was for refused it (or accepts none).
 * - `pipe-timeout`: the node a pipe was for did not answer in time.
 * - `alone`: a numbered message nobody else in the session could hear,
 *   dropped (TcpJLib's rule); the frame names its `seq`.
 * - `unavailable`: the relay cannot reach its cluster's store (Redis) right
 *   now; try again (our node does, by itself).
 */
export type RelayErrorCode =
  | "unauthorized"
  | "bad-request"
  | "bad-hello"
  | "full"
  | "auth-timeout"
  | "bad-frame"
  | "bad-message"
  | "too-large"
  | "rate-limited"
  | "no-such-node"
  | "not-allowed"
  | "no-such-stream"
  | "upgrade-required"
  | "not-found"
  | "method-not-allowed"
  | "pipe-refused"
  | "pipe-timeout"
  | "alone"
  | "unavailable";

/** Every error code, for validating what a relay sends. */
export const ERROR_CODES: readonly RelayErrorCode[] = [
  "unauthorized",
  "bad-request",
  "bad-hello",
  "full",
  "auth-timeout",
  "bad-frame",
  "bad-message",
  "too-large",
  "rate-limited",
  "no-such-node",
  "not-allowed",
  "no-such-stream",
  "upgrade-required",
  "not-found",
  "method-not-allowed",
  "pipe-refused",
  "pipe-timeout",
  "alone",
  "unavailable",
];

/** Why a wire value is not an acceptable frame: the code the relay answers with, and a sentence. */
export interface FrameProblem {
  /** What the relay answers. */
  code: RelayErrorCode;
  /** For people. */
  reason: string;
}

/** A parsed frame, or why there is none. */
export type Parsed<F> = { ok: true; frame: F } | { ok: false; problem: FrameProblem };

/** A message carries either text or finite numbers, never both. */
export type MessageBody = { text: string; numbers?: never } | { numbers: number[]; text?: never };

/** First frame of a node: joins the room named by `session`. */
export interface HelloFrame {
  /** Frame type. */
  t: "hello";
  /** The room id (TcpJLib's "session"). */
  session: string;
  /** Wanted nickname. */
  nickname: string;
  /** Its role; `peer` when the wire frame has none. */
  role: RelayRole;
  /** The relay secret, when it is not sent in a header. */
  secret?: string;
  /** Join token from an earlier welcome: reclaims the same nickname. */
  token?: string;
  /**
   * A secret of the node's own (22-128 characters of A-Z, a-z, 0-9, - and
   * _): once the node is gone, a hello with the same claim gets its
   * reserved nickname back, as its token would — for a process that
   * restarts after a crash, whose token died with it.
   */
  claim?: string;
  /**
   * The node's own id, the same for its whole life (every reconnect): asks
   * for exactly-once messages. The relay acknowledges its numbered messages,
   * numbers what it delivers (`offset`), and passes `id` and `seq` on, so a
   * receiver drops a message it already has even across a relay restart.
   */
  id?: string;
  /** Where the node is in its room's history, from an earlier welcome and the messages since. */
  recover?: RecoverPosition;
}

/** A position in a room's history: the last `offset` a node has, under the history's `epoch`. */
export interface RecoverPosition {
  /** Names one history of the room; a relay that lost it (a restart) has another. */
  epoch: string;
  /** The offset of the last message the node has (the welcome's `offset` if none since). */
  offset: number;
}

/**
 * A message from a node: to everyone (no `to`) or to one node. `seq` (1, 2,
 * ...: increasing, never reused by one node `id`) asks for an `ack` and for
 * duplicates to be dropped.
 */
export type NodeMessageFrame = { t: "msg"; to?: string; seq?: number } & MessageBody;

/** A node's refusal of the pipe `id` it was offered. */
export interface PipeRefuseFrame {
  /** Frame type. */
  t: "pipe-refuse";
  /** The pipe's id, from the `pipe` frame. */
  id: string;
  /** For the node that asked. */
  reason: string;
}

/** Frames a node sends. */
export type NodeFrame =
  | HelloFrame
  | NodeMessageFrame
  | PipeRefuseFrame
  | { t: "ping" }
  | { t: "pong" }
  | { t: "bye" };

/** The relay's answer to a hello. */
export interface WelcomeFrame {
  /** Frame type. */
  t: "welcome";
  /** The room id. */
  session: string;
  /** The nickname the relay assigned. */
  nickname: string;
  /** The node's role. */
  role: RelayRole;
  /** Join token: reclaims this nickname after a reconnect. */
  token: string;
  /** The other nodes of the room. */
  members: RelayMember[];
  /** Keep-alive interval in ms. */
  keepAlive: number;
  /**
   * How long (ms) the relay waits after the last frame it heard from the node
   * before it declares the node gone. Older relays do not send it.
   */
  fadeAfter?: number;
  /**
   * Messages per second the relay takes from this node (bursts of twice
   * that): a node pacing itself to it is never refused `rate-limited`.
   * Older relays do not send it.
   */
  rate?: number;
  /**
   * The most UTF-8 bytes of one frame the relay takes (larger ones are
   * refused `too-large`, without their `seq`): a node checks its messages
   * against it before they are numbered. Older relays do not send it.
   */
  maxMessageBytes?: number;
  /** Stream id for POSTs upstream (HTTP streaming transport only). */
  stream?: string;
  /** The room history's epoch (for a hello with an `id`). */
  epoch?: string;
  /** The offset of the room's latest message (for a hello with an `id`). */
  offset?: number;
  /** The highest `seq` the relay has taken from this node: resend only what is above it. */
  acked?: number;
  /**
   * For a hello with `recover`: whether the messages the node missed follow,
   * right after this welcome. When `false`, `missed` says why not.
   */
  recovered?: boolean;
  /** Why the relay cannot recover: `epoch` (it lost the history: a restart) or `window` (too old). */
  missed?: MissedReason;
}

/** Why a relay could not give a node the messages it missed. */
export type MissedReason = "epoch" | "window";

/** Why a node left its room: `left` (it said bye) or `gone` (it faded or broke). */
export type LeaveReason = "left" | "gone";

/**
 * A message as the relay delivers it: `offset` numbers the room's messages
 * (for recovery); `id` and `seq` are the sender's, when it numbered it.
 */
export type RelayMessageFrame =
  & { t: "msg"; from: string; to?: string; offset?: number; id?: string; seq?: number }
  & MessageBody;

/** An error frame: a refused frame, or a refused join before the connection ends. */
export interface ErrorFrame {
  /** Frame type. */
  t: "error";
  /** Machine-readable reason. */
  code: RelayErrorCode;
  /** For people. */
  message: string;
  /** The numbered message this is about. */
  seq?: number;
}

/** Another node asks for a pipe to this one: accept it with a pipe request naming `id`. */
export interface PipeFrame {
  /** Frame type. */
  t: "pipe";
  /** The pipe's id. */
  id: string;
  /** The nickname of the node that asks. */
  from: string;
}

/** Frames the relay sends. */
export type RelayFrame =
  | WelcomeFrame
  | PipeFrame
  | { t: "join"; nickname: string; role: RelayRole }
  | { t: "leave"; nickname: string; reason: LeaveReason }
  | RelayMessageFrame
  | { t: "ack"; seq: number }
  | { t: "ping" }
  | { t: "pong" }
  | ErrorFrame;

/** What a claim is, said once (errors use it): see {@linkcode HelloFrame.claim}. */
export const CLAIM_RULE = "22-128 characters of A-Z, a-z, 0-9, - and _";

/** Whether `value` is a claim: {@linkcode CLAIM_RULE}. */
export function isClaim(value: unknown): value is string {
  return typeof value === "string" && /^[A-Za-z0-9_-]{22,128}$/.test(value);
}

/**
 * The one encoder of frames: a frame, or a batch of node frames (an HTTP
 * POST upstream), as JSON text. Undefined fields are left out.
 */
export function encodeFrame(frame: RelayFrame | NodeFrame | readonly NodeFrame[]): string {
  return JSON.stringify(frame);
}

/** JSON body of a refused HTTP request. */
export interface RefusalBody {
  /** Machine-readable reason. */
  error: RelayErrorCode;
  /** For people. */
  message: string;
}

/**
 * The credential a 401 asks for, named in its `www-authenticate` (RFC 9110
 * 11.6.1): the relay secret to join, a joined node's token for a pipe or a
 * POST of its stream, a bearer token at /metrics, the cluster's key between
 * relays.
 */
export type RelayChallenge = "RelaySecret" | "RelayJoinToken" | "Bearer" | "RelayClusterKey";

/**
 * A refused HTTP request, as the relay answers it. A 401's challenge is the
 * relay secret's unless `challenge` names the credential it wants.
 */
export function refusalResponse(
  status: number,
  code: RelayErrorCode,
  message: string,
  challenge: RelayChallenge = "RelaySecret",
): Response {
  const body: RefusalBody = { error: code, message };
  // What the status requires to come with it (RFC 9110 15.5.2, 15.5.22).
  const headers: Record<string, string> = status === 401
    ? { "www-authenticate": `${challenge} realm="immortal relay"` }
    : status === 426
    ? { upgrade: "websocket" }
    : {};
  return Response.json(body, { status, headers });
}

/** Header that carries the relay secret (never the URL: proxies log URLs). */
export const SECRET_HEADER = "x-relay-secret";
/** Header that names the stream a POST belongs to. */
export const STREAM_HEADER = "x-relay-stream";

/** Paths under the relay's mount point. */
export const PATHS = {
  ws: "/relay/ws",
  stream: "/relay/stream",
  send: "/relay/send",
  pipe: "/relay/pipe",
} as const;

/**
 * The URL of the relay's endpoint `path` (one of {@linkcode PATHS}) for a
 * relay at `base`, under `base`'s path: a relay a reverse proxy serves at
 * `https://example.org/chat-relay/` has its WebSocket at
 * `/chat-relay/relay/ws` (the proxy strips the prefix). The query, if any,
 * is kept: a gateway in front of the relay may want its own parameters.
 */
export function relayUrl(base: URL, path: string): URL {
  const url = new URL(base);
  url.pathname = url.pathname.replace(/\/+$/, "") + path;
  url.hash = "";
  return url;
}

/** Headers of a pipe request: who asks (a member, by its join token), and for which pipe. */
export const PIPE_HEADERS = {
  session: "x-relay-session",
  nickname: "x-relay-nickname",
  token: "x-relay-token",
  /** The pipe's id, chosen by the node that dials. */
  pipe: "x-relay-pipe",
  /** On the dialing side only: the nickname of the node to reach. */
  to: "x-relay-pipe-to",
  /** Between relays of a cluster: the cluster's key (PROTOCOL.md 2.22). */
  cluster: "x-relay-cluster",
} as const;
