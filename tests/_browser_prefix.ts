// The browser half of the prefix test in relay_browser_proxy_test.ts, in its
// own process (see _browser_run.ts). Usage: _browser_prefix.ts BASE SECRET,
// BASE being the relay's URL under a reverse proxy's prefix, without a
// trailing slash. The chat page is served there (also when asked for as
// `chat/`), and its relative paths keep
// its WebSocket under the prefix; it chats with a Deno node given the same URL.
import assert from "node:assert/strict";
import { RelayNode } from "../mod.ts";
import { join, launch, say, shows } from "./_browser_helpers.ts";
import { recordEvents } from "./_relay.ts";

const [base, secret] = Deno.args;
const browser = await launch([]);
try {
  const page = await browser.newPage();
  // Typed with a trailing slash, and a gateway's query: the relay's redirect
  // stays under the prefix, and keeps the query.
  await page.goto(`${base}/chat/?via=gateway`);
  assert.ok(page.url().endsWith("/chat-relay/chat?via=gateway"), page.url());
  await join(page, base, { session: "prefixed", nickname: "pat", secret }, "websocket");
  assert.ok(page.url().endsWith("/chat-relay/chat?via=gateway"), page.url());
  console.log("the page joined over WebSocket under the prefix");
  await using deno = await RelayNode.connect(`${base}/`, {
    session: "prefixed",
    nickname: "deno",
    secret,
  });
  const atDeno = recordEvents(deno);
  await say(page, "up");
  deno.send("down");
  await shows(page, "down");
  await atDeno.until(() => atDeno.texts.includes("up"), "deno hearing the page");
  console.log("page and Deno node chat under the prefix");
} finally {
  await browser.close();
}
