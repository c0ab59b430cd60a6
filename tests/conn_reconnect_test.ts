// The client's redial loop against slow and refusing servers, with real links.
import assert from "node:assert/strict";
import {
  connect,
  type Dialer,
  ImmortalError,
  type Link,
  listen,
  type ResumedEvent,
  tcpDialer,
} from "../mod.ts";
import { controlledPath } from "./_controlled_path.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { nextEvent, patternHash, receiveAll, sendPattern, waitUntil, within } from "./_helpers.ts";

/** A link whose first read answers only after `ms`: a server slow to handshake. */
class SlowToAnswer implements Link {
  #link: Link;
  #wait: Promise<void> | null;
  constructor(link: Link, ms: number) {
    this.#link = link;
    this.#wait = new Promise((resolve) => setTimeout(resolve, ms));
  }
  get localAddr() {
    return this.#link.localAddr;
  }
  get remoteAddr() {
    return this.#link.remoteAddr;
  }
  async read(buffer: Uint8Array): Promise<number | null> {
    const wait = this.#wait;
    this.#wait = null;
    if (wait) await wait;
    return this.#link.read(buffer);
  }
  write(data: Uint8Array): Promise<void> {
    return this.#link.write(data);
  }
  close(): void {
    this.#link.close();
  }
}

Deno.test("a slow resume handshake is waited for, not raced to death", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const proxy = await FaultProxy.start({ targetPort: listener.addr.port });
  try {
    const base = tcpDialer({ hostname: "127.0.0.1", port: proxy.port });
    let slow = false;
    let dials = 0;
    // Every redial connects at once but its handshake takes 8× the probe
    // interval: racing it would abort each attempt before it can finish.
    const dialer: Dialer = async (signal) => {
      dials++;
      const link = await base(signal);
      return slow ? new SlowToAnswer(link, 400) : link;
    };
    await using client = await connect({ dialer, backoff: { probeInterval: 50 } });
    await using server = await listener.accept();
    slow = true;
    const resumed = nextEvent<ResumedEvent>(client, "resumed", 30_000);
    assert.equal(proxy.reset(), 1);
    await resumed;
    // One dial, perhaps a raced second while the first had no answer yet; no storm.
    assert.ok(dials <= 3, `${dials} dials for one resume`);
    const [sent, got] = await Promise.all([sendPattern(client, 9, 1 << 20), receiveAll(server)]);
    assert.equal(got.sha256, sent);
    assert.equal(sent, patternHash(9, 1 << 20));
    await server.closeWrite();
  } finally {
    await proxy.close();
  }
});

Deno.test("refused redials back off, and the session resumes once the server takes links again", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const proxy = await FaultProxy.start({ targetPort: listener.addr.port });
  try {
    let dials = 0;
    const base = tcpDialer({ hostname: "127.0.0.1", port: proxy.port });
    const dialer: Dialer = (signal) => {
      dials++;
      // Let the server take links again after five refusals: progress, not time.
      if (dials === 7) proxy.refuseNew(false);
      return base(signal);
    };
    await using client = await connect({ dialer, backoff: { initial: 5, max: 40 } });
    await using server = await listener.accept();
    proxy.refuseNew(true);
    const resumed = nextEvent<ResumedEvent>(client, "resumed", 30_000);
    assert.equal(proxy.reset(), 1);
    const event = await resumed;
    assert.ok(dials >= 7, `resumed after ${dials} dials`);
    assert.ok(event.downtimeMs >= 0);
    await server.closeWrite();
    await client.closeWrite();
  } finally {
    await proxy.close();
  }
});

Deno.test("a server that accepts but never answers the handshake: connect names the timeout", async () => {
  using silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) held.push(conn);
  })();
  try {
    await assert.rejects(
      connect({ port: silent.addr.port, handshakeTimeout: 200 }),
      (e: unknown) =>
        e instanceof ImmortalError && e.code === "unreachable" &&
        /no answer within 200 ms/.test(e.message),
    );
  } finally {
    silent.close();
    await accepting.catch(() => {});
    for (const conn of held) conn.close();
  }
});

