/**
 * The relay's chat page in a real browser: Debian chromium, driven by
 * playwright-core (the system's chromium; no browser download).
 */

import assert from "node:assert/strict";
import { waitUntil } from "./_helpers.ts";
import { startRelay } from "./_relay.ts";

Deno.test("relay chat page in chromium: one page sends, the other shows it; closing one updates the other's members", async () => {
  await using relay = startRelay();
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      new URL("./_browser_chat.ts", import.meta.url).pathname,
      relay.url,
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${stdout}\n${stderr}`);
  assert.match(stdout, /closing bob's page updated alice's member list/);
  // A page the browser closed without its bye is declared gone after the grace of a blip.
  await waitUntil(() => relay.relay.stats.nodes === 0, "the nodes of the closed browser leaving");
});
