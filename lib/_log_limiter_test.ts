import assert from "node:assert/strict";
import { LogLimiter, type Properties } from "./_log_limiter.ts";

/** Renders a record as LogTape's text formatters do. */
function render(template: string, properties: Properties): string {
  return template.replace(/\{(\w+)\}/g, (_, name) => String(properties[name]));
}

Deno.test("LogLimiter: a flood costs one line per kind per interval, summarised", () => {
  const lines: string[] = [];
  const clock = { now: 0 };
  const limiter = new LogLimiter(
    (template, properties) => lines.push(render(template, properties)),
    () => clock.now,
  );
  assert.equal(limiter.event("a", "refused 1 from A"), true);
  for (let i = 2; i <= 1843; i++) limiter.event("a", `refused ${i} from A`);
  assert.equal(limiter.event("b", "refused from B"), true, "another kind is not held back");
  assert.deepEqual(lines, ["refused 1 from A", "refused from B"]);
  clock.now = 10_500;
  limiter.event("a", "refused 1844 from A");
  assert.deepEqual(lines.slice(2), [
    "1842 more in the last 11 s; the last: refused 1843 from A",
    "refused 1844 from A",
  ]);
  limiter.event("a", "refused 1845 from A");
  limiter.flush();
  assert.equal(lines.at(-1), "1 more in the last 1 s; the last: refused 1845 from A");
  limiter.flush();
  assert.equal(lines.length, 5, "nothing left to summarise");
});

/** A limiter on a clock and timers the test moves and fires by hand. */
function onFakeTime() {
  const lines: string[] = [];
  const clock = { now: 0 };
  const timers: { fire: () => void; at: number }[] = [];
  const limiter = new LogLimiter(
    (template, properties) => lines.push(render(template, properties)),
    () => clock.now,
    (fire, ms) => {
      const timer = { fire, at: clock.now + ms };
      timers.push(timer);
      return () => timers.splice(timers.indexOf(timer), 1);
    },
  );
  return { lines, clock, timers, limiter };
}

Deno.test("LogLimiter: the summary is written when the interval ends, without waiting for another event", () => {
  const { lines, clock, timers, limiter } = onFakeTime();
  limiter.event("a", "refused from A");
  assert.equal(timers.length, 0, "nothing to summarise, no timer");
  clock.now = 3000;
  limiter.event("a", "refused again from A");
  limiter.event("a", "and again from A");
  assert.equal(timers.length, 1, "one timer, however many are held back");
  assert.equal(timers[0].at, 10_000, "due when the first one's interval ends");
  clock.now = 10_000;
  timers.shift()!.fire();
  assert.deepEqual(lines, [
    "refused from A",
    "2 more in the last 10 s; the last: and again from A",
  ]);
  // A new interval: the next one is written as it comes.
  clock.now = 10_001;
  assert.equal(limiter.event("a", "refused later from A"), true);
  // Closed: nothing is scheduled any more.
  limiter.event("a", "one more");
  limiter.flush();
  assert.equal(timers.length, 0);
  limiter.event("a", "after close");
  limiter.event("a", "after close, again");
  assert.equal(timers.length, 0);
});

Deno.test("LogLimiter: a kind whose interval ends sooner moves the summary timer up", () => {
  const { lines, clock, timers, limiter } = onFakeTime();
  clock.now = 5000;
  limiter.event("late", "late 1");
  clock.now = 6000;
  limiter.event("late", "late 2"); // due at 15 s
  // Kind "b" began before "late" did.
  clock.now = 0;
  limiter.event("b", "b 1");
  clock.now = 7000;
  limiter.event("b", "b 2"); // due at 10 s: sooner
  assert.deepEqual(timers.map((t) => t.at), [10_000]);
  clock.now = 10_000;
  timers.shift()!.fire();
  assert.equal(lines.at(-1), "1 more in the last 10 s; the last: b 2");
  assert.deepEqual(timers.map((t) => t.at), [15_000], "then the next one due");
  limiter.flush();
});

Deno.test("LogLimiter: records keep their properties, the summary the last one's with its count", () => {
  const records: [string, Properties][] = [];
  const clock = { now: 0 };
  const limiter = new LogLimiter(
    (template, properties) => records.push([template, properties]),
    () => clock.now,
  );
  limiter.event("lost", "Session {id} lost its link: {reason}", { id: "a{b}", reason: "reset" });
  limiter.event("lost", "Session {id} lost its link: {reason}", { id: "a{b}", reason: "timeout" });
  clock.now = 2000;
  limiter.flush();
  assert.deepEqual(records, [
    ["Session {id} lost its link: {reason}", { id: "a{b}", reason: "reset" }],
    [
      "{summarized} more in the last {summarySeconds} s; the last: Session {id} lost its link: {reason}",
      { id: "a{b}", reason: "timeout", summarized: 1, summarySeconds: 2 },
    ],
  ]);
});

Deno.test("LogLimiter: an event may not use the summary's property names (the summary said its own value there)", () => {
  const limiter = new LogLimiter(() => {});
  assert.throws(
    () => limiter.event("a", "after {summarySeconds} s", { summarySeconds: 1 }),
    TypeError,
  );
  assert.throws(() => limiter.event("a", "{summarized}", { summarized: 1 }), TypeError);
});
