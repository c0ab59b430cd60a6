import assert from "node:assert/strict";
import { HttpError, parseHead } from "./_http1_request.ts";

function refusal(text: string): number {
  try {
    parseHead(text);
  } catch (error) {
    if (error instanceof HttpError) return error.status;
    throw error;
  }
  return 0;
}

Deno.test("parseHead reads a request head: framing, keep-alive, expectations", () => {
  const post = parseHead("POST /relay/send HTTP/1.1\r\nHost: a\r\nContent-Length: 12");
  assert.deepEqual(post.body, { kind: "length", length: 12 });
  assert.equal(post.keepAlive, true);
  const chunked = parseHead("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked");
  assert.deepEqual(chunked.body, { kind: "chunked" });
  assert.equal(parseHead("GET / HTTP/1.1\r\nHost: a\r\nConnection: close").keepAlive, false);
  assert.equal(parseHead("GET / HTTP/1.0").keepAlive, false);
  assert.equal(parseHead("GET / HTTP/1.0\r\nConnection: keep-alive").keepAlive, true);
  // Repeated equal lengths are one length (RFC 9112 6.3).
  assert.deepEqual(
    parseHead("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3").body,
    { kind: "length", length: 3 },
  );
  assert.equal(
    parseHead("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue").expectContinue,
    true,
  );
  assert.equal(parseHead("GET / HTTP/1.1\r\nHost: a\r\nX:  padded \t").headers.get("x"), "padded");
});

Deno.test("parseHead refuses what a lenient parser would guess at", () => {
  const cases: [string, number][] = [
    ["GET / HTTP/1.1\nHost: a", 400], // bare LF
    ["GET / HTTP/1.1\r\nHost: a\r\nX: a\rb", 400], // bare CR
    ["GET  / HTTP/1.1\r\nHost: a", 400], // two spaces
    ["GET / HTTP/1.1 \r\nHost: a", 400],
    ["G@T / HTTP/1.1\r\nHost: a", 400],
    ["GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400],
    ["GET / HTTP/1.1\r\nHost: a\r\nX: \x00", 400],
    ["GET / HTTP/1.1\r\nHost: a\r\nNoColon", 400],
    ["GET / HTTP/1.1\r\nHost: a\r\n: empty name", 400],
    ["POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1", 400],
    ["POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3", 400],
    ["POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4", 400],
    ["POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 400],
    ["POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip", 501],
    ["GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot", 417],
    ["GET / HTTP/3.0\r\nHost: a", 505],
    ["GET / HTTX/1.1\r\nHost: a", 400],
    ["GET / HTTP/1.1\r\nHost: a" + "\r\nX: y".repeat(101), 431],
  ];
  for (const [text, status] of cases) assert.equal(refusal(text), status, JSON.stringify(text));
});
