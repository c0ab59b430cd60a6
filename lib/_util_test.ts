import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import {
  backoffDelay,
  checkPort,
  collectBytes,
  delay,
  errorMessage,
  hostPort,
  parsePortText,
  peerText,
  tlsFailureKind,
  untilAborted,
} from "./_util.ts";

Deno.test("delay resolves true when the time is up, false at once when aborted", async () => {
  assert.equal(await delay(1), true);
  const aborted = new AbortController();
  aborted.abort();
  assert.equal(await delay(60_000, aborted.signal), false, "an aborted signal does not wait");
  const later = new AbortController();
  const waiting = delay(60_000, later.signal);
  later.abort();
  // Resolving at all proves the 60 s timer was cleared (the sanitizer checks it too).
  assert.equal(await waiting, false);
});

Deno.test("backoffDelay: immediate first retry, then doubling with jitter up to the cap", () => {
  assert.equal(backoffDelay(0, 100, 5000), 0);
  for (let attempt = 1; attempt <= 12; attempt++) {
    const ceiling = Math.min(5000, 100 * 2 ** (attempt - 1));
    for (let i = 0; i < 50; i++) {
      const wait = backoffDelay(attempt, 100, 5000);
      assert.ok(wait >= ceiling / 2 && wait < ceiling, `attempt ${attempt}: ${wait}`);
    }
  }
  assert.ok(backoffDelay(10_000, 100, 5000) < 5000, "huge attempt counts stay capped");
});

Deno.test("errorMessage and the port checks", () => {
  assert.equal(errorMessage(new TypeError("bad")), "bad");
  assert.equal(errorMessage("text"), "text");
  assert.equal(checkPort("port", 443), 443);
  assert.equal(checkPort("port", 0, true), 0);
  assert.throws(() => checkPort("port", 0), /port must be an integer in 1..65535, got 0/);
  assert.throws(() => checkPort("target port", 65536), /target port must be/);
  assert.throws(
    () => checkPort("port", "80"),
    /^TypeError: port must be a number, got "80" \(a string\)$/,
  );
  assert.throws(() => checkPort("port", 1.5), RangeError);
  assert.equal(parsePortText("8080"), 8080);
  assert.equal(parsePortText("0"), null);
  assert.equal(parsePortText("0", true), 0);
  for (const bad of ["", "-1", "65536", "80a", " 80", "1e3", "000080"]) {
    assert.equal(parsePortText(bad), null, bad);
  }
});

Deno.test("untilAborted: the work's result, or the abort's reason at once; a result after the abort is discarded", async () => {
  const discarded: string[] = [];
  let wake = () => {};
  const discard = (late: string) => {
    discarded.push(late);
    wake();
  };
  const nextDiscard = () => new Promise<void>((resolve) => wake = resolve);
  const never = new AbortController().signal;
  assert.equal(await untilAborted(Promise.resolve("on time"), never, discard), "on time");
  await assert.rejects(
    untilAborted(Promise.reject<string>(new Error("failed")), never, discard),
    /failed/,
  );
  const work = Promise.withResolvers<string>();
  const controller = new AbortController();
  const waiting = untilAborted(work.promise, controller.signal, discard);
  controller.abort(new Error("deadline"));
  await assert.rejects(waiting, /deadline/);
  let discarding = nextDiscard();
  work.resolve("late");
  await discarding;
  assert.deepEqual(discarded, ["late"]);
  const aborted = new AbortController();
  aborted.abort(new Error("already"));
  discarding = nextDiscard();
  await assert.rejects(untilAborted(Promise.resolve("x"), aborted.signal, discard), /already/);
  await discarding;
  assert.deepEqual(discarded, ["late", "x"]);
});

Deno.test("hostPort: IPv6 in brackets, once", () => {
  assert.equal(hostPort("127.0.0.1", 80), "127.0.0.1:80");
  assert.equal(hostPort("::1", 80), "[::1]:80");
  assert.equal(hostPort("[::1]", 80), "[::1]:80");
  assert.equal(hostPort("relay.example", 443), "relay.example:443");
});