Deno.test("connect's signal abandons a first connection whose handshake the server holds: aborted, and the link is closed", async () => {
  using silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const controller = new AbortController();
  const connecting = connect({ port: silent.addr.port, signal: controller.signal });
  const held = await silent.accept();
  try {
    controller.abort(new Error("the user gave up"));
    await assert.rejects(
      connecting,
      (e: unknown) =>
        e instanceof ImmortalError && e.code === "aborted" &&
        /abandoned/.test(e.message) && /the user gave up/.test(String(e.cause)),
    );
    // The client closed its end: the server's read ends (with the hello it sent, if any).
    const buffer = new Uint8Array(4096);
    while (await held.read(buffer) !== null) { /* the client's hello */ }
  } finally {
    held.close();
  }
});

Deno.test("a TLS server that refuses the handshake with an alert (handshake_failure): connect fails at once, as tls, not as an unreachable server to retry", async () => {
  using refusing = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const conn of refusing) {
      (async () => {
        await conn.read(new Uint8Array(4096)); // the ClientHello
        await conn.write(new Uint8Array([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])); // fatal alert 40
      })().catch(() => {}).finally(() => conn.close());
    }
  })();
  try {
    await assert.rejects(
      connect({ port: refusing.addr.port, tls: true }),
      (e: unknown) =>
        e instanceof ImmortalError && e.code === "tls" && /HandshakeFailure/.test(e.message) &&
        /the server refused the handshake$/.test(e.message),
    );
  } finally {
    refusing.close();
    await serving.catch(() => {});
  }
});

Deno.test("close() right after a complete exchange ends cleanly at both ends", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  for (let round = 0; round < 20; round++) {
    const client = await connect({ port: listener.addr.port });
    const server = await listener.accept();
    // The server hangs up the moment its session completes, from the event.
    server.addEventListener("closed", () => server.close());
    await client.write(new Uint8Array([1, 2, 3]));
    await client.closeWrite();
    await server.write(new Uint8Array([4, 5]));
    await server.closeWrite();
    assert.equal((await receiveAll(client)).bytes, 2);
    assert.equal((await receiveAll(server)).bytes, 3);
    // Neither end may see the complete exchange as an abort.
    await client.closed;
    await server.closed;
  }
});

/** A link that is up but never says anything: a handshake on it waits until it is closed. */
class SilentLink implements Link {
  readonly localAddr: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 1 };
  readonly remoteAddr: Deno.NetAddr = { transport: "tcp", hostname: "127.0.0.1", port: 2 };
  #closed = Promise.withResolvers<null>();
  read(): Promise<number | null> {
    return this.#closed.promise;
  }
  write(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.#closed.resolve(null);
  }
}

Deno.test("beside a stuck resume handshake, dials that fail at once are paced by the backoff, not relaunched in a loop that starves every timer", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const proxy = await FaultProxy.start({ targetPort: listener.addr.port });
  try {
    const base = tcpDialer({ hostname: "127.0.0.1", port: proxy.port });
    let dials = 0;
    let cut = false;
    let back = false;
    // A dialer as a relay node's pipes were while it was not joined: the
    // first redial gets a link whose handshake stalls (the relay died under
    // it), the next ones fail without waiting for anything (no I/O), and the
    // path is back once a timer armed at the tenth has fired.
    const dialer: Dialer = (signal) => {
      if (!cut || back) return base(signal);
      dials++;
      if (dials === 1) return Promise.resolve(new SilentLink());
      if (dials === 10) setTimeout(() => back = true, 0);
      return Promise.reject(new Error("not joined to the relay right now"));
    };
    await using client = await connect({
      dialer,
      backoff: { initial: 5, max: 20, probeInterval: 50 },
      resumeTimeout: 15_000,
    });
    await using server = await listener.accept();
    const resumed = nextEvent<ResumedEvent>(client, "resumed", 30_000);
    cut = true;
    assert.equal(proxy.reset(), 1);
    // Before the fix, the race that followed the stuck handshake relaunched a
    // dial each time one failed, in microtasks only: no timer fired until the
    // resume timeout ended the session.
    await resumed;
    assert.ok(dials >= 10 && dials <= 30, `${dials} failed dials for one resume`);
    const [sent, got] = await Promise.all([sendPattern(client, 3, 1 << 16), receiveAll(server)]);
    assert.equal(got.sha256, sent);
    await server.closeWrite();
  } finally {
    await proxy.close();
  }
});

