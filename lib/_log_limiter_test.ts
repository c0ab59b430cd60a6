import assert from "node:assert/strict";
import { LogLimiter } from "./_log_limiter.ts";

Deno.test("LogLimiter: a flood costs one line per kind per interval, summarised", () => {
  const lines: string[] = [];
  const clock = { now: 0 };
  const limiter = new LogLimiter((line) => lines.push(line), () => clock.now);
  assert.equal(limiter.event("a", "refused 1 from A"), true);
  for (let i = 2; i <= 1843; i++) limiter.event("a", `refused ${i} from A`);
  assert.equal(limiter.event("b", "refused from B"), true, "another kind is not held back");
  assert.deepEqual(lines, ["refused 1 from A", "refused from B"]);
  clock.now = 10_500;
  limiter.event("a", "refused 1844 from A");
  assert.deepEqual(lines.slice(2), [
    "1,842 more in the last 11 s; the last: refused 1843 from A",
    "refused 1844 from A",
  ]);
  limiter.event("a", "refused 1845 from A");
  limiter.flush();
  assert.equal(lines.at(-1), "1 more in the last 1 s; the last: refused 1845 from A");
  limiter.flush();
  assert.equal(lines.length, 5, "nothing left to summarise");
});
