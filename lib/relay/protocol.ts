/**
 * The relay's wire protocol: JSON objects, one per WebSocket text message or
 * per Server-Sent Event (and per element of a POSTed array upstream).
 *
 * @module
 */

/**
 * What a node is in its session. `peer` nodes hear everyone; `agent` nodes
 * talk to bridges only and hear only bridges; a `bridge` serves many agents
 * (the old TcpBridge/TcpAgent pair).
 */
export type RelayRole = "peer" | "bridge" | "agent";

/** A node as the others see it. */
export interface RelayMember {
  /** The nickname the relay assigned (unique in the session). */
  nickname: string;
  /** Its role. */
  role: RelayRole;
}

/** @internal First frame of a node. */
export interface _Hello {
  t: "hello";
  session: string;
  nickname: string;
  role?: RelayRole;
  /** The relay secret, when it is not sent in a header. */
  secret?: string;
  /** Join token from an earlier welcome: reclaims the same nickname. */
  token?: string;
}

/** @internal A message: text or numbers, to everyone (no `to`) or one node. */
export interface _Msg {
  t: "msg";
  to?: string;
  text?: string;
  numbers?: number[];
}

/** @internal Frames a node sends. */
export type _NodeFrame = _Hello | _Msg | { t: "ping" } | { t: "pong" } | { t: "bye" };

/** @internal Frames the relay sends. */
export type _RelayFrame =
  | {
    t: "welcome";
    session: string;
    nickname: string;
    role: RelayRole;
    token: string;
    members: RelayMember[];
    keepAlive: number;
    /** Stream id for POSTs upstream (HTTP streaming transport only). */
    stream?: string;
  }
  | { t: "join"; nickname: string; role: RelayRole }
  | { t: "leave"; nickname: string; reason: "left" | "gone" }
  | { t: "msg"; from: string; to?: string; text?: string; numbers?: number[] }
  | { t: "ping" }
  | { t: "pong" }
  | { t: "error"; code: string; message: string };

/** Header that carries the relay secret (never the URL: proxies log URLs). */
export const SECRET_HEADER = "x-relay-secret";
/** @internal Header that names the stream a POST belongs to. */
export const _STREAM_HEADER = "x-relay-stream";

/** @internal Paths under the relay's mount point. */
export const _PATHS = {
  ws: "/relay/ws",
  stream: "/relay/stream",
  send: "/relay/send",
} as const;

// C0 and C1 control characters, DEL, and the Unicode line/paragraph separators
// and bidi overrides that can disguise text.
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
// In message text, tab and newline are content.
// deno-lint-ignore no-control-regex
const TEXT_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;
const SESSION_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** @internal Why a nickname is not acceptable, or `null`. */
export function _nicknameProblem(nickname: unknown, maxLength: number): string | null {
  if (typeof nickname !== "string" || nickname.length === 0) return "a nickname is required";
  if ([...nickname].length > maxLength) {
    return `the nickname is longer than ${maxLength} characters`;
  }
  if (CONTROL.test(nickname)) return "the nickname contains control characters";
  if (nickname.trim() !== nickname) return "the nickname starts or ends with spaces";
  return null;
}

/** @internal Why a session id is not acceptable, or `null`. */
export function _sessionProblem(session: unknown): string | null {
  if (typeof session !== "string" || !SESSION_ID.test(session)) {
    return "the session id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit";
  }
  return null;
}

/** @internal Why a message text is not acceptable, or `null`. */
export function _textProblem(text: string): string | null {
  return TEXT_CONTROL.test(text) ? "the message contains control characters" : null;
}

/** @internal `value` as a frame: an object with a string `t`, or `null`. */
export function _asFrame(value: unknown): Record<string, unknown> | null {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  return typeof (value as { t?: unknown }).t === "string" ? value as Record<string, unknown> : null;
}

/** @internal Parses one JSON frame; `null` for anything that is not a frame. */
export function _parseFrame(data: string): Record<string, unknown> | null {
  try {
    return _asFrame(JSON.parse(data));
  } catch {
    return null;
  }
}