Deno.test("a resume attempt the client gave up on, whose proof reaches the server after another attempt took and more was acknowledged, is refused alone: the session goes on", async () => {
  const path = controlledPath((link) => {
    // The first resume's link: its hello gets through, its proof is held on the way.
    if (link.index !== 1) return;
    let writes = 0;
    link.up.onWrite = () => {
      if (++writes === 2) link.up.hold();
    };
  });
  using listener = listen({ acceptor: path.acceptor });
  const client = await connect({ dialer: path.dialer, backoff: { initial: 5, max: 50 } });
  const server = await listener.accept();
  const buffer = new Uint8Array(64 * 1024);
  const readExactly = async (n: number) => {
    for (let got = 0; got < n;) got += (await client.read(buffer))!;
  };
  await server.write(new Uint8Array(1000));
  await readExactly(1000);
  path.links[0].cut();
  // The stalled handshake is raced by a second one, which takes.
  await waitUntil(() => path.links.length >= 3 && client.state === "connected", "a resume");
  await server.write(new Uint8Array(5000));
  await readExactly(5000);
  await waitUntil(() => server.stats.unackedBytes === 0, "the client's ack of them");
  // The first attempt's proof arrives now, claiming 1,000 bytes received.
  const answered = new Promise<void>((resolve) => path.links[1].down.onWrite = () => resolve());
  path.links[1].up.release();
  await answered; // the server's reject
  await new Promise((resolve) => setTimeout(resolve, 0)); // and what it did after
  assert.notEqual(server.state, "closed", "the session was ended by a stale attempt");
  await server.write(new Uint8Array(10));
  await readExactly(10);
  client.close();
  await Promise.allSettled([client.closed, server.closed]);
});

Deno.test("a ping queued while a dead link's write was stuck is not sent on the next link: the outage is not taken for a round trip", async () => {
  // The stamp of each ping the client writes on the second link, and when that link was dialed.
  const PING = [0x03, 0, 0, 0, 8]; // a ping frame's type and length, then its f64 stamp
  let dialedAt = Infinity;
  const firstPing = Promise.withResolvers<number>();
  const path = controlledPath((link) => {
    if (link.index !== 1) return;
    dialedAt = performance.now();
    link.up.onWrite = (chunk) => {
      for (let i = 0; i + PING.length + 8 <= chunk.length; i++) {
        if (PING.every((byte, j) => chunk[i + j] === byte)) {
          firstPing.resolve(new DataView(chunk.buffer, chunk.byteOffset + i + 5).getFloat64(0));
        }
      }
    };
  });
  const options = { heartbeatInterval: 400, deadLinkTimeout: 1200 };
  using listener = listen({ acceptor: path.acceptor, ...options });
  const client = await connect({
    dialer: path.dialer,
    ...options,
    backoff: { initial: 5, max: 50 },
  });
  const server = await listener.accept();
  // The link goes black with a write stuck on it (a full socket): the
  // heartbeat's ping waits behind it until the link is found dead.
  const dead = path.links[0];
  dead.up.blocked = true;
  dead.down.hold();
  const writing = client.write(new Uint8Array(100_000));
  const stamp = await firstPing.promise;
  assert.ok(stamp >= dialedAt, `a ping stamped ${dialedAt - stamp} ms before its link was dialed`);
  await writing;
  client.close();
  await Promise.allSettled([client.closed, server.closed]);
  for (const link of path.links) link.cut();
});

Deno.test("a server that closes its complete session keeps it for the client's bye: a client whose last ack was lost with the link resumes for it and ends cleanly", async () => {
  const path = controlledPath();
  const options = { heartbeatInterval: 100, deadLinkTimeout: 400 };
  using listener = listen({ acceptor: path.acceptor, ...options });
  const client = await connect({ dialer: path.dialer, ...options, backoff: { initial: 5 } });
  const server = await listener.accept();
  const buffer = new Uint8Array(1024);
  await server.write(new Uint8Array([1, 2, 3]));
  await server.closeWrite();
  assert.equal(await client.read(buffer), 3);
  assert.equal(await client.read(buffer), null);
  await waitUntil(() => server.stats.unackedBytes === 0, "the ack of the server's end");
  path.links[0].down.hold(); // what the server sends from now on is lost: its last ack
  await client.write(new Uint8Array([4, 5]));
  await client.closeWrite();
  assert.equal(await server.read(buffer), 2);
  assert.equal(await server.read(buffer), null);
  await server.closed; // complete at the server
  server.close(); // as `await using` does
  path.links[0].cut();
  await within(30_000, "the client's end", client.closed); // rejects with unknown-session if forgotten
});

