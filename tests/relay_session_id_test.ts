/**
 * Session ids as TcpJLib used them: any printable text names a room. Ids stay
 * out of markup (the status page) and out of metric labels.
 */

import assert from "node:assert/strict";
import { RelayNode, RelayRefusedError, type RelayTransportKind } from "../mod.ts";
import { startRelay, waitForEvent } from "./_relay.ts";
import { renderRecord, waitUntil, withLogs } from "./_helpers.ts";

const TRANSPORTS: RelayTransportKind[] = ["websocket", "http"];

for (const transport of TRANSPORTS) {
  Deno.test(`relay (${transport}): TcpJLib's own session id "a17&&32" joins and chats`, async () => {
    await using relay = startRelay();
    const session = "a17&&32";
    await using a = await RelayNode.connect(relay.url, { session, nickname: "a", transport });
    await using b = await RelayNode.connect(relay.url, { session, nickname: "b", transport });
    assert.equal(a.transport, transport);
    await waitForEvent(a, "join", (e) => e.nickname === "b");
    b.send("hello from b");
    assert.equal((await waitForEvent(a, "message")).text, "hello from b");
    a.sendTo("b", "hello from a");
    assert.deepEqual(await waitForEvent(b, "message"), {
      type: "message",
      from: "a",
      to: "b",
      text: "hello from a",
    });
  });
}

Deno.test("relay: a session id that looks like markup is never rendered as markup on /, nor a metric label", async () => {
  await using relay = startRelay();
  const session = "<b>x</b>";
  await using a = await RelayNode.connect(relay.url, { session, nickname: "a" });
  await using b = await RelayNode.connect(relay.url, { session, nickname: "b", transport: "http" });
  assert.equal(b.transport, "http");
  await waitForEvent(a, "join", (e) => e.nickname === "b");
  // Something refused in that room, so /metrics has labelled series to check.
  a.sendTo("nobody", "x");
  assert.equal((await waitForEvent(a, "error")).code, "no-such-node");

  const page = await (await fetch(`${relay.url}/`)).text();
  assert.match(page, /1 session\(s\), 2 node\(s\)/);
  assert.ok(!page.includes("<b>"), "the status page carries markup from a session id");

  const metrics = await (await fetch(`${relay.url}/metrics`)).text();
  assert.ok(!metrics.includes("x</b>") && !metrics.includes("&lt;b"), "a metric names the room");
  const labels = [...metrics.matchAll(/\{([^}]*)\}/g)].map((m) => m[1]);
  assert.ok(labels.length > 0, "no labelled series to check");
  for (const label of labels) assert.match(label, /^reason="[a-z-]+"$/);
});

Deno.test("relay: a session id with a control character is refused with a reason, on both transports", async () => {
  await using relay = startRelay();
  const res = await fetch(`${relay.url}/relay/stream`, {
    method: "POST",
    body: JSON.stringify({ t: "hello", session: "lab\u0007", nickname: "n" }),
  });
  assert.equal(res.status, 400);
  assert.deepEqual(await res.json(), {
    error: "bad-request",
    message: "the session id contains control, format or invisible characters",
  });
  for (const transport of TRANSPORTS) {
    await assert.rejects(
      RelayNode.connect(relay.url, { session: "lab\u0000", nickname: "n", transport }),
      (error) =>
        error instanceof RelayRefusedError && error.code === "bad-request" &&
        /session id contains control/.test(error.message),
    );
  }
  assert.equal(relay.relay.stats.nodes, 0);
});

Deno.test("a session id that reads as log text of its own is quoted in the relay's log: no node writes lines for the operator", async () => {
  const lines = await withLogs(async (records) => {
    await using relay = startRelay();
    await using eve = await RelayNode.connect(relay.url, {
      session: "ops as peer; Node admin left",
      nickname: "eve",
    });
    await eve.close();
    // The relay logs the leave as the bye reaches it.
    await waitUntil(
      () => records.some((r) => renderRecord(r).startsWith("Node eve left")),
      "the leave logged",
    );
    return records.map(renderRecord);
  });
  assert.ok(
    lines.includes('Node eve joined "ops as peer; Node admin left" as peer'),
    lines.join("\n"),
  );
  assert.ok(lines.includes('Node eve left "ops as peer; Node admin left"'), lines.join("\n"));
});
