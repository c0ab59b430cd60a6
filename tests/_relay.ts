/** Helpers for relay tests: a relay on a free loopback port, and event waiting. */

import { type RelayEvent, type RelayNode, serveRelay, type ServeRelayOptions } from "../mod.ts";

/** A relay on 127.0.0.1 with a free port. */
export function startRelay(options: ServeRelayOptions = {}) {
  const server = serveRelay({ hostname: "127.0.0.1", port: 0, onListen() {}, ...options });
  return Object.assign(server, { url: `http://127.0.0.1:${server.addr.port}` });
}

/**
 * Reads `node`'s events until one matches, within `ms`; returns it. Events
 * read on the way are returned in `seen` for tests that care.
 */
export async function waitForEvent<T extends RelayEvent["type"]>(
  node: RelayNode,
  type: T,
  match: (event: Extract<RelayEvent, { type: T }>) => boolean = () => true,
  ms = 5000,
): Promise<Extract<RelayEvent, { type: T }>> {
  const iterator = node.events[Symbol.asyncIterator]();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${node.nickname}: no ${type} event within ${ms} ms`)),
      ms,
    );
  });
  try {
    for (;;) {
      const next = await Promise.race([iterator.next(), timeout]);
      if (next.done) throw new Error(`${node.nickname}: events ended while waiting for ${type}`);
      const event = next.value;
      if (event.type === type && match(event as Extract<RelayEvent, { type: T }>)) {
        return event as Extract<RelayEvent, { type: T }>;
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Reads every event of `node` in the background, in order, and wakes
 * `until` waiters on each one: for tests that watch a long exchange.
 */
export function recordEvents(node: RelayNode) {
  const events: RelayEvent[] = [];
  const waiters = new Set<() => void>();
  const reading = (async () => {
    for await (const event of node.events) {
      events.push(event);
      for (const wake of waiters) wake();
    }
  })();
  return {
    events,
    /** The texts of the messages received so far, in order. */
    get texts(): string[] {
      return events.flatMap((e) => e.type === "message" ? [e.text] : []);
    },
    /** Resolves once `condition` holds (checked on each event), within `ms`. */
    async until(condition: () => boolean, what: string, ms = 30_000): Promise<void> {
      let late = false;
      const deadline = setTimeout(() => {
        late = true;
        waiters.forEach((wake) => wake());
      }, ms);
      try {
        while (!condition()) {
          if (late) {
            throw new Error(`${node.nickname}: ${what}: not so within ${ms} ms`);
          }
          await new Promise<void>((resolve) => {
            const wake = () => {
              waiters.delete(wake);
              resolve();
            };
            waiters.add(wake);
          });
        }
      } finally {
        clearTimeout(deadline);
      }
    },
    /** Resolves once the node has closed and every event is read. */
    done: () => reading,
  };
}
