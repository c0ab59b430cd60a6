// The browser half of relay_browser_test.ts, in its own process (see
// _browser_run.ts). Usage: _browser_chat.ts SCENARIO RELAY_URL [SECRET]. Exits
// 0 when every check passed; prints what failed otherwise.
import assert from "node:assert/strict";
import type { Browser } from "playwright-core";
import { RelayNode } from "../mod.ts";
import {
  assertTimeStamps,
  connected,
  join,
  launch,
  mine,
  noted,
  received,
  say,
  screenshot,
  shows,
  status,
  submitJoin,
  WAIT,
} from "./_browser_helpers.ts";
import { recordEvents, waitForEvent } from "./_relay.ts";

const [scenario, relayUrl, secret = ""] = Deno.args;

/** Two pages and a Deno node talk; closing a page updates the other's member list. */
async function basic(browser: Browser): Promise<void> {
  const alice = await browser.newPage();
  await join(alice, relayUrl, { session: "web", nickname: "alice" }, "websocket");
  const bob = await browser.newPage();
  await join(bob, relayUrl, { session: "web", nickname: "bob" }, "websocket");
  await alice.locator("#members .member", { hasText: /^bob$/ }).waitFor(WAIT);
  assert.match(await alice.locator("#state").textContent() ?? "", /connected via WebSocket/);
  console.log("two pages joined");

  await say(alice, "hello from alice <b>not bold</b>");
  const line = await shows(bob, "hello from alice <b>not bold</b>");
  assert.equal(await line.locator(".from").textContent(), "alice");
  assert.equal(await bob.locator("#log b").count(), 0, "message text was rendered as markup");
  await status(alice, "hello from alice", "sent");
  await assertTimeStamps(bob);
  console.log("bob's page shows alice's message, as text, with a time stamp; alice's says sent");

  // A Deno node in the same session hears the browsers, and they hear it.
  await using deno = await RelayNode.connect(relayUrl, { session: "web", nickname: "deno" });
  await say(bob, "hi deno");
  assert.equal((await waitForEvent(deno, "message", () => true, WAIT.timeout)).text, "hi deno");
  deno.send("hi browsers");
  await shows(alice, "hi browsers");
  console.log("browsers and a Deno node talk");

  await bob.close();
  // A closed page says bye; if it could not, the relay waits out the grace
  // of a blip (2.5 keep-alives) before it declares bob gone.
  await alice.locator("#members .member", { hasText: /^bob$/ }).waitFor({
    state: "detached",
    timeout: 15_000,
  });
  await noted(alice, /^bob (left|is gone)/);
  console.log("closing bob's page updated alice's member list");
  await alice.close();
}

/**
 * A wrong secret and a bad nickname return to the join form with the reason,
 * the fields kept; alone, a message says "nobody else here".
 */
async function refusals(browser: Browser): Promise<void> {
  const page = await browser.newPage();
  await submitJoin(page, relayUrl, { session: "sec", nickname: "pat", secret: "wrong" });
  const error = page.locator("#join-error");
  await error.waitFor(WAIT);
  assert.match(await error.textContent() ?? "", /missing or wrong relay secret/);
  assert.ok(await page.locator("#join").isVisible(), "the join form is not back");
  assert.ok(!await page.locator("#chat").isVisible(), "the chat is still shown");
  assert.equal(await page.inputValue("#session"), "sec");
  assert.equal(await page.inputValue("#nickname"), "pat");
  assert.equal(await page.inputValue("#secret"), "wrong");
  await screenshot(page, "refused-secret");
  console.log("a wrong secret: back at the form with the reason, fields kept");

  // A nickname that mixes scripts (a Cyrillic "а"): refused with the relay's reason.
  await submitJoin(page, relayUrl, { session: "sec", nickname: "m\u0430x", secret });
  await page.locator("#join-error", { hasText: /mixes scripts/ }).waitFor(WAIT);
  assert.equal(await page.inputValue("#nickname"), "m\u0430x");
  console.log("a bad nickname: back at the form with the reason");

  await submitJoin(page, relayUrl, { session: "sec", nickname: "pat", secret });
  await connected(page);
  assert.ok(!await page.locator("#join-error").isVisible(), "the old refusal is still shown");
  assert.equal(await page.locator("#members .empty").textContent(), "nobody else here");
  await say(page, "anyone?");
  await status(page, "anyone?", "alone");
  assert.equal(await mine(page, "anyone?").locator(".status").textContent(), "nobody else here");
  console.log("alone: the member list and the message say nobody else here");

  await using deno = await RelayNode.connect(relayUrl, {
    session: "sec",
    nickname: "deno",
    secret,
  });
  await page.locator("#members .member", { hasText: /^deno$/ }).waitFor(WAIT);
  assert.equal(await page.locator("#members .empty").count(), 0);
  await say(page, "now someone");
  await status(page, "now someone", "sent");
  assert.equal((await waitForEvent(deno, "message", () => true, WAIT.timeout)).text, "now someone");
  console.log("with someone there, a message is sent and heard");
}

