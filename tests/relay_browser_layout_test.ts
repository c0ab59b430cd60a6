/**
 * The chat page's layout in chromium at desktop (1280×800) and phone
 * (375×667) size, after a 300-character word: element boxes, not looks
 * (the screenshots in /tmp/chat-shots are for people).
 */

import assert from "node:assert/strict";
import { runBrowserScript } from "./_browser_run.ts";
import { startRelay } from "./_relay.ts";

Deno.test("relay chat page in chromium: at 1280 and 375 px wide, a 300-character word and a long nickname keep the message box, Send and the member list in view, with no sideways scroll", async () => {
  // A wide keep-alive grace: a browser starved of CPU on a loaded machine is not the subject.
  await using relay = startRelay({ fadeAfter: 30_000 });
  const stdout = await runBrowserScript("./_browser_layout.ts", relay.url);
  assert.match(stdout, /desktop: the input, Send and the member list stay in view/);
  assert.match(stdout, /phone: the input, Send and the member list stay in view/);
});
