import assert from "node:assert/strict";
import { readingConn } from "../../tests/_fake_conn.ts";
import { concat } from "../_util.ts";
import { ByteReader } from "./_byte_reader.ts";
import { bodyStream, HttpError, parseHead, readHead } from "./_http1_request.ts";

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
    // Methods are case-sensitive; CONNECT, TRACE and TRACK are not served.
    ["get / HTTP/1.1\r\nHost: a", 501],
    ["pOsT / HTTP/1.1\r\nHost: a", 501],
    ["TRACE / HTTP/1.1\r\nHost: a", 501],
    ["CONNECT a:443 HTTP/1.1\r\nHost: a", 501],
  ];
  for (const [text, status] of cases) assert.equal(refusal(text), status, JSON.stringify(text));
});

Deno.test("parseHead refuses a target a URL parser would rewrite (a reverse proxy matches it as sent): dot segments, backslashes, encoded slashes, a leading //, a fragment, no leading /", () => {
  const refused = [
    "/relay/..\\metrics",
    "/relay/../metrics",
    "/relay/%2e%2e/metrics",
    "/relay/.%2E/metrics",
    "/chat/./x",
    "/chat/..",
    "/relay%2fws",
    "/relay%5Cws",
    "//evil.example/healthz",
    "//healthz",
    "healthz",
    "\\healthz",
    "/healthz#frag",
    "ftp://x/healthz",
    "http://x//healthz",
    "http://x/a/../metrics",
    "http://a\\..\\metrics",
    "http://a\\metrics",
    "*",
  ];
  for (const target of refused) {
    assert.equal(refusal(`GET ${target} HTTP/1.1\r\nHost: a`), 400, target);
  }
  const taken = [
    "/",
    "/healthz",
    "/relay/ws?session=a/../b&x=%2e%2e",
    "/chat/",
    "/a..b/.c/",
    "http://x",
    "http://x?q=1",
    "/relay/ws?gateway=a%5Cb",
    "https://x:8443/relay/stream?q=1",
    "http://[::1]:8080/healthz",
  ];
  for (const target of taken) {
    assert.equal(parseHead(`GET ${target} HTTP/1.1\r\nHost: a`).target, target);
  }
  assert.equal(parseHead("OPTIONS * HTTP/1.1\r\nHost: a").target, "*");
});

async function pieces(body: ReadableStream<Uint8Array>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const piece of body) out.push(piece);
  return out;
}

Deno.test("bodyStream: a body of declared length comes whole, read straight into it in large reads", async () => {
  const size = 1 << 20;
  const data = Uint8Array.from({ length: size }, (_, i) => (i * 7) % 251);
  // The head's reader buffered the first bytes already; the kernel hands out 256 KiB at most.
  const { conn, offered } = readingConn(data, 256 * 1024);
  const reader = new ByteReader(conn, 16 * 1024);
  await reader.fill();
  let done = false;
  const got = await pieces(
    bodyStream(reader, { kind: "length", length: size }, () => done = true)!,
  );
  assert.equal(got.length, 1, "one piece");
  assert.deepEqual(got[0], data);
  assert.ok(done);
  // Small reads through the 16 KiB head buffer took 64 reads; straight into the body, 5.
  assert.ok(offered.length <= 6, `${offered.length} reads`);
  assert.ok(offered.slice(1).every((room) => room > 16 * 1024), `read rooms ${offered}`);
});

Deno.test("bodyStream: a chunk size may have extensions, with whitespace before the ;", async () => {
  const wire = new TextEncoder().encode("5 ;a=b\r\nhello\r\n2;c\r\n!!\r\n0\r\n\r\n");
  const reader = new ByteReader(readingConn(wire, 1 << 20).conn, 16 * 1024);
  const got = await pieces(bodyStream(reader, { kind: "chunked" }, () => {})!);
  assert.equal(new TextDecoder().decode(concat(...got)), "hello!!");
});

Deno.test("bodyStream: a chunked body (sizes nobody checked first) still comes in pieces of at most 64 KiB", async () => {
  const payload = new Uint8Array(200 * 1024).fill(1);
  const wire = concat(
    new TextEncoder().encode(`${payload.length.toString(16)}\r\n`),
    payload,
    new TextEncoder().encode("\r\n0\r\n\r\n"),
  );
  const reader = new ByteReader(readingConn(wire, 1 << 20).conn, 16 * 1024);
  const got = await pieces(bodyStream(reader, { kind: "chunked" }, () => {})!);
  assert.ok(got.every((piece) => piece.length <= 65_536), `${got.map((p) => p.length)}`);
  assert.equal(got.reduce((n, p) => n + p.length, 0), payload.length);
});

Deno.test("readHead: bytes that cannot start a request (an immortal hello, a TLS ClientHello) are refused at the first byte, not at the header timeout", async () => {
  for (const [first, reason] of [[0x10, /starts with a method/], [0x16, /not TLS/]] as const) {
    // One byte, and the connection stays open: a timeout would be the only other way out.
    const { conn, offered } = readingConn(new Uint8Array([first]));
    const reading = readHead(new ByteReader(conn, 16 * 1024));
    await assert.rejects(
      reading,
      (error: Error) => error instanceof HttpError && reason.test(error.message),
    );
    assert.equal(offered.length, 1, "refused after one read");
  }
  // A request's own first bytes, a byte at a time, are waited for.
  const request = new TextEncoder().encode("\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n");
  const head = await readHead(new ByteReader(readingConn(request, 1).conn, 16 * 1024));
  assert.equal(head?.method, "GET");
});
