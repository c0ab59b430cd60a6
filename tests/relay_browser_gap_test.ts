/**
 * The chat page in chromium across a cut link: it marks the disconnect and
 * the reconnect, recovers what it missed once and in order (PROTOCOL.md
 * 2.21), does not announce again who was there, and sends what was typed
 * meanwhile. The cut is fired by page state, not a timer.
 */

import assert from "node:assert/strict";
import { runBrowserScript } from "./_browser_run.ts";
import { startRelay } from "./_relay.ts";

Deno.test("relay chat page in chromium, over WebSocket and over HTTP streaming: a cut link is marked, the missed messages come back once and in order, a longer gap is marked lost", async () => {
  // A long grace: this is about the gap, not how fast a loaded machine reconnects.
  await using relay = startRelay({ historyLength: 12, fadeAfter: 60_000 });
  const stdout = await runBrowserScript("./_browser_gap.ts", relay.url);
  for (const transport of ["websocket", "http"]) {
    assert.match(stdout, new RegExp(`${transport}: the gap is marked, the 10 missed messages`));
    assert.match(
      stdout,
      new RegExp(`${transport}: a gap longer than the history is marked as lost`),
    );
  }
  assert.ok(relay.relay.stats.replayed >= 20, "the relay replayed less than it should");
});
