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

Deno.test("dialAndHandshake: an abort that lands as the dial resolves closes the link and fails the attempt (no handshake on an aborted one)", async () => {
  const parent = new AbortController();
  let closed = false;
  const link = { close: () => closed = true } as unknown as Link;
  const dialer = () => {
    const dialed = Promise.resolve(link);
    // Runs after untilAborted has taken the link, before dialAndHandshake resumes.
    dialed.then(() => {}).then(() => parent.abort(new Error("the owner closed")));
    return dialed;
  };
  let handshakes = 0;
  await assert.rejects(
    dialAndHandshake(dialer, 60_000, parent.signal, () => {
      handshakes++;
      return Promise.resolve();
    }),
  );
  assert.equal(handshakes, 0);
  assert.ok(closed, "the link is closed");
});
