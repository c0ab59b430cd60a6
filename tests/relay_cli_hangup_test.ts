/**
 * The relay CLI and SIGHUP: in a terminal that closes, a clean stop that its
 * nodes hear; without a terminal, SIGHUP is left to whoever started it.
 */

import assert from "node:assert/strict";
import { RelayNode } from "../mod.ts";
import { stopSignals } from "../cli/_common.ts";
import { freePort, waitUntil, within } from "./_helpers.ts";
import { recordEvents } from "./_relay.ts";

const CLI = new URL("../cli/relay.ts", import.meta.url).pathname;

Deno.test("relay CLI in a terminal that closes (SIGHUP): a clean stop, its nodes told why", async () => {
  const port = freePort();
  const command = [
    Deno.execPath(),
    ...["run", `--allow-net=127.0.0.1:${port}`, CLI, "--open"],
    ...["--hostname", "127.0.0.1", "--port", String(port)],
  ].map((word) => `'${word}'`).join(" ");
  // `script` gives the relay a terminal of its own; killing `script` closes
  // it, and the kernel sends the relay SIGHUP, as when a terminal window closes.
  const terminal = new Deno.Command("script", {
    args: ["-qfec", command, "/dev/null"],
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
    env: { NO_COLOR: "1" },
  }).spawn();
  let output = "";
  const listening = Promise.withResolvers<void>();
  const reading = (async () => {
    for await (const text of terminal.stdout.pipeThrough(new TextDecoderStream())) {
      output += text;
      if (/Relay listening/.test(output)) listening.resolve();
    }
  })().catch(() => {});
  try {
    await within(30_000, "the relay listening in its terminal", listening.promise);
    await using node = await RelayNode.connect(`http://127.0.0.1:${port}`, {
      session: "s",
      nickname: "n",
      transport: "websocket",
      backoff: { initial: 60_000, max: 60_000 },
    });
    const events = recordEvents(node);
    terminal.kill("SIGKILL");
    await events.until(
      () => events.events.some((e) => e.type === "state" && e.state === "disconnected"),
      "the relay gone",
    );
    const lost = events.events.find((e) => e.type === "state" && e.state === "disconnected");
    // Killed by the signal, its connections would just break.
    assert.match(lost?.type === "state" ? lost.reason ?? "" : "", /relay shutting down/);
  } finally {
    try {
      terminal.kill("SIGKILL");
    } catch {
      // Gone already.
    }
    await terminal.status;
    await terminal.stdin.close().catch(() => {});
    await reading;
    // The relay is no child of ours to wait for: its port closing says it is gone.
    await waitUntil(
      async () => {
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port })).close();
          return false;
        } catch {
          return true;
        }
      },
      "the relay's port closed",
      30_000,
      50,
    );
  }
});

Deno.test("SIGHUP stops a service only on a terminal: nohup ignores it for the service, and a handler would undo that", () => {
  assert.deepEqual(stopSignals(true), ["SIGINT", "SIGTERM", "SIGHUP"]);
  assert.deepEqual(stopSignals(false), ["SIGINT", "SIGTERM"]);
});
