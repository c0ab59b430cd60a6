// Closing our own WebSocket client link, against a WebSocket server the test
// plays by hand on loopback (it reads only when the test says so): the close
// frame never lands inside a data frame being written, and a server that
// stopped reading does not keep a closed link's socket open.

import assert from "node:assert/strict";
import { acceptKey, CLOSE_GRACE_MS, openWebSocketLink } from "../lib/link/_websocket_client.ts";
import { HttpLinkAcceptor, listen, webSocketDialer } from "../mod.ts";
import { within } from "./_helpers.ts";

/** A server that answers one WebSocket handshake, then reads only when told. */
async function handshakeServer() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = (async () => {
    const conn = await listener.accept();
    let head = "";
    const buffer = new Uint8Array(4096);
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error("the client left during the handshake");
      head += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const key = /^sec-websocket-key:\s*(\S+)/im.exec(head)![1];
    const answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
      `Connection: Upgrade\r\nSec-WebSocket-Accept: ${await acceptKey(key)}\r\n\r\n`;
    await conn.write(new TextEncoder().encode(answer));
    return conn;
  })();
  const url = new URL(`ws://127.0.0.1:${(listener.addr as Deno.NetAddr).port}/`);
  const link = await openWebSocketLink(url, new AbortController().signal);
  const conn = await accepted;
  listener.close();
  return { link, conn };
}

/** Reads until `count` bytes came (or the end); returns what came. */
async function readBytes(conn: Deno.Conn, count = Infinity): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let total = 0;
  const buffer = new Uint8Array(256 * 1024);
  while (total < count) {
    const n = await conn.read(buffer).catch(() => null);
    if (n === null) break;
    parts.push(buffer.slice(0, n));
    total += n;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** The client frames in `bytes`, unmasked, in order; a cut last frame is left out. */
function frames(bytes: Uint8Array): { opcode: number; payload: Uint8Array }[] {
  const out: { opcode: number; payload: Uint8Array }[] = [];
  for (let at = 0; at + 2 <= bytes.length;) {
    const b0 = bytes[at];
    const short = bytes[at + 1] & 0x7f;
    assert.equal(b0 & 0x70, 0, `reserved bits set at byte ${at}: not a frame boundary`);
    const lengthBytes = short === 126 ? 2 : short === 127 ? 8 : 0;
    if (at + 2 + lengthBytes + 4 > bytes.length) break;
    const view = new DataView(bytes.buffer, at + 2);
    const n = short === 126
      ? view.getUint16(0)
      : short === 127
      ? Number(view.getBigUint64(0))
      : short;
    const start = at + 2 + lengthBytes + 4;
    if (start + n > bytes.length) break;
    const mask = bytes.subarray(start - 4, start);
    const payload = bytes.slice(start, start + n);
    for (let i = 0; i < n; i++) payload[i] ^= mask[i & 3];
    out.push({ opcode: b0 & 0x0f, payload });
    at = start + n;
  }
  return out;
}

Deno.test("WebSocket client link: closing while a large write is under way sends the close frame after it, never inside a frame", async () => {
  const { link, conn } = await handshakeServer();
  try {
    // 8 MiB of zeros in 256 KiB messages; the server takes the first MiB and stops reading.
    const writing = link.write(new Uint8Array(8 << 20)).catch(() => "cut");
    const first = await readBytes(conn, 1 << 20);
    link.close();
    // Now everything, to the end of the stream (the close, or the grace cutting the socket).
    const rest = await readBytes(conn);
    const all = new Uint8Array(first.length + rest.length);
    all.set(first);
    all.set(rest, first.length);
    const got = frames(all);
    assert.ok(got.length > 0);
    for (const [i, frame] of got.entries()) {
      if (frame.opcode === 0x8) {
        assert.equal(i, got.length - 1, "the close frame is the last");
        assert.deepEqual([...frame.payload], [0x03, 0xe8]);
        continue;
      }
      assert.equal(frame.opcode, 0x2);
      assert.ok(frame.payload.every((b) => b === 0), `data frame ${i} carries only its own bytes`);
    }
    await writing;
  } finally {
    conn.close();
  }
});

Deno.test("WebSocket client link: a server that stopped reading does not keep a closed link's socket, or its writes, for ever", async () => {
  const { link, conn } = await handshakeServer();
  try {
    // More than the kernel's buffers take: the write waits on the server, which reads nothing.
    const writing = link.write(new Uint8Array(32 << 20));
    link.close();
    // The grace runs out, the socket is closed, and the waiting write fails.
    await within(CLOSE_GRACE_MS + 20_000, "the write to fail", assert.rejects(writing));
  } finally {
    conn.close();
  }
});

Deno.test("WebSocket links the listener turns away at once (their source dials too fast) are closed, not left open and silent until the client's handshake timeout", async () => {
  const links = new HttpLinkAcceptor();
  // One handshake a second from a source (with a small burst): of ten at once, most are dropped.
  const listener = listen({
    acceptor: links,
    maxHandshakeRatePerSource: 1,
    handshakeTimeout: 60_000,
  });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) => links.handle(req, info),
  );
  const dial = webSocketDialer({ url: `ws://127.0.0.1:${server.addr.port}/` });
  const opened = [];
  try {
    for (let i = 0; i < 10; i++) opened.push(await dial(AbortSignal.timeout(10_000)));
    const dropped = listener.stats.droppedRate;
    assert.ok(dropped > 0, "none dropped");
    // Each dropped link ends (its read sees the close); the others wait for a hello we never send.
    let ended = 0;
    const { promise: allEnded, resolve } = Promise.withResolvers<void>();
    for (const link of opened) {
      link.read(new Uint8Array(64)).catch(() => null).then((n) => {
        if (n === null && ++ended === dropped) resolve();
      });
    }
    await within(20_000, `${dropped} dropped links seen closed`, allEnded);
  } finally {
    for (const link of opened) link.close();
    listener.close();
    await server.shutdown();
  }
});

