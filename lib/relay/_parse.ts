/**
 * Wire JSON to typed frames. Every check the relay makes on what a node sends
 * lives here, so the hub only ever sees frames that obey the rules; the client
 * parses the relay's frames the same way instead of coercing fields.
 *
 * @module
 */

import {
  CLAIM_RULE,
  ERROR_CODES,
  type FrameProblem,
  type HelloFrame,
  isClaim,
  type MessageBody,
  type NodeFrame,
  type Parsed,
  type RefusalBody,
  type RelayErrorCode,
  type RelayFrame,
  type RelayMember,
  type RelayRole,
  ROLES,
  type WelcomeFrame,
} from "./_protocol.ts";

// C0 and C1 control characters, DEL, and the Unicode line/paragraph separators
// and bidi overrides that can disguise text.
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
// In message text, tab and newline are content.
// deno-lint-ignore no-control-regex
const TEXT_CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;
// A room id may be any printable text (TcpJLib's own example used `a17&&32`),
// but nothing that hides what it is: controls, format characters (bidi, zero
// width, soft hyphen), separators, surrogates, unassigned code points, and the
// filler letters that render as blanks.
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Cn}\p{Zl}\p{Zp}\u115f\u1160\u3164\uffa0]/u;

/** Longest room id, in code points. */
export const MAX_SESSION_LENGTH = 64;

/** Limits the relay applies to what nodes send (those that are settings). */
export interface FrameRules {
  /** Longest nickname, in code points. */
  maxNicknameLength: number;
}

/**
 * Characters a nickname may not hide behind, beyond controls: format
 * characters (zero-width, bidi marks such as U+200E, U+200F, U+061C), lone
 * surrogates, unassigned code points, the blank Braille pattern U+2800, and
 * every default-ignorable code point (Unicode's "render as nothing": Hangul
 * fillers, U+034F, variation selectors, Mongolian ones, tag characters),
 * which a marks-only category check let through after a letter ("max" with
 * U+FE00 shows as "max"). One exception: the emoji variation selector
 * U+FE0F after an emoji, or in a keycap (1️⃣), as phones type them ("❤️").
 */
const NICKNAME_INVISIBLE =
  /[\p{Cs}\p{Cn}\u2800]|(?!\uFE0F)[\p{Cf}\p{Default_Ignorable_Code_Point}]|(?<!\p{Extended_Pictographic})\uFE0F(?!\u20E3)/u;
/**
 * What the relay itself appends to tell clashing nicknames apart: a node may
 * use such a nickname only to reclaim the one it was given (with its join
 * token; the hub checks that).
 */
export const CLASH_SUFFIX = /\(\d+\)$/;

/**
 * Scripts a nickname's letters are told apart by. Letters of a script not
 * listed count as one "other" script each, so they mix with nothing.
 */
const SCRIPTS = [
  "Latin",
  "Greek",
  "Cyrillic",
  "Armenian",
  "Hebrew",
  "Arabic",
  "Syriac",
  "Thaana",
  "Devanagari",
  "Bengali",
  "Gurmukhi",
  "Gujarati",
  "Tamil",
  "Telugu",
  "Kannada",
  "Malayalam",
  "Thai",
  "Lao",
  "Tibetan",
  "Myanmar",
  "Georgian",
  "Hangul",
  "Ethiopic",
  "Cherokee",
  "Khmer",
  "Mongolian",
  "Hiragana",
  "Katakana",
  "Bopomofo",
  "Han",
].map((name) => ({ name, test: new RegExp(`\\p{Script=${name}}`, "u") }));
const LETTER = /\p{L}/u;
/**
 * Scripts that are written together (Unicode's "highly restrictive" profile,
 * UTS #39): Japanese, Chinese with Bopomofo, Korean, each with Latin.
 */
const WRITTEN_TOGETHER = [
  new Set(["Latin", "Han", "Hiragana", "Katakana"]),
  new Set(["Latin", "Han", "Bopomofo"]),
  new Set(["Latin", "Han", "Hangul"]),
];