/**
 * A session over `path` that both ends closed and read to the end: complete,
 * the client's bye on its way. Its closing lasts the client's dead-link time
 * (30 s), long enough for a resume; the listener is the caller's to close.
 */
async function endedBothWays(
  path: ReturnType<typeof controlledPath>,
  listenOptions: { resumeTimeout?: number } = {},
) {
  const listener = listen({ acceptor: path.acceptor, ...listenOptions });
  const client = await connect({
    dialer: path.dialer,
    deadLinkTimeout: 30_000,
    backoff: { initial: 5 },
  });
  const server = await listener.accept();
  await client.closeWrite();
  assert.equal(await server.read(new Uint8Array(8)), null);
  await server.closeWrite();
  assert.equal(await client.read(new Uint8Array(8)), null);
  return { listener, client, server };
}

Deno.test("a client whose bye is lost with a broken link resumes to say it again: the server's `closed` resolves, not rejects after its resume timeout", async () => {
  // The client's last write (its final ack, then bye) never reaches the
  // server, and the link breaks (a reset, not the server hanging up).
  const path = controlledPath((link) => {
    if (link.index > 0) return;
    link.up.onWrite = (chunk) => {
      const bye = chunk.length >= 5 && chunk.at(-5) === 0x07 &&
        chunk.subarray(-4).every((byte) => byte === 0);
      if (!bye) return;
      link.up.hold();
      queueMicrotask(() => link.cut());
    };
  });
  // Long enough that only the fix can pass: the server would give up after its resume timeout.
  const { listener, client, server } = await endedBothWays(path, { resumeTimeout: 60_000 });
  using _listener = listener;
  await within(30_000, "the client's end", client.closed);
  await within(30_000, "the server's end", server.closed); // rejected after 60 s without the bye
  assert.equal(path.links.length, 2, "one resume, for the bye");
});

Deno.test('a client whose link breaks after the server had its bye ends cleanly on the server\'s "unknown session", at the first', async () => {
  // The bye reaches the server, and the link breaks before the client sees
  // the server hang up: the client resumes for nothing, and is told so.
  const path = controlledPath((link) => {
    if (link.index > 0) return;
    link.up.onDeliver = (chunk) => {
      if (chunk.length >= 5 && chunk.at(-5) === 0x07) link.cut();
    };
  });
  const { listener, client, server } = await endedBothWays(path);
  using _listener = listener;
  await within(30_000, "the server's end", server.closed);
  await within(30_000, "the client's end", client.closed); // clean, on "unknown session"
  assert.equal(path.links.length, 2, "one resume, believed at once");
});

Deno.test("a client that completes without a link resumes to say bye within the closing's time, not its resume timeout; `closed` resolves once it gave up, nothing left running", async () => {
  // Every link after the first stalls in its handshake: the bye never goes.
  const finArrived = Promise.withResolvers<void>();
  const path = controlledPath((link) => {
    if (link.index > 0) link.down.hold();
    // A fin frame (type 0x05, length 8) read by the client.
    else link.down.onDeliver = (chunk) => chunk[0] === 0x05 && finArrived.resolve();
  });
  using listener = listen({ acceptor: path.acceptor });
  const client = await connect({ dialer: path.dialer, backoff: { initial: 5, max: 50 } });
  const server = await listener.accept();
  await client.closeWrite();
  assert.equal(await server.read(new Uint8Array(8)), null);
  await waitUntil(() => client.stats.unackedBytes === 0, "the ack of the client's end");
  await server.closeWrite();
  await finArrived.promise;
  path.links[0].cut();
  await waitUntil(() => client.state === "reconnecting", "the client losing its link");
  // The server's end, consumed with no link: complete, the bye still to say.
  assert.equal(await client.read(new Uint8Array(8)), null);
  await within(30_000, "the client's end", client.closed);
  // No close(): a program that awaited `closed` and returned has nothing
  // running (the sanitizers check: its redials kept timers for 120 s).
  server.close();
  await server.closed.catch(() => {});
});
