/**
 * The relay through real proxies: a forward proxy that does not pass
 * WebSockets (tinyproxy), and a buffering reverse proxy (nginx).
 */

import assert from "node:assert/strict";
import { RelayNode, RelayRefusedError } from "../mod.ts";
import { delay, renderRecord, within, withLogs } from "./_helpers.ts";
import { startNginx, startTinyproxy } from "./_proxies.ts";
import { recordEvents, startRelay, waitForEvent } from "./_relay.ts";

/** Chat both ways between a node behind the proxy and a direct one; each message within `ms`. */
async function chat(behind: RelayNode, direct: RelayNode, ms: number): Promise<void> {
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    direct.send(`down ${i}`);
    assert.equal((await waitForEvent(behind, "message", () => true, ms)).text, `down ${i}`);
    behind.send(`up ${i}`);
    assert.equal((await waitForEvent(direct, "message", () => true, ms)).text, `up ${i}`);
    assert.ok(
      performance.now() - started < ms,
      `round ${i} took ${performance.now() - started} ms`,
    );
    await delay(100);
  }
}

Deno.test("relay through a forward proxy that refuses WebSocket tunnels (tinyproxy): the node falls back to HTTP streaming and chats", async () => {
  await using relay = startRelay({ secret: "s3" });
  await using proxy = await startTinyproxy();
  await using direct = await RelayNode.connect(relay.url, {
    session: "p",
    nickname: "direct",
    secret: "s3",
  });
  await using behind = await RelayNode.connect(relay.url, {
    session: "p",
    nickname: "behind",
    secret: "s3",
    proxy: `http://127.0.0.1:${proxy.port}`,
  });
  assert.equal(behind.transport, "http", "the node did not fall back");
  await waitForEvent(direct, "join", (e) => e.nickname === "behind");
  await chat(behind, direct, 2000);
  const log = await proxy.log();
  assert.match(log, /relay\/stream/, `the stream did not go through tinyproxy:\n${log}`);
  assert.doesNotMatch(log, /s3/, "the secret showed up in the proxy's log");
  await behind.close();
  assert.equal((await waitForEvent(direct, "leave")).reason, "left");
});

Deno.test("relay behind a buffering reverse proxy (nginx defaults): the node falls back from WebSocket, messages arrive promptly", async () => {
  await using relay = startRelay();
  await using nginx = await startNginx(relay.addr.port);
  await using direct = await RelayNode.connect(relay.url, { session: "n", nickname: "direct" });
  await using behind = await RelayNode.connect(`http://127.0.0.1:${nginx.port}`, {
    session: "n",
    nickname: "behind",
  });
  assert.equal(behind.transport, "http", "nginx without upgrade headers cannot carry WebSockets");
  await waitForEvent(direct, "join", (e) => e.nickname === "behind");
  // Small messages: a buffering proxy would hold them until its buffer fills.
  await chat(behind, direct, 500);
  // The stream request is still open (nginx logs requests when they end).
  const log = await nginx.log();
  assert.match(log, /"GET \/relay\/ws HTTP\/1.1" 426/);
  assert.match(log, /"POST \/relay\/send HTTP\/1.1" 204/);
});

