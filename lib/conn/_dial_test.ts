import assert from "node:assert/strict";
import type { Link } from "../link/link.ts";
import { dialAndHandshake, DialTimeoutError } from "./_dial.ts";

Deno.test("dialAndHandshake: a dialer that ignores its abort still fails at the deadline, and the link it hands over late is closed", async () => {
  const late = Promise.withResolvers<Link>();
  let dials = 0;
  // Takes the signal and never looks at it (a user's dialer may).
  const deaf = () => {
    dials++;
    return late.promise;
  };
  await assert.rejects(
    dialAndHandshake(deaf, 50, undefined, () => Promise.resolve()),
    DialTimeoutError,
  );
  assert.equal(dials, 1);
  let closed = false;
  late.resolve({ close: () => closed = true } as unknown as Link);
  await late.promise;
  await Promise.resolve();
  assert.ok(closed, "nobody took the link: it is closed, not leaked");
});
