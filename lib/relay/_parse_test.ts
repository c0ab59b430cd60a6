// The frame parsers: each frame kind, and each refusal with its code.
import assert from "node:assert/strict";
import {
  parseNodeFrame,
  parseRefusal,
  parseRelayFrame,
  readJson,
  sessionProblem,
} from "./_parse.ts";
import { encodeFrame, type RelayErrorCode, type RelayFrame } from "./_protocol.ts";

const RULES = { maxNicknameLength: 8 };
const node = (value: unknown) => parseNodeFrame(value, RULES);

function refused(result: ReturnType<typeof node>, code: RelayErrorCode, reason: RegExp) {
  assert.ok(!result.ok, `accepted: ${JSON.stringify(result)}`);
  assert.equal(result.problem.code, code);
  assert.match(result.problem.reason, reason);
}

Deno.test("parseNodeFrame: hello, msg, ping, pong, bye", () => {
  assert.deepEqual(node({ t: "hello", session: "a17&&32", nickname: "max" }), {
    ok: true,
    frame: { t: "hello", session: "a17&&32", nickname: "max", role: "peer" },
  });
  assert.deepEqual(
    node({ t: "hello", session: "s", nickname: "n", role: "agent", secret: "x", token: "y" }),
    {
      ok: true,
      frame: { t: "hello", session: "s", nickname: "n", role: "agent", secret: "x", token: "y" },
    },
  );
  // A secret or token of the wrong type is left out, as if not given.
  assert.deepEqual(node({ t: "hello", session: "s", nickname: "n", secret: 1, token: [] }), {
    ok: true,
    frame: { t: "hello", session: "s", nickname: "n", role: "peer" },
  });
  assert.deepEqual(node({ t: "msg", text: "hi\tthere\n" }), {
    ok: true,
    frame: { t: "msg", text: "hi\tthere\n" },
  });
  assert.deepEqual(node({ t: "msg", to: "b", numbers: [1, -2.5] }), {
    ok: true,
    frame: { t: "msg", to: "b", numbers: [1, -2.5] },
  });
  for (const t of ["ping", "pong", "bye"]) {
    assert.deepEqual(node({ t, extra: 1 }), { ok: true, frame: { t } });
  }
});

Deno.test("parseNodeFrame: each refusal", () => {
  refused(node(undefined), "bad-frame", /JSON objects/);
  refused(node([{ t: "ping" }]), "bad-frame", /JSON objects/);
  refused(node({ type: "ping" }), "bad-frame", /JSON objects/);
  refused(node({ t: "welcome" }), "bad-frame", /unknown frame type "welcome"/);
  const hello = { t: "hello", session: "s", nickname: "n" };
  refused(node({ ...hello, nickname: "" }), "bad-request", /nickname is required/);
  refused(node({ ...hello, nickname: 7 }), "bad-request", /nickname is required/);
  refused(node({ ...hello, nickname: "x".repeat(9) }), "bad-request", /longer than 8/);
  refused(node({ ...hello, nickname: "a\u0007" }), "bad-request", /control or bidi characters/);
  refused(node({ ...hello, nickname: "a\u202eb" }), "bad-request", /control or bidi characters/);
  refused(node({ ...hello, nickname: " a" }), "bad-request", /spaces/);
  refused(node({ ...hello, session: undefined }), "bad-request", /session id is required/);
  refused(node({ ...hello, session: "x\u0000y" }), "bad-request", /session id contains/);
  refused(node({ ...hello, role: "admin" }), "bad-request", /role must be/);
  for (const claim of ["short", "x".repeat(129), "has,comma-0123456789abcdef", 42]) {
    refused(node({ ...hello, claim }), "bad-request", /a claim is 22-128 characters/);
  }
  const claim = "a".repeat(22);
  assert.deepEqual(node({ ...hello, claim }), {
    ok: true,
    frame: { ...hello, role: "peer", claim },
  });
  refused(node({ t: "msg" }), "bad-message", /text or an array/);
  refused(node({ t: "msg", text: "a", numbers: [1] }), "bad-message", /text or an array/);
  refused(node({ t: "msg", numbers: [1, Infinity] }), "bad-message", /text or an array/);
  refused(node({ t: "msg", numbers: ["1"] }), "bad-message", /text or an array/);
  refused(node({ t: "msg", text: "evil\u001b[2J" }), "bad-message", /control or bidi characters/);
  refused(node({ t: "msg", text: "a", to: 5 }), "bad-message", /`to` must be a nickname/);
});