Deno.test("relay behind nginx, which takes 1 MB bodies where the relay takes 4 MB: the message too large for nginx is refused as too-large, the others go through, and the link stays up", async () => {
  await using relay = startRelay({ maxMessageBytes: 4 << 20 });
  await using nginx = await startNginx(relay.addr.port);
  await using direct = await RelayNode.connect(relay.url, { session: "n", nickname: "direct" });
  await using behind = await RelayNode.connect(`http://127.0.0.1:${nginx.port}`, {
    session: "n",
    nickname: "behind",
    transport: "http",
  });
  await waitForEvent(direct, "join", (e) => e.nickname === "behind");
  const atDirect = recordEvents(direct);
  const atBehind = recordEvents(behind);
  // "a" goes in a POST of its own; the big one and "b" wait for it and go
  // together: the 413 refuses both, only the big one is refused for good.
  behind.send("a");
  const big = behind.send("x".repeat(1_500_000));
  behind.send("b");
  await atDirect.until(() => atDirect.texts.includes("b"), "b through nginx");
  await within(30_000, "the flush", behind.flush());
  assert.deepEqual(atDirect.texts, ["a", "b"]);
  const refused = atBehind.events.filter((e) => e.type === "error");
  assert.equal(refused.length, 1, JSON.stringify(refused));
  assert.equal(refused[0].type === "error" && refused[0].code, "too-large");
  assert.equal(refused[0].type === "error" && refused[0].seq, big);
  assert.match(
    refused[0].type === "error" ? refused[0].message : "",
    /HTTP 413.*client_max_body_size/,
  );
  // Not a broken link: no reconnect.
  assert.deepEqual(
    atBehind.events.filter((e) => e.type === "state" && e.state !== "connected"),
    [],
  );
  assert.equal(behind.state, "connected");
  // The batch of two refused, then the big one alone: two 413s.
  const refusals = (await nginx.log()).match(/"POST \/relay\/send HTTP\/1.1" 413/g) ?? [];
  assert.equal(refusals.length, 2);
});

Deno.test("relay behind nginx that it trusts: its log names the node's own address (X-Forwarded-For), not the proxy's", async () => {
  await using relay = startRelay({ secret: "right", trustedProxies: ["127.0.0.5"] });
  await using nginx = await startNginx(relay.addr.port, { forwardedFor: "127.0.0.5" });
  await withLogs(async (records) => {
    await assert.rejects(
      RelayNode.connect(`http://127.0.0.1:${nginx.port}`, {
        session: "n",
        nickname: "intruder",
        secret: "wrong",
        transport: "http",
      }),
      RelayRefusedError,
    );
    const lines = records.map(renderRecord);
    assert.ok(
      lines.some((l) =>
        /^Refused a node from 127\.0\.0\.1 \(via 127\.0\.0\.5:\d+\): wrong relay secret$/.test(l)
      ),
      lines.join("\n"),
    );
  });
});

Deno.test("relay under a path prefix of a reverse proxy (nginx strips /chat-relay/): nodes at that URL (with a query, kept) join over both transports, talk, and open a session over pipes; the chat page is served there", async () => {
  await using relay = startRelay();
  await using nginx = await startNginx(relay.addr.port, { websocket: true, prefix: "/chat-relay" });
  // With a query a gateway in front might want: kept on every request.
  const base = `http://127.0.0.1:${nginx.port}/chat-relay/`;
  const url = `${base}?via=gateway`;
  await using lab = await RelayNode.connect(url, { session: "p", nickname: "lab" });
  await using laptop = await RelayNode.connect(url, {
    session: "p",
    nickname: "laptop",
    transport: "http",
  });
  assert.equal(lab.transport, "websocket");
  await waitForEvent(lab, "join", (e) => e.nickname === "laptop");
  laptop.send("hello");
  assert.equal((await waitForEvent(lab, "message")).text, "hello");
  using listener = lab.listen({ key: "k" });
  await using conn = await laptop.connectTo("lab", { key: "k" });
  await using server = await listener.accept();
  await conn.write(new TextEncoder().encode("over a pipe"));
  const buffer = new Uint8Array(64);
  const n = await server.read(buffer);
  assert.equal(new TextDecoder().decode(buffer.subarray(0, n!)), "over a pipe");
  // Every request went under the prefix (nginx logs a request when it ends:
  // the WebSockets are still open; without the prefix they were 404s).
  const log = await nginx.log();
  assert.match(log, /"POST \/chat-relay\/relay\/send\?via=gateway HTTP\/1.1" 204/);
  assert.doesNotMatch(log, /relay\/(send|stream|pipe) HTTP/, "a request without the query");
  assert.doesNotMatch(log, /" 404 /);
  // The chat page is served there (chromium chats from it: relay_browser_proxy_test.ts).
  const page = await fetch(`${base}chat`);
  await page.body?.cancel();
  assert.equal(page.status, 200);
});
