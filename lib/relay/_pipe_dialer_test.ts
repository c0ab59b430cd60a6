import assert from "node:assert/strict";
import { Changes } from "../_changes.ts";
import type { Link } from "../link/link.ts";
import { type DialHost, PipeDialer, STALE_GRACE_MS } from "./_pipe_dialer.ts";

/** A node whose state the test sets; its changes as RelayNode's. */
class FakeNode implements DialHost {
  connected = true;
  #generation = 1;
  #changes = new Changes();
  joined(): boolean {
    return this.connected;
  }
  generation(): number {
    return this.#generation;
  }
  closed(): boolean {
    return false;
  }
  hasMember(): boolean {
    return true;
  }
  memberNews(): number {
    return this.#generation;
  }
  nextChange(signal: AbortSignal, ms?: number): Promise<void> {
    return this.#changes.next(signal, ms);
  }
  set(connected: boolean): void {
    this.connected = connected;
    if (connected) this.#generation++;
    this.#changes.notify();
  }
}

const link = { close() {} } as unknown as Link;

/** `open` calls, each settled by the test: `opens[i].resolve(link)` or `.reject(error)`. */
function scriptedOpen() {
  const opens: PromiseWithResolvers<Link>[] = [];
  const waiters: (() => void)[] = [];
  return {
    opens,
    open: () => {
      const call = Promise.withResolvers<Link>();
      opens.push(call);
      waiters.splice(0).forEach((wake) => wake());
      return call.promise;
    },
    /** Resolves once `n` opens were made. */
    async made(n: number): Promise<void> {
      while (opens.length < n) await new Promise<void>((resolve) => waiters.push(resolve));
    },
  };
}

Deno.test("PipeDialer: a wait that every call left (their session aborted them) fails no later call: it dials", async () => {
  const node = new FakeNode();
  const script = scriptedOpen();
  const dialer = new PipeDialer(node, "peer", script.open);
  const first = new AbortController();
  const failing = dialer.dial(first.signal).catch((error) => error);
  const winning = dialer.dial(new AbortController().signal);
  await script.made(2);
  // One attempt fails as if the relay were gone (a wait opens), the other links.
  script.opens[0].reject(new Error("connection reset"));
  script.opens[1].resolve(link);
  assert.equal(await winning, link);
  first.abort(new Error("raced out"));
  assert.match(String(await failing), /raced out/);
  // Long after, with the node there all along, a new call dials. (Time is
  // what this test is about: the wait left open ran out meanwhile.)
  await new Promise((resolve) => setTimeout(resolve, STALE_GRACE_MS + 50));
  const later = dialer.dial(new AbortController().signal);
  await script.made(3);
  script.opens[2].resolve(link);
  assert.equal(await later, link);
});

Deno.test("PipeDialer: of two sessions waiting on one dialer (a tunnel client's), both dial once the node is back", async () => {
  const node = new FakeNode();
  node.set(false);
  const script = scriptedOpen();
  const dialer = new PipeDialer(node, "peer", script.open);
  const a = dialer.dial(new AbortController().signal);
  const b = dialer.dial(new AbortController().signal);
  // Before, session A's call parked once B's went through, until its own deadline.
  node.set(true);
  await script.made(1);
  script.opens[0].resolve(link);
  assert.equal(await b, link);
  await script.made(2);
  script.opens[1].resolve(link);
  assert.equal(await a, link);
});

Deno.test("PipeDialer: a waited dial whose open ignores its abort holds no later call, and its late link is closed", async () => {
  const node = new FakeNode();
  node.set(false);
  const script = scriptedOpen(); // its opens never look at their signal
  const dialer = new PipeDialer(node, "peer", script.open);
  const first = new AbortController();
  const stuck = dialer.dial(first.signal).catch((error) => error);
  node.set(true);
  await script.made(1);
  first.abort(new Error("the session gave up"));
  assert.match(String(await stuck), /the session gave up/);
  // Before, the first open held the turn until it settled: never.
  const next = dialer.dial(new AbortController().signal);
  await script.made(2);
  script.opens[1].resolve(link);
  assert.equal(await next, link);
  let closed = false;
  script.opens[0].resolve({ close: () => closed = true } as unknown as Link);
  await script.opens[0].promise;
  await Promise.resolve();
  assert.ok(closed, "nobody took the late link: it is closed");
});