/**
 * A raw WebSocket client that upgrades at `port`, sends one binary message
 * that is no immortal frame, waits for the server's Close and never answers
 * it; null when the upgrade was refused (with the status line).
 */
async function unansweringSocket(port: number, forwardedFor?: string): Promise<Deno.Conn | string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  const forwarded = forwardedFor === undefined ? "" : `x-forwarded-for: ${forwardedFor}\r\n`;
  await conn.write(new TextEncoder().encode(
    `GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n` +
      `sec-websocket-key: ${key}\r\nsec-websocket-version: 13\r\n${forwarded}\r\n`,
  ));
  const buffer = new Uint8Array(4096);
  let head = "";
  for (let reads = 0; reads < 100 && !head.includes("\r\n\r\n"); reads++) {
    const n = await conn.read(buffer);
    if (n === null) break;
    head += new TextDecoder().decode(buffer.subarray(0, n));
  }
  if (!head.startsWith("HTTP/1.1 101")) {
    conn.close();
    return head.split("\r\n")[0];
  }
  // Masked (with a zero mask) binary message of 5 bytes 0xff: no immortal frame.
  await conn.write(new Uint8Array([0x82, 0x85, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]));
  // The server's Close frame (0x88): the link is closed as far as it knows.
  for (let reads = 0; reads < 100; reads++) {
    const n = await conn.read(buffer);
    if (n === null || buffer.subarray(0, n).includes(0x88)) break;
  }
  return conn;
}

/**
 * An immortal listener behind `Deno.serve` on an {@linkcode HttpLinkAcceptor}
 * (with `options`), whose application takes nothing: for sockets that never
 * answer a close. Disposing it closes those too.
 */
function lingeringServer(options: ConstructorParameters<typeof HttpLinkAcceptor>[0] = {}) {
  const links = new HttpLinkAcceptor(options);
  const listener = listen({ acceptor: links, key: "secret" });
  const serving = (async () => {
    for await (const _ of listener) { /* none gets through */ }
  })();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) => links.handle(req, info),
  );
  const held: Deno.Conn[] = [];
  return {
    port: server.addr.port,
    held,
    /** One more unanswered socket, from `forwardedFor`; fails the test if refused. */
    async hold(forwardedFor?: string): Promise<void> {
      const socket = await unansweringSocket(server.addr.port, forwardedFor);
      assert.ok(typeof socket !== "string", `socket ${held.length + 1}: ${socket}`);
      held.push(socket);
    },
    async [Symbol.asyncDispose]() {
      for (const conn of held) conn.close();
      listener.close();
      await serving;
      await server.shutdown();
    },
  };
}

Deno.test("WebSocket links behind Deno.serve whose peer never answers the close are counted until it does: past 8 from one address, its new ones are refused 503, not kept until the descriptors run out", async () => {
  await using server = lingeringServer();
  for (let i = 0; i < 8; i++) await server.hold();
  assert.equal(await unansweringSocket(server.port), "HTTP/1.1 503 Service Unavailable");
  // Once they are answered (here: their connections end), the address is welcome again.
  for (const conn of server.held.splice(0)) conn.close();
  let again: Deno.Conn | string = "";
  for (let tries = 0; tries < 1000; tries++) {
    again = await unansweringSocket(server.port);
    if (typeof again !== "string") break;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.ok(typeof again !== "string", String(again));
  server.held.push(again);
});

Deno.test("WebSocket links whose peer never answers the close are counted by source as the listener counts them: an IPv6 /64 is one", async () => {
  await using server = lingeringServer({ trustedProxies: ["127.0.0.1"] });
  for (let i = 1; i <= 8; i++) await server.hold(`2001:db8::${i}`);
  // Another address of the same /64: the same source.
  assert.equal(
    await unansweringSocket(server.port, "2001:db8::ff"),
    "HTTP/1.1 503 Service Unavailable",
  );
  // Another /64: another source.
  await server.hold("2001:db8:0:1::1");
});
