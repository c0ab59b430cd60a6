/**
 * The relay's own HTTP/1.1 server as real clients and proxies use it (RFC
 * 9110/9112): targets a proxy would read another way, answers a client
 * still sending reads whole, a client that half-closes, methods, and the
 * header fields each answer owes.
 */

import assert from "node:assert/strict";
import { renderRecord, waitUntil, within, withLogs } from "./_helpers.ts";
import { startRelay } from "./_relay.ts";

const encoder = new TextEncoder();

/**
 * Sends `request` (then `body`, if any) on a new connection, half-closes it
 * if asked, and reads until the relay closes: the whole answer as text.
 */
async function exchange(
  port: number,
  request: string,
  options: { body?: Uint8Array; halfClose?: boolean } = {},
): Promise<string> {
  using conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reading = (async () => {
    const chunks: Uint8Array[] = [];
    const buffer = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buffer).catch((error) => {
        throw new Error(`reading the answer failed: ${error}`);
      });
      if (n === null) break;
      chunks.push(buffer.slice(0, n));
    }
    return new TextDecoder().decode(new Uint8Array(chunks.flatMap((chunk) => [...chunk])));
  })();
  // Written whole before reading: as a client that sends its body, then reads (python's http.client).
  const write = async (bytes: Uint8Array) => {
    for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
  };
  await write(encoder.encode(request));
  if (options.body) await write(options.body);
  if (options.halfClose) await conn.closeWrite();
  return await within(20_000, "the answer", reading);
}

const status = (answer: string) => Number(/^HTTP\/1\.1 (\d{3}) /.exec(answer)?.[1]);
const header = (answer: string, name: string) =>
  answer.split("\r\n\r\n")[0].split("\r\n").find((line) =>
    line.toLowerCase().startsWith(`${name}: `)
  )?.slice(name.length + 2);

Deno.test("relay HTTP: a target a URL parser would rewrite is refused with 400, not served as what a proxy in front let through", async () => {
  await using relay = startRelay({ secret: "s" });
  const port = relay.addr.port;
  for (const target of ["/relay/..\\metrics", "/relay/%2e%2e/metrics", "//healthz", "healthz"]) {
    const answer = await exchange(port, `GET ${target} HTTP/1.1\r\nhost: x\r\n\r\n`);
    assert.equal(status(answer), 400, `${target}: ${answer}`);
    assert.equal(header(answer, "connection"), "close");
  }
  // The same resource asked for as sent is served (its 401: the relay has a secret).
  const plain = await exchange(
    port,
    "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
  );
  assert.equal(status(plain), 401);
});

Deno.test("relay HTTP: a client that half-closes after its request gets the whole answer (HTTP/1.0 and 1.1)", async () => {
  await using relay = startRelay();
  const port = relay.addr.port;
  const health = await exchange(port, "GET /healthz HTTP/1.0\r\n\r\n", { halfClose: true });
  assert.equal(status(health), 200, health);
  assert.deepEqual(JSON.parse(health.split("\r\n\r\n")[1]), {
    status: "ok",
    sessions: 0,
    nodes: 0,
  });
  const chat = await exchange(port, "GET /chat HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", {
    halfClose: true,
  });
  assert.equal(status(chat), 200);
  assert.match(chat, /<\/html>\s*\r\n0\r\n\r\n$/);
});

Deno.test("relay HTTP: an answer given without reading a large body (413), or to a head too large (431, 414), reaches a client that sends it all first", async () => {
  await using relay = startRelay();
  const port = relay.addr.port;
  const size = 5_000_000;
  const tooLarge = await exchange(
    port,
    `POST /relay/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${size}\r\n\r\n`,
    { body: new Uint8Array(size).fill(32) },
  );
  assert.equal(status(tooLarge), 413, tooLarge);
  // It will close: it says so, so that the client does not send another request on it.
  assert.equal(header(tooLarge, "connection"), "close");
  const bigHead = await exchange(
    port,
    `GET /healthz HTTP/1.1\r\nhost: x\r\n${
      "x-filler: ".concat("y".repeat(8000), "\r\n").repeat(500)
    }\r\n`,
  );
  assert.equal(status(bigHead), 431, bigHead.slice(0, 200));
  const longUrl = await exchange(port, `GET /${"a".repeat(20_000)} HTTP/1.1\r\nhost: x\r\n\r\n`);
  assert.equal(status(longUrl), 414, longUrl.slice(0, 200));
});