/** The scripts of `text`'s letters (digits, punctuation and symbols belong to none). */
function scriptsOf(text: string): Set<string> {
  const scripts = new Set<string>();
  for (const char of text) {
    if (!LETTER.test(char)) continue;
    scripts.add(SCRIPTS.find((script) => script.test.test(char))?.name ?? `U+${hex(char)}`);
  }
  return scripts;
}

function hex(char: string): string {
  return char.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0");
}

/** Why a nickname is not acceptable, or `null`. */
export function nicknameProblem(nickname: unknown, maxLength: number): string | null {
  if (typeof nickname !== "string" || nickname.length === 0) return "a nickname is required";
  if ([...nickname].length > maxLength) {
    return `the nickname is longer than ${maxLength} characters`;
  }
  if (CONTROL.test(nickname)) return "the nickname contains control or bidi characters";
  const invisible = NICKNAME_INVISIBLE.exec(nickname);
  if (invisible) {
    return `the nickname contains an invisible character (U+${hex(invisible[0])})`;
  }
  if (nickname.trim() !== nickname) return "the nickname starts or ends with spaces";
  const scripts = scriptsOf(nickname);
  if (scripts.size > 1 && !WRITTEN_TOGETHER.some((set) => [...scripts].every((s) => set.has(s)))) {
    return `the nickname mixes scripts (${[...scripts].join(", ")}): letters of one script only`;
  }
  return null;
}

/** Why a room id (the wire's `session`) is not acceptable, or `null`. */
export function sessionProblem(session: unknown): string | null {
  if (typeof session !== "string" || session.length === 0) return "a session id is required";
  if ([...session].length > MAX_SESSION_LENGTH) {
    return `the session id is longer than ${MAX_SESSION_LENGTH} characters`;
  }
  if (INVISIBLE.test(session)) {
    return "the session id contains control, format or invisible characters";
  }
  if (session.trim() === "") return "the session id is only spaces";
  return null;
}

/** Why a message text is not acceptable, or `null`. */
export function textProblem(text: string): string | null {
  return TEXT_CONTROL.test(text) ? "the message contains control or bidi characters" : null;
}

/** A wire object with a string `t`: the shape every frame has before its fields are checked. */
export type FrameObject = { t: string } & Record<string, unknown>;

/** `value` as a frame object, or `null` when it is not one. */
export function asFrameObject(value: unknown): FrameObject | null {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  return typeof (value as { t?: unknown }).t === "string" ? value as FrameObject : null;
}

/** JSON text as a value, or `undefined` when it is not JSON. */
export function readJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

const ok = <F>(frame: F): Parsed<F> => ({ ok: true, frame });
const problem = (code: RelayErrorCode, reason: string): Parsed<never> => ({
  ok: false,
  problem: { code, reason },
});
const isRole = (value: unknown): value is RelayRole => ROLES.includes(value as RelayRole);
const isFiniteNumbers = (value: unknown): value is number[] =>
  Array.isArray(value) && value.every((n) => typeof n === "number" && Number.isFinite(n));
const optionalString = (value: unknown): value is string | undefined =>
  value === undefined || typeof value === "string";
/** A message number or offset: a whole number from 0 up. */
const isCount = (value: unknown): value is number =>
  typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
const optionalCount = (value: unknown): value is number | undefined =>
  value === undefined || isCount(value);
/** A node id or an epoch: 1-64 characters of base64url. */
const ID = /^[A-Za-z0-9_-]{1,64}$/;
const isId = (value: unknown): value is string => typeof value === "string" && ID.test(value);

/** A message's text or numbers; text with control characters is refused. */
function messageBody(frame: FrameObject): MessageBody | FrameProblem {
  const { text, numbers } = frame;
  if (typeof text === "string" && numbers === undefined) {
    const reason = textProblem(text);
    return reason ? { code: "bad-message", reason } : { text };
  }
  if (text === undefined && isFiniteNumbers(numbers)) return { numbers };
  return { code: "bad-message", reason: "a message has a text or an array of finite numbers" };
}