Deno.test("sessionProblem: any printable id of 1-64 characters; nothing invisible", () => {
  for (const ok of ["a17&&32", "<b>x</b>", "../etc", "room with spaces", "ü🌍", "x".repeat(64)]) {
    assert.equal(sessionProblem(ok), null, ok);
  }
  const bad: [unknown, RegExp][] = [
    ["", /required/],
    [42, /required/],
    ["x".repeat(65), /longer than 64/],
    ["🌍".repeat(65), /longer than 64/],
    ["   ", /only spaces/],
    ["\u00a0\u3000", /only spaces/],
    ["tab\there", /control/],
    ["line\nbreak", /control/],
    ["c1\u0085", /control/],
    ["rtl\u202eevil", /control/],
    ["isolate\u2066", /control/],
    ["zero\u200bwidth", /control/],
    ["joiner\u200d", /control/],
    ["bom\ufeff", /control/],
    ["soft\u00adhyphen", /control/],
    ["line\u2028sep", /control/],
    ["filler\u3164", /control/],
  ];
  for (const [id, reason] of bad) {
    assert.match(sessionProblem(id) ?? "accepted", reason, JSON.stringify(id));
  }
});

Deno.test("parseRelayFrame: every frame kind round-trips through the encoder", () => {
  const frames: RelayFrame[] = [
    {
      t: "welcome",
      session: "s",
      nickname: "n",
      role: "peer",
      token: "tok",
      members: [{ nickname: "m", role: "bridge" }],
      keepAlive: 1000,
      fadeAfter: 2500,
      stream: "id",
    },
    { t: "join", nickname: "m", role: "agent" },
    { t: "leave", nickname: "m", reason: "gone" },
    { t: "msg", from: "m", text: "hi" },
    { t: "msg", from: "m", to: "n", numbers: [1, 2] },
    { t: "ping" },
    { t: "pong" },
    { t: "error", code: "rate-limited", message: "slow down" },
  ];
  for (const frame of frames) {
    assert.deepEqual(parseRelayFrame(readJson(encodeFrame(frame))), { ok: true, frame });
  }
});

Deno.test("parseRelayFrame: malformed frames are refused, not coerced", () => {
  const bad: unknown[] = [
    "text",
    { t: "hello" },
    { t: "welcome", session: "s", nickname: "n", role: "peer", token: "t", members: [] },
    { t: "welcome", session: "s", nickname: "n", role: "x", token: "t", members: [], keepAlive: 1 },
    {
      t: "welcome",
      session: "s",
      nickname: "n",
      role: "peer",
      token: "t",
      members: [],
      keepAlive: 1,
      fadeAfter: -1,
    },
    { t: "join", nickname: 5, role: "peer" },
    { t: "leave", nickname: "m", reason: "kicked" },
    { t: "msg", text: "no sender" },
    { t: "msg", from: "m", numbers: [NaN] },
    { t: "error", code: "no-such-code", message: "?" },
    { t: "error", code: "full" },
  ];
  for (const value of bad) {
    const result = parseRelayFrame(value);
    assert.ok(!result.ok, JSON.stringify(value));
    assert.equal(result.problem.code, "bad-frame");
  }
});

Deno.test("parseRefusal: the JSON body of a refused request", () => {
  assert.deepEqual(parseRefusal({ error: "unauthorized", message: "no" }), {
    error: "unauthorized",
    message: "no",
  });
  assert.deepEqual(parseRefusal({ error: "full" }), { error: "full", message: "full" });
  assert.equal(parseRefusal({ error: "made-up" }), null);
  assert.equal(parseRefusal(undefined), null);
});
