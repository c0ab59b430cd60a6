import assert from "node:assert/strict";
import { Changes } from "./_changes.ts";

Deno.test("Changes: next resolves at a notify, or after its time, and rejects when its signal aborts; nothing is left behind", async () => {
  const changes = new Changes();
  const never = new AbortController().signal;
  const notified = changes.next(never);
  changes.notify();
  await notified;
  await changes.next(never, 1); // no notify: its time runs out
  const stop = new AbortController();
  const aborted = changes.next(stop.signal);
  stop.abort(new Error("stop"));
  await assert.rejects(aborted, /stop/);
  await assert.rejects(changes.next(stop.signal), /stop/); // aborted already
  // A notify with nobody waiting is lost, not kept for the next waiter.
  changes.notify();
  const later = new AbortController();
  const waiting = changes.next(later.signal).then(() => "woken", () => "aborted");
  later.abort();
  assert.equal(await waiting, "aborted");
});