function parseHello(frame: FrameObject, rules: FrameRules): Parsed<HelloFrame> {
  const reason = sessionProblem(frame.session) ??
    nicknameProblem(frame.nickname, rules.maxNicknameLength);
  if (reason) return problem("bad-request", reason);
  const role = frame.role ?? "peer";
  if (!isRole(role)) return problem("bad-request", "role must be peer, bridge or agent");
  const { id, recover, claim } = frame;
  if (id !== undefined && !isId(id)) {
    return problem("bad-request", "a node id is 1-64 characters of A-Z, a-z, 0-9, - and _");
  }
  if (claim !== undefined && !isClaim(claim)) {
    return problem("bad-request", `a claim is ${CLAIM_RULE}`);
  }

  const position = recover as { epoch?: unknown; offset?: unknown } | undefined;
  if (
    recover !== undefined &&
    (id === undefined || typeof recover !== "object" || recover === null ||
      !isId(position!.epoch) || !isCount(position!.offset))
  ) {
    return problem("bad-request", "recover needs an id, and is { epoch, offset } from a welcome");
  }
  return ok({
    t: "hello",
    session: frame.session as string,
    nickname: frame.nickname as string,
    role,
    // A secret or token of the wrong type counts as none: the secret check refuses it.
    ...(typeof frame.secret === "string" ? { secret: frame.secret } : {}),
    ...(typeof frame.token === "string" ? { token: frame.token } : {}),
    ...(id === undefined ? {} : { id }),
    ...(claim === undefined ? {} : { claim: claim as string }),
    ...(position === undefined
      ? {}
      : { recover: { epoch: position.epoch as string, offset: position.offset as number } }),
  });
}

/** A frame a node sent, checked against the relay's rules. */
export function parseNodeFrame(value: unknown, rules: FrameRules): Parsed<NodeFrame> {
  const frame = asFrameObject(value);
  if (frame === null) return problem("bad-frame", "frames are JSON objects");
  switch (frame.t) {
    case "hello":
      return parseHello(frame, rules);
    case "msg": {
      const body = messageBody(frame);
      if ("code" in body) return { ok: false, problem: body };
      if (!optionalString(frame.to)) return problem("bad-message", "`to` must be a nickname");
      const { seq } = frame;
      if (seq !== undefined && !(isCount(seq) && seq > 0)) {
        return problem("bad-message", "`seq` is a whole number from 1 up");
      }
      return ok({
        t: "msg",
        ...(frame.to === undefined ? {} : { to: frame.to }),
        ...(seq === undefined ? {} : { seq }),
        ...body,
      });
    }
    case "ping":
    case "pong":
    case "bye":
      return ok({ t: frame.t });
    case "pipe-refuse":
      if (typeof frame.id !== "string" || typeof frame.reason !== "string") {
        return problem("bad-frame", "a pipe-refuse frame has a string id and reason");
      }
      return ok({ t: "pipe-refuse", id: frame.id, reason: frame.reason.slice(0, 200) });
  }
  return problem("bad-frame", `unknown frame type "${frame.t}"`);
}

function isMember(value: unknown): value is RelayMember {
  const member = value as RelayMember;
  return typeof value === "object" && value !== null && typeof member.nickname === "string" &&
    isRole(member.role);
}

