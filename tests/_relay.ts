/** Helpers for relay tests: a relay on a free loopback port, and event waiting. */

import {
  type RelayEvent,
  type RelayNode,
  type RelayNodeState,
  serveRelay,
  type ServeRelayOptions,
} from "../mod.ts";
import { chatPage } from "../lib/relay/_chat_page.ts";

/** A relay on 127.0.0.1 with a free port. */
export function startRelay(options: ServeRelayOptions = {}) {
  const server = serveRelay({ hostname: "127.0.0.1", port: 0, onListen() {}, ...options });
  return Object.assign(server, { url: `http://127.0.0.1:${server.addr.port}` });
}

/** A welcome as a relay sends it, to node `n` of session `s`, with `extra` fields. */
export function welcomeFrame(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    t: "welcome",
    session: "s",
    nickname: "n",
    role: "peer",
    token: "t",
    members: [],
    keepAlive: 60_000,
    ...extra,
  });
}

/**
 * A fake relay that welcomes every hello (as node `n` of session `s`, with
 * `extra` fields) and at once closes its WebSocket with `code` and `reason`:
 * a relay that drops its nodes. It serves the relay's chat page at `/chat`.
 * `hellos` holds when each hello came, and `hello(n)` resolves once the n-th has.
 */
export function welcomeAndDrop(code: number, reason: string, extra: Record<string, unknown> = {}) {
  const hellos: number[] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname === "/chat") return chatPage();
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (event) => {
      if (JSON.parse(event.data).t !== "hello") return;
      hellos.push(performance.now());
      for (const waiter of waiters) if (hellos.length >= waiter.n) waiter.resolve();
      socket.send(welcomeFrame(extra));
      socket.close(code, reason);
    };
    return response;
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    hellos,
    hello(n: number): Promise<void> {
      const { promise, resolve } = Promise.withResolvers<void>();
      waiters.push({ n, resolve });
      if (hellos.length >= n) resolve();
      return promise;
    },
    /** The gaps between hellos, ms. */
    gaps(): number[] {
      return hellos.slice(1).map((at, i) => at - hellos[i]);
    },
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
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
    /** Resolves once the node reports `state` in an event after the first `since`. */
    untilState(state: RelayNodeState, since: number, what: string): Promise<void> {
      return this.until(
        () => events.slice(since).some((e) => e.type === "state" && e.state === state),
        what,
      );
    },
    /** Resolves once the node has closed and every event is read. */
    done: () => reading,
  };
}

/**
 * A node of our own over HTTP streaming, as a client in another language
 * would be: the welcome read (its stream id, and its join token for
 * requests made by hand, such as pipes), then each relay frame on demand.
 */
export async function rawStreamNode(url: string, session: string, nickname: string) {
  const opened = await fetch(`${url}/relay/stream`, {
    method: "POST",
    body: JSON.stringify({ t: "hello", session, nickname }),
  });
  const reader = opened.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  const next = async (): Promise<Record<string, unknown>> => {
    for (let reads = 0; reads < 10_000; reads++) {
      const end = buffer.indexOf("\n\n");
      if (end >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").find((line) => line.startsWith("data: "));
        if (data) return JSON.parse(data.slice(6));
        continue;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("the event stream ended");
      buffer += value;
    }
    throw new Error("no frame in 10,000 reads");
  };
  const welcome = await next();
  const token = welcome.token as string;
  return {
    stream: welcome.stream as string,
    token,
    /** Sends `frames` upstream, as one POST. */
    async send(...frames: Record<string, unknown>[]): Promise<void> {
      const sent = await fetch(`${url}/relay/send`, {
        method: "POST",
        headers: { "x-relay-stream": welcome.stream as string },
        body: JSON.stringify(frames),
      });
      await sent.body?.cancel();
      if (sent.status !== 204) throw new Error(`POST /relay/send answered ${sent.status}`);
    },
    /**
     * A pipe request of this node, made by hand: to `to` (a dial), or
     * accepting pipe `id` (without `to`); resolves with the relay's answer.
     */
    pipe(id: string, to?: string): Promise<Response> {
      return fetch(`${url}/relay/pipe`, {
        method: "POST",
        headers: {
          "x-immortal-link": "open",
          "x-relay-session": session,
          "x-relay-nickname": nickname,
          "x-relay-token": token,
          "x-relay-pipe": id,
          ...(to === undefined ? {} : { "x-relay-pipe-to": to }),
        },
      });
    },
    /** The next frame of type `t` (others skipped). */
    async nextOf(t: string): Promise<Record<string, unknown>> {
      for (;;) {
        const frame = await next();
        if (frame.t === t) return frame;
      }
    },
    close: () => reader.cancel(),
  };
}
