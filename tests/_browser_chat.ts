// The browser half of relay_browser_test.ts, in its own process: playwright-core
// reads /proc when it is imported, which Deno grants only with --allow-all, and
// this is test-only code. Exits 0 when every check passed; prints what failed otherwise.
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { RelayNode } from "../mod.ts";
import { waitForEvent } from "./_relay.ts";

const [relayUrl] = Deno.args;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  // Chromium must not try to reach Google services: this machine's network is closed.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const join = async (nickname: string) => {
    const page = await browser.newPage();
    await page.goto(`${relayUrl}/chat`);
    await page.fill("#session", "web");
    await page.fill("#nickname", nickname);
    await page.click("#join button");
    await page.waitForSelector("#state:text('(connected)')", { timeout: 5000 });
    return page;
  };
  const alice = await join("alice");
  const bob = await join("bob");
  await alice.waitForSelector("#members li:text-is('bob')", { timeout: 5000 });
  console.log("two pages joined");

  await alice.fill("#text", "hello from alice <b>not bold</b>");
  await alice.press("#text", "Enter");
  const line = bob.locator("#log li.msg", { hasText: "hello from alice" });
  await line.waitFor({ timeout: 5000 });
  assert.equal(await line.locator(".from").textContent(), "alice");
  assert.equal(await bob.locator("#log b").count(), 0, "message text was rendered as markup");
  console.log("bob's page shows alice's message, as text");

  // A Deno node in the same session hears the browsers, and they hear it.
  await using deno = await RelayNode.connect(relayUrl, { session: "web", nickname: "deno" });
  await bob.fill("#text", "hi deno");
  await bob.press("#text", "Enter");
  assert.equal((await waitForEvent(deno, "message")).text, "hi deno");
  deno.send("hi browsers");
  await alice.locator("#log li.msg", { hasText: "hi browsers" }).waitFor({ timeout: 5000 });
  console.log("browsers and a Deno node talk");

  await bob.close();
  // A closed page says bye; if it could not, the relay waits out the grace
  // of a blip (2.5 keep-alives) before it declares bob gone.
  await alice.waitForSelector("#members li:text-is('bob')", { state: "detached", timeout: 10_000 });
  await alice.locator("#log li.status", { hasText: /bob (left|is gone)/ }).waitFor({
    timeout: 10_000,
  });
  console.log("closing bob's page updated alice's member list");
} finally {
  await browser.close();
}
