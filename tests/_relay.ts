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