Deno.test("relay HTTP: methods it does not implement (CONNECT, TRACE, a lower-case one) get 501, not an empty reply", async () => {
  await using relay = startRelay();
  const port = relay.addr.port;
  for (
    const request of [
      "TRACE / HTTP/1.1\r\nhost: x\r\n\r\n",
      "CONNECT 127.0.0.1:1 HTTP/1.1\r\nhost: x\r\n\r\n",
      "get /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab",
    ]
  ) {
    const answer = await exchange(port, request);
    assert.equal(status(answer), 501, `${request.split("\r\n")[0]}: ${answer}`);
  }
});

Deno.test("relay HTTP: every answer carries date; 405 says what is allowed, 401 how to authenticate, 426 what to upgrade to; OPTIONS * and HEAD /metrics are answered", async () => {
  await using relay = startRelay({ secret: "s" });
  const port = relay.addr.port;
  const ask = (request: string) =>
    exchange(port, request.replace("\r\n", "\r\nhost: x\r\nconnection: close\r\n"));
  const health = await ask("GET /healthz HTTP/1.1\r\n\r\n");
  assert.ok(!Number.isNaN(Date.parse(header(health, "date") ?? "")), health);
  const refused = await exchange(port, "GET /x HTTP/1.1\r\n\r\n"); // no Host: refused before routing
  assert.equal(status(refused), 400);
  assert.ok(header(refused, "date"), refused);
  const deleted = await ask("DELETE /healthz HTTP/1.1\r\n\r\n");
  assert.equal(status(deleted), 405);
  assert.equal(header(deleted, "allow"), "GET, HEAD");
  const pipe = await ask("PUT /relay/pipe HTTP/1.1\r\n\r\n");
  assert.equal(header(pipe, "allow"), "GET, POST");
  const metrics = await ask("GET /metrics HTTP/1.1\r\n\r\n");
  assert.equal(status(metrics), 401);
  assert.equal(header(metrics, "www-authenticate"), 'Bearer realm="immortal relay"');
  // Each 401 names the credential that request must show.
  const join = await ask("POST /relay/stream HTTP/1.1\r\nx-relay-secret: wrong\r\n\r\n");
  assert.equal(status(join), 401, join);
  assert.equal(header(join, "www-authenticate"), 'RelaySecret realm="immortal relay"');
  const stranger = await ask(
    "POST /relay/pipe HTTP/1.1\r\nx-immortal-link: open\r\nx-relay-session: s\r\n" +
      "x-relay-nickname: a\r\nx-relay-token: t\r\nx-relay-pipe: p\r\ncontent-length: 0\r\n\r\n",
  );
  assert.equal(status(stranger), 401, stranger);
  assert.equal(header(stranger, "www-authenticate"), 'RelayJoinToken realm="immortal relay"');
  const headMetrics = await ask("HEAD /metrics HTTP/1.1\r\nauthorization: Bearer s\r\n\r\n");
  assert.equal(status(headMetrics), 200, headMetrics);
  assert.equal(headMetrics.split("\r\n\r\n")[1], "");
  const noUpgrade = await ask("GET /relay/ws HTTP/1.1\r\n\r\n");
  assert.equal(status(noUpgrade), 426);
  assert.equal(header(noUpgrade, "upgrade"), "websocket");
  const options = await ask("OPTIONS * HTTP/1.1\r\n\r\n");
  assert.equal(status(options), 204);
  assert.equal(header(options, "allow"), "GET, HEAD, POST");
});

