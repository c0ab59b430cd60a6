// The browser half of relay_browser_proxy_test.ts, in its own process (see
// _browser_run.ts). Usage: _browser_proxy.ts RELAY_URL PROXY_PORT SECRET.
// Chromium behind tinyproxy, which refuses WebSocket tunnels: the page falls
// back to HTTP streaming, is refused with a wrong secret, then chats with a
// Deno node that reaches the relay directly.
import assert from "node:assert/strict";
import { RelayNode } from "../mod.ts";
import {
  connected,
  launch,
  say,
  screenshot,
  shows,
  status,
  submitJoin,
  WAIT,
} from "./_browser_helpers.ts";
import { recordEvents } from "./_relay.ts";

const [relayUrl, proxyPort, secret] = Deno.args;
const browser = await launch([
  `--proxy-server=http://127.0.0.1:${proxyPort}`,
  // Chromium sends loopback straight past any proxy unless told not to.
  "--proxy-bypass-list=<-loopback>",
]);
try {
  const page = await browser.newPage();
  await submitJoin(page, relayUrl, { session: "behind", nickname: "pat", secret: "wrong" });
  await page.locator("#join-error", { hasText: /missing or wrong relay secret/ }).waitFor(WAIT);
  console.log("over HTTP streaming, a wrong secret is refused with the reason");

  await submitJoin(page, relayUrl, { session: "behind", nickname: "pat", secret });
  await connected(page, "http");
  assert.equal(await page.locator("#state").textContent(), "connected via HTTP streaming");
  console.log("the page joined over HTTP streaming");

  await using deno = await RelayNode.connect(relayUrl, {
    session: "behind",
    nickname: "deno",
    secret,
  });
  const atDeno = recordEvents(deno);
  await page.locator("#members .member", { hasText: /^deno$/ }).waitFor(WAIT);
  for (let i = 1; i <= 3; i++) {
    await say(page, `up ${i}`);
    await status(page, `up ${i}`, "sent");
    deno.send(`down ${i}`);
    await shows(page, `down ${i}`);
  }
  await atDeno.until(() => atDeno.texts.length === 3, "deno hearing the page");
  assert.deepEqual(atDeno.texts, ["up 1", "up 2", "up 3"]);
  // Directed, both ways, over the fallback too.
  await say(page, "/to deno only you");
  deno.sendTo("pat", "only the page");
  await shows(page, "only the page");
  await atDeno.until(() => atDeno.texts.includes("only you"), "deno hearing the directed one");
  assert.equal(await page.locator("#state").getAttribute("data-transport"), "http");
  await screenshot(page, "behind-tinyproxy");
  console.log("page and Deno node chat through tinyproxy");

  // Closing the page says bye in a keepalive POST: deno hears it leave.
  await page.close({ runBeforeUnload: true });
  await atDeno.until(
    () => atDeno.events.some((e) => e.type === "leave" && e.nickname === "pat"),
    "deno hearing the page leave",
  );
  const leave = atDeno.events.find((e) => e.type === "leave");
  console.log(`the closed page's leave: ${leave?.type === "leave" ? leave.reason : "?"}`);
} finally {
  await browser.close();
}