Deno.test("tlsFailureKind: a name mismatch, our distrust, a plain server, a TLS server's refusal, or nothing certain", () => {
  const cases: [string, ReturnType<typeof tlsFailureKind>][] = [
    ['invalid peer certificate: certificate not valid for name "x"; ...', "wrong-name"],
    ["invalid peer certificate: UnknownIssuer", "untrusted"],
    ["invalid peer certificate: Expired", "untrusted"],
    ["invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))", "ca-as-server"],
    ["received fatal alert: ProtocolVersion", "not-tls"],
    ["received corrupt message of type InvalidContentType", "not-tls"],
    ["received fatal alert: HandshakeFailure", "refused"],
    ["received fatal alert: CertificateRequired", "refused"],
    ["received fatal alert: BadCertificate", "refused"],
    ["Connection reset by peer (os error 104)", null],
    ["unexpected end of file", null],
  ];
  for (const [said, kind] of cases) assert.equal(tlsFailureKind(said), kind, said);
});

Deno.test("collectBytes: a body's bytes whole, its pieces not held until its end; a body in one piece is that piece; past max, the caller's error", async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "run with --v8-flags=--expose-gc (deno task test does)");
  const PIECES = 2000;
  const seen: WeakRef<Uint8Array>[] = [];
  let alive = -1;
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (sent === PIECES) {
        // A turn later (weak references hold their targets for the turn), and
        // after a full collection: the pieces taken so far that are still alive.
        await new Promise((resolve) => setImmediate(resolve));
        gc();
        alive = seen.filter((ref) => ref.deref() !== undefined).length;
        return controller.close();
      }
      const piece = new Uint8Array([sent++ & 0xff]); // a chunked body of one-byte chunks
      seen.push(new WeakRef(piece));
      controller.enqueue(piece);
    },
  }, { highWaterMark: 0 });
  const bytes = await collectBytes(body, {
    max: 1 << 20,
    tooLarge: () => new RangeError("too large"),
  });
  assert.deepEqual(bytes, Uint8Array.from({ length: PIECES }, (_, i) => i & 0xff));
  assert.equal(bytes.buffer.byteLength, PIECES, "a body holds no more than its bytes");
  assert.ok(alive >= 0 && alive < 10, `${alive} of ${PIECES} pieces still held`);

  const one = new Uint8Array(100);
  const whole = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(one);
      controller.close();
    },
  });
  assert.equal(
    await collectBytes(whole, { max: 100, tooLarge: () => new RangeError("too large") }),
    one,
  );
  assert.deepEqual(
    await collectBytes(null, { max: 0, tooLarge: () => new RangeError("too large") }),
    new Uint8Array(0),
  );
  const big = new ReadableStream<Uint8Array>({
    pull(controller) {
      controller.enqueue(new Uint8Array(40));
    },
  });
  await assert.rejects(
    collectBytes(big, { max: 100, tooLarge: () => new RangeError("over 100") }),
    /over 100/,
  );
});

Deno.test("peerText: a peer's line breaks, escapes and bidi overrides written out; the rest as it is", () => {
  assert.equal(peerText("plain text, é, 漢"), "plain text, é, 漢");
  assert.equal(
    peerText("a\nb\r\u001b[31m\u202e\u2028"),
    "a\\u000ab\\u000d\\u001b[31m\\u202e\\u2028",
  );
  assert.equal(peerText("\u200e\u200f\u061c\ufeff"), "\\u200e\\u200f\\u061c\\ufeff");
});

Deno.test("collectBytes: a signal aborted before the read cancels the body at once", async () => {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    cancel() {
      cancelled = true;
    },
  });
  const signal = AbortSignal.abort(new Error("the link is closed"));
  const tooLarge = () => new RangeError("too large");
  await assert.rejects(collectBytes(body, { max: 10, tooLarge, signal }), /the link is closed/);
  assert.ok(cancelled);
});