Deno.test("relay HTTP: a body whose chunked framing is broken is a 400, not a 413 that tells HTTP links to halve their posts", async () => {
  await using relay = startRelay();
  const answer = await exchange(
    relay.addr.port,
    "POST /relay/stream HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
  );
  assert.equal(status(answer), 400, answer);
  assert.equal(JSON.parse(answer.split("\r\n\r\n")[1].split("\r\n")[1]).error, "bad-request");
});

Deno.test("relay HTTP: Expect: 100-continue is answered 100 only when the body is wanted; a request refused first gets its answer at once, and the connection ends", async () => {
  await using relay = startRelay({ secret: "s" });
  const port = relay.addr.port;
  const hello = JSON.stringify({ t: "hello", session: "s", nickname: "n" });
  const head = (secret: string) =>
    `POST /relay/stream HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\nx-relay-secret: ${secret}\r\n` +
    `content-type: application/json\r\ncontent-length: ${hello.length}\r\n\r\n`;
  // Refused on its headers (a wrong secret): the answer comes without the body, and no 100.
  const refused = await exchange(port, head("wrong"));
  assert.equal(status(refused), 401, refused);
  assert.equal(header(refused, "connection"), "close");
  // Wanted: 100 first, then the body is read and the node joins.
  using conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode(head("s")));
  const buffer = new Uint8Array(4096);
  const first = new TextDecoder().decode(buffer.subarray(0, (await conn.read(buffer))!));
  assert.equal(first, "HTTP/1.1 100 Continue\r\n\r\n");
  await conn.write(encoder.encode(hello));
  let answer = "";
  while (!answer.includes('"t":"welcome"')) {
    const n = await within(10_000, "the welcome", conn.read(buffer));
    assert.notEqual(n, null, answer);
    answer += new TextDecoder().decode(buffer.subarray(0, n!));
  }
  assert.equal(status(answer), 200);
});

Deno.test("relay HTTP: a client that hangs up inside a request head is no bad request, and a keep-alive connection closed for idling is no warning", async () => {
  await withLogs(async (records) => {
    await using relay = startRelay({ idleTimeout: 200 });
    const port = relay.addr.port;
    // Half a head, then gone.
    const half = await Deno.connect({ hostname: "127.0.0.1", port });
    await half.write(encoder.encode("GET /healthz HTTP/1.1\r\nho"));
    half.close();
    // A request answered, then the connection left idle until the relay closes it.
    using idle = await Deno.connect({ hostname: "127.0.0.1", port });
    await idle.write(encoder.encode("GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"));
    const buffer = new Uint8Array(4096);
    while ((await within(20_000, "the idle connection's end", idle.read(buffer))) !== null) {
      // the answer, then the end
    }
    // Both connections handled and gone: only then is the count final.
    await waitUntil(
      () => relay.relay.stats.connections!.connections === 0,
      "both connections gone",
    );
    assert.equal(relay.relay.stats.connections?.badRequests ?? 0, 0);
    const warnings = records.filter((r) => r.level === "warning").map(renderRecord);
    assert.deepEqual(warnings, []);
  });
});

Deno.test("relay HTTP: an answer given without reading a chunked body says connection: close (its length is unknown: it cannot promise to read past it)", async () => {
  await using relay = startRelay();
  const answer = await exchange(
    relay.addr.port,
    "POST /relay/send HTTP/1.1\r\nhost: x\r\nx-relay-stream: nope\r\ntransfer-encoding: chunked\r\n\r\n",
    {
      body: new TextEncoder().encode(
        `${(100_000).toString(16)}\r\n${"x".repeat(100_000)}\r\n0\r\n\r\n`,
      ),
    },
  );
  assert.equal(status(answer), 404, answer.slice(0, 300));
  assert.equal(header(answer, "connection"), "close");
});
