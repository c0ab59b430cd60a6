import assert from "node:assert/strict";
import { heldBytes, History, type HistoryEntry } from "./_history.ts";

Deno.test("History: what it drops is let go at once, not when its array is next compacted; clear() lets go of everything", async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "run with --v8-flags=--expose-gc (deno task test does)");
  const budget = { used: 0, max: Infinity, evict() {} };
  const history = new History({ count: 10, bytes: 1 << 20, age: 60_000 }, budget);
  const refs: WeakRef<HistoryEntry>[] = [];
  for (let offset = 1; offset <= 100; offset++) {
    const entry: HistoryEntry = { offset, at: 0, from: "a", role: "peer", data: "x".repeat(100) };
    refs.push(new WeakRef(entry));
    history.append(entry);
  }
  const alive = async () => {
    await new Promise((resolve) => setTimeout(resolve, 0)); // weak references hold for the turn
    gc();
    return refs.filter((ref) => ref.deref() !== undefined).length;
  };
  assert.equal(history.size, 10);
  assert.equal(budget.used, 1000);
  assert.equal(await alive(), 10, "messages dropped, still held");
  history.clear();
  assert.deepEqual([history.size, budget.used, history.offset], [0, 0, 100]);
  // (The test's own suspended frame may still hold the last one it made.)
  assert.ok(await alive() <= 1, "messages cleared, still held");
  assert.equal(history.since(50), null, "what was cleared cannot be recovered");
});

Deno.test("heldBytes: one byte a character in Latin-1, two past it", () => {
  assert.equal(heldBytes("abcé"), 4);
  assert.equal(heldBytes("ab漢"), 6);
  assert.equal(heldBytes("a😀"), 6);
});