function parseWelcome(frame: FrameObject): Parsed<WelcomeFrame> {
  const { session, nickname, role, token, members, keepAlive, fadeAfter, rate, stream } = frame;
  const { epoch, offset, acked, recovered, missed, maxMessageBytes } = frame;
  if (
    typeof session !== "string" || typeof nickname !== "string" || !isRole(role) ||
    typeof token !== "string" || !Array.isArray(members) || !members.every(isMember) ||
    typeof keepAlive !== "number" || !(keepAlive > 0) || !optionalString(stream) ||
    (fadeAfter !== undefined && (typeof fadeAfter !== "number" || !(fadeAfter > 0))) ||
    (rate !== undefined && (typeof rate !== "number" || !(rate > 0))) ||
    (maxMessageBytes !== undefined &&
      (typeof maxMessageBytes !== "number" || !(maxMessageBytes > 0))) ||
    (epoch !== undefined && !isId(epoch)) || !optionalCount(offset) || !optionalCount(acked) ||
    (recovered !== undefined && typeof recovered !== "boolean") ||
    (missed !== undefined && missed !== "epoch" && missed !== "window")
  ) {
    return problem("bad-frame", "a malformed welcome");
  }
  return ok({
    t: "welcome",
    session,
    nickname,
    role,
    token,
    members: members.map((m) => ({ nickname: m.nickname, role: m.role })),
    keepAlive,
    ...(fadeAfter === undefined ? {} : { fadeAfter }),
    ...(rate === undefined ? {} : { rate }),
    ...(maxMessageBytes === undefined ? {} : { maxMessageBytes: maxMessageBytes as number }),
    ...(stream === undefined ? {} : { stream }),
    ...(epoch === undefined ? {} : { epoch }),
    ...(offset === undefined ? {} : { offset }),
    ...(acked === undefined ? {} : { acked }),
    ...(recovered === undefined ? {} : { recovered }),
    ...(missed === undefined ? {} : { missed }),
  });
}

/** Whether `value` is an error code a relay sends. */
export function isErrorCode(value: unknown): value is RelayErrorCode {
  return ERROR_CODES.includes(value as RelayErrorCode);
}

/** A frame the relay sent; anything else (a newer relay's frame, garbage) is a problem. */
export function parseRelayFrame(value: unknown): Parsed<RelayFrame> {
  const frame = asFrameObject(value);
  if (frame === null) return problem("bad-frame", "frames are JSON objects");
  switch (frame.t) {
    case "welcome":
      return parseWelcome(frame);
    case "join":
      if (typeof frame.nickname !== "string" || !isRole(frame.role)) break;
      return ok({ t: "join", nickname: frame.nickname, role: frame.role });
    case "leave":
      if (typeof frame.nickname !== "string") break;
      if (frame.reason !== "left" && frame.reason !== "gone") break;
      return ok({ t: "leave", nickname: frame.nickname, reason: frame.reason });
    case "msg": {
      const body = messageBody(frame);
      const { from, to, offset, id, seq } = frame;
      if ("code" in body || typeof from !== "string" || !optionalString(to)) break;
      if (!optionalCount(offset) || !optionalCount(seq) || (id !== undefined && !isId(id))) break;
      return ok({
        t: "msg",
        from,
        ...(to === undefined ? {} : { to }),
        ...(offset === undefined ? {} : { offset }),
        ...(id === undefined || seq === undefined ? {} : { id, seq }),
        ...body,
      });
    }
    case "ack":
      if (!isCount(frame.seq)) break;
      return ok({ t: "ack", seq: frame.seq });
    case "ping":
    case "pong":
      return ok({ t: frame.t });
    case "pipe":
      if (typeof frame.id !== "string" || typeof frame.from !== "string") break;
      return ok({ t: "pipe", id: frame.id, from: frame.from });
    case "error":
      if (!isErrorCode(frame.code) || typeof frame.message !== "string") break;
      if (!optionalCount(frame.seq)) break;
      return ok({
        t: "error",
        code: frame.code,
        message: frame.message,
        ...(frame.seq === undefined ? {} : { seq: frame.seq }),
      });
    default:
      return problem("bad-frame", `unknown frame type "${frame.t}"`);
  }
  return problem("bad-frame", `a malformed "${frame.t}" frame`);
}

/** The JSON body of a refused HTTP request, or `null` when `value` is not one. */
export function parseRefusal(value: unknown): RefusalBody | null {
  const body = value as RefusalBody;
  if (typeof value !== "object" || value === null || !isErrorCode(body.error)) return null;
  return {
    error: body.error,
    message: typeof body.message === "string" ? body.message : body.error,
  };
}
