/**
 * The relay's chat page in a real browser: Debian chromium, driven by
 * playwright-core (the system's chromium; no browser download), in a child
 * process (`_browser_chat.ts`, run by `_browser_run.ts`).
 */

import assert from "node:assert/strict";
import { waitUntil } from "./_helpers.ts";
import { runBrowserScript } from "./_browser_run.ts";
import { startRelay, welcomeAndDrop } from "./_relay.ts";

/**
 * A wide keep-alive grace where a test is not about it: a browser starved of
 * CPU on a loaded machine is not declared gone halfway through.
 */
const GRACE = 30_000;

Deno.test("relay chat page in chromium: one page sends, the other shows it; closing one updates the other's members", async () => {
  await using relay = startRelay();
  const stdout = await runBrowserScript("./_browser_chat.ts", "basic", relay.url);
  assert.match(stdout, /closing bob's page updated alice's member list/);
  // A page the browser closed without its bye is declared gone after the grace of a blip.
  await waitUntil(() => relay.relay.stats.nodes === 0, "the nodes of the closed browser leaving");
});

Deno.test("relay chat page in chromium: a wrong secret or a bad nickname returns to the join form with the reason; alone, a message says nobody else here", async () => {
  await using relay = startRelay({ secret: "s3cret", fadeAfter: GRACE });
  const stdout = await runBrowserScript("./_browser_chat.ts", "refusals", relay.url, "s3cret");
  assert.match(stdout, /a wrong secret: back at the form/);
  assert.match(stdout, /alone: the member list and the message say nobody else here/);
});

Deno.test("relay chat page in chromium: directed messages both ways (click a member, /to name), a third node hears neither", async () => {
  await using relay = startRelay({ fadeAfter: GRACE });
  const stdout = await runBrowserScript("./_browser_chat.ts", "directed", relay.url);
  assert.match(stdout, /the third party saw neither directed message/);
});

Deno.test("relay chat page in chromium: a relay that drops it just after each welcome (its cluster store down) is redialed with a growing backoff, not at once", async () => {
  await using relay = welcomeAndDrop(4503, "the relay cannot reach its cluster store");
  await runBrowserScript("./_browser_chat.ts", "dropped", relay.url);
  // 250 ms doubling, jittered to [0.8, 1.2): before, every redial went at once.
  const gaps = relay.gaps();
  assert.ok(gaps.length >= 3, `${relay.hellos.length} hellos`);
  assert.ok(gaps[0] >= 200 && gaps[1] >= 400 && gaps[2] >= 800, `gaps ${gaps.map(Math.round)}`);
});