/**
 * Directed messages: a page to a Deno node (by clicking its name, and by
 * typing /to), a Deno node to the page, and a third party that hears
 * neither; a /to nobody is refused with the relay's reason.
 */
async function directed(browser: Browser): Promise<void> {
  const page = await browser.newPage();
  await join(page, relayUrl, { session: "dm", nickname: "pat" });
  await using deno = await RelayNode.connect(relayUrl, { session: "dm", nickname: "deno" });
  await using third = await RelayNode.connect(relayUrl, { session: "dm", nickname: "third" });
  const atDeno = recordEvents(deno);
  const atThird = recordEvents(third);
  await page.locator("#members .member", { hasText: /^third$/ }).waitFor(WAIT);

  // Clicking a member fills in "/to name ".
  await page.click("#members .member:text-is('deno')");
  assert.equal(await page.inputValue("#text"), "/to deno ");
  await page.locator("#text").pressSequentially("just for deno");
  await page.press("#text", "Enter");
  await atDeno.until(() => atDeno.texts.includes("just for deno"), "deno hearing pat");
  const got = atDeno.events.find((e) => e.type === "message" && e.text === "just for deno");
  assert.deepEqual(got, { type: "message", from: "pat", to: "deno", text: "just for deno" });
  await status(page, "just for deno", "sent");
  const sent = mine(page, "just for deno");
  assert.ok(await sent.evaluate((li) => li.classList.contains("directed")));
  assert.equal(await sent.locator(".to").textContent(), "\u2192\u00a0deno");
  assert.equal(await sent.locator(".text").textContent(), "just for deno");
  console.log("clicking deno and typing sends a directed message, shown as directed");

  deno.sendTo("pat", "just for pat");
  const line = await shows(page, "just for pat");
  assert.ok(await line.evaluate((li) => li.classList.contains("directed")));
  assert.equal(await line.locator(".from").textContent(), "deno");
  assert.equal(await line.locator(".to").textContent(), "\u2192\u00a0you");
  console.log("a directed message from deno shows as directed on the page");

  await say(page, "/to third hi third");
  await atThird.until(() => atThird.texts.includes("hi third"), "third hearing pat");
  await say(page, "/to nobody hello?");
  await status(page, "hello?", "refused");
  assert.match(await mine(page, "hello?").locator(".status").textContent() ?? "", /no node/);
  console.log("/to third reaches third; /to nobody is refused with the reason");

  // Broadcasts close the exchange: messages from one sender arrive in order,
  // so anything directed elsewhere would have come before them. Deno's waits
  // until third has the page's: two senders' messages have no order between
  // them (this raced once on a loaded machine).
  await say(page, "for everyone");
  await atThird.until(() => atThird.texts.includes("for everyone"), "third hearing pat");
  deno.send("everyone again");
  await atThird.until(() => atThird.texts.includes("everyone again"), "third hearing deno");
  await atDeno.until(() => atDeno.texts.includes("for everyone"), "deno hearing pat");
  await shows(page, "everyone again");
  assert.deepEqual(atThird.texts, ["hi third", "for everyone", "everyone again"]);
  assert.deepEqual(atDeno.texts, ["just for deno", "for everyone"]);
  assert.deepEqual(await received(page), ["just for pat", "everyone again"]);
  await screenshot(page, "directed");
  console.log("the third party saw neither directed message");
}

/**
 * A relay that welcomes the page and closes it (4503) at once, every time:
 * the page is dropped four times (the test measures the gaps between).
 */
async function dropped(browser: Browser): Promise<void> {
  const page = await browser.newPage();
  await submitJoin(page, relayUrl, { session: "s", nickname: "n" });
  // Four "disconnected" notes: four connections welcomed and closed.
  await page.waitForFunction(
    `[...document.querySelectorAll("#log li.gap")]
      .filter((li) => li.textContent.includes("disconnected")).length >= 4`,
    undefined,
    WAIT,
  );
  console.log("dropped four times");
}

const scenarios: Record<string, (browser: Browser) => Promise<void>> = {
  basic,
  refusals,
  directed,
  dropped,
};
const browser = await launch();
try {
  await scenarios[scenario](browser);
} finally {
  await browser.close();
}
