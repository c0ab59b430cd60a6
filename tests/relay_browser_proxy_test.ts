/**
 * The chat page in chromium behind a forward proxy that refuses WebSocket
 * tunnels (tinyproxy): it falls back to HTTP streaming, as `RelayNode` does.
 */

import assert from "node:assert/strict";
import { runBrowserScript } from "./_browser_run.ts";
import { startNginx, startTinyproxy } from "./_proxies.ts";
import { startRelay } from "./_relay.ts";

Deno.test("relay chat page in chromium behind tinyproxy: the WebSocket is refused, the page chats over HTTP streaming through the proxy", async () => {
  // A wide keep-alive grace: a browser starved of CPU on a loaded machine is not the subject.
  await using relay = startRelay({ secret: "s3cret", fadeAfter: 30_000 });
  await using proxy = await startTinyproxy();
  const stdout = await runBrowserScript(
    "./_browser_proxy.ts",
    relay.url,
    String(proxy.port),
    "s3cret",
  );
  assert.match(stdout, /the page joined over HTTP streaming/);
  assert.match(stdout, /page and Deno node chat through tinyproxy/);
  // The proxy's side: the page, its WebSocket tunnel (refused), its stream and its sends.
  const log = await proxy.log();
  const port = relay.addr.port;
  assert.match(log, new RegExp(`GET http://127.0.0.1:${port}/chat`), log);
  assert.match(log, new RegExp(`CONNECT 127.0.0.1:${port}`), log);
  assert.match(log, new RegExp(`POST http://127.0.0.1:${port}/relay/stream`), log);
  assert.match(log, new RegExp(`POST http://127.0.0.1:${port}/relay/send`), log);
  assert.doesNotMatch(log, /s3cret/, "the secret showed up in the proxy's log");
});

Deno.test("relay chat page in chromium under a reverse proxy's path prefix (nginx strips /chat-relay/): served there, its WebSocket goes there too, and it chats", async () => {
  await using relay = startRelay({ secret: "s3cret", fadeAfter: 30_000 });
  await using nginx = await startNginx(relay.addr.port, { websocket: true, prefix: "/chat-relay" });
  const stdout = await runBrowserScript(
    "./_browser_prefix.ts",
    `http://127.0.0.1:${nginx.port}/chat-relay`,
    "s3cret",
  );
  assert.match(stdout, /the page joined over WebSocket under the prefix/);
  assert.match(stdout, /page and Deno node chat under the prefix/);
  const log = await nginx.log();
  assert.doesNotMatch(log, /" 404 /);
  // The page's WebSocket carried the page's query, as the gateway in front may want.
  assert.match(log, /"GET \/chat-relay\/relay\/ws\?via=gateway HTTP\/1\.1" 101/);
});
