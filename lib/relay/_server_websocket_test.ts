// The server WebSocket's write queue, on a connection the test controls: how
// many writes the frames take, and when a send counts as written. No sockets,
// no timing: writes complete when the test says so.

import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import { ByteReader } from "./_byte_reader.ts";
import { ServerWebSocket } from "./_server_websocket.ts";
import { maskFrameInto } from "../link/_websocket_client.ts";

/** A connection whose writes are recorded and complete when the test releases them. */
class ScriptedConn {
  /** Every write, in order, as the socket handed it over. */
  writes: Uint8Array[] = [];
  /** Bytes each write takes at most (a short write makes the socket write the rest). */
  takeAtMost = Infinity;
  /** While set, writes wait for {@linkcode ScriptedConn.release}. */
  holding = false;
  #held: (() => void)[] = [];
  #end = Promise.withResolvers<null>();

  /** The buffer of each write, as handed over (not a copy). */
  buffers: ArrayBufferLike[] = [];
  #incoming: Uint8Array[] = [];
  #arrived: (() => void) | null = null;

  write(bytes: Uint8Array): Promise<number> {
    this.writes.push(bytes.slice());
    this.buffers.push(bytes.buffer);
    const n = Math.min(bytes.length, this.takeAtMost);
    if (!this.holding) return Promise.resolve(n);
    return new Promise((resolve) => this.#held.push(() => resolve(n)));
  }

  /** Completes the writes held so far. */
  release(): void {
    this.holding = false;
    for (const done of this.#held.splice(0)) done();
  }

  /** Bytes the socket reads next, as if the peer sent them. */
  receive(bytes: Uint8Array): void {
    this.#incoming.push(bytes);
    this.#arrived?.();
  }

  async read(into: Uint8Array): Promise<number | null> {
    while (this.#incoming.length === 0) {
      const arrived = new Promise<null>((resolve) => this.#arrived = () => resolve(null));
      const ended = await Promise.race([arrived, this.#end.promise.then(() => true)]);
      this.#arrived = null;
      if (ended) return null;
    }
    const next = this.#incoming[0];
    const n = Math.min(into.length, next.length);
    into.set(next.subarray(0, n));
    if (n === next.length) this.#incoming.shift();
    else this.#incoming[0] = next.subarray(n);
    return n;
  }

  close(): void {
    this.#end.resolve(null);
  }
}

/** The text messages of unmasked server frames, in order. */
function texts(chunks: Uint8Array[]): string[] {
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  const out: string[] = [];
  for (let i = 0; i < bytes.length;) {
    assert.equal(bytes[i], 0x81, "a final text frame");
    const length = bytes[i + 1];
    assert.ok(length < 126, "short frames only in this test");
    out.push(new TextDecoder().decode(bytes.subarray(i + 2, i + 2 + length)));
    i += 2 + length;
  }
  return out;
}

function open(conn: ScriptedConn, maxMessageBytes = 1024) {
  const socket = new ServerWebSocket(
    conn as unknown as Deno.Conn,
    new ByteReader(conn as unknown as Deno.Conn, 1024),
    { maxMessageBytes },
  );
  const running = socket.run();
  const drained = () => new Promise<void>((resolve) => socket.ondrain = resolve);
  return {
    socket,
    drained,
    async [Symbol.asyncDispose]() {
      conn.close();
      await running;
    },
  };
}

/** One turn of the event loop: what the socket leaves for the end of the turn has run. */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

Deno.test("server WebSocket: frames sent in one turn go out in one write, after the turn", async () => {
  const conn = new ScriptedConn();
  await using ws = open(conn);
  const drained = ws.drained();
  for (const text of ["a", "b", "c"]) ws.socket.send(text);
  assert.equal(conn.writes.length, 0, "nothing is written before the turn ends");
  assert.equal(ws.socket.bufferedAmount, 9);
  await drained;
  assert.equal(conn.writes.length, 1);
  assert.deepEqual(texts(conn.writes), ["a", "b", "c"]);
  assert.equal(ws.socket.bufferedAmount, 0);
});

Deno.test("server WebSocket: frames sent while a write is in flight go out together in the next", async () => {
  const conn = new ScriptedConn();
  await using ws = open(conn);
  conn.holding = true;
  ws.socket.send("first");
  await turn();
  assert.equal(conn.writes.length, 1);
  for (const text of ["x", "y", "z"]) ws.socket.send(text);
  await turn();
  assert.equal(conn.writes.length, 1, "one write in flight at a time");
  const drained = ws.drained();
  conn.release();
  await drained;
  assert.equal(conn.writes.length, 2);
  assert.deepEqual(texts(conn.writes.slice(1)), ["x", "y", "z"]);
});

Deno.test("server WebSocket: short writes are finished, in order, and sendBytes waits for them", async () => {
  const conn = new ScriptedConn();
  await using ws = open(conn);
  conn.takeAtMost = 2;
  conn.holding = true;
  ws.socket.send("hello");
  let written = false;
  const sent = ws.socket.sendBytes(new Uint8Array([1, 2, 3])).then(() => written = true);
  await turn();
  assert.equal(written, false, "not written while the connection holds the write");
  conn.release();
  // Every later write completes at once, two bytes at a time.
  await sent;
  assert.equal(ws.socket.bufferedAmount, 0);
  // Each write takes its first two bytes; the socket hands over the rest, never the same bytes twice.
  const taken: number[] = [];
  for (const chunk of conn.writes) taken.push(...chunk.subarray(0, 2));
  assert.deepEqual(
    taken,
    [0x81, 5, ...new TextEncoder().encode("hello"), 0x82, 3, 1, 2, 3],
  );
});

Deno.test("server WebSocket: binary data (a pipe's stream) is written at once when no write is in flight", async () => {
  const conn = new ScriptedConn();
  await using ws = open(conn);
  await turn(); // the socket started
  ws.socket.send("text waits for the turn's end");
  assert.equal(conn.writes.length, 0);
  ws.socket.sendBinary(new Uint8Array([1, 2]));
  assert.equal(conn.writes.length, 1, "written in the same turn");
  assert.equal(conn.writes[0].length, 2 + 29 + 2 + 2, "with the text queued before it, in order");
  assert.equal(conn.writes[0][0], 0x81);
  assert.equal(conn.writes[0][31], 0x82);
  const drained = ws.drained();
  await drained;
  assert.equal(conn.writes.length, 1, "the turn's flush found nothing left");
});

/** A masked binary frame, as a client sends it. */
function clientFrame(payload: Uint8Array, opcode = 0x2, fin = true): Uint8Array {
  const frame = maskFrameInto(new ArrayBuffer(payload.length + 17), opcode, payload);
  if (!fin) frame[0] &= 0x7f;
  return frame;
}

/** `count` copies of `frame`, back to back. */
function repeated(frame: Uint8Array, count: number): Uint8Array {
  const out = new Uint8Array(frame.length * count);
  for (let i = 0; i < count; i++) out.set(frame, i * frame.length);
  return out;
}

Deno.test("server WebSocket: a peer that pings and never reads has one pong queued, the latest, not one per ping", async () => {
  const conn = new ScriptedConn();
  await using ws = open(conn);
  await turn(); // started
  conn.holding = true; // the peer reads nothing: the first pong's write never completes
  const done = Promise.withResolvers<void>();
  ws.socket.onmessage = () => done.resolve();
  conn.receive(clientFrame(new TextEncoder().encode("first"), 0x9));
  // Its pong goes out at the end of the turn the ping is read in.
  for (let turns = 0; turns < 10 && conn.writes.length === 0; turns++) await turn();
  assert.equal(conn.writes.length, 1, "the first pong in flight");
  conn.receive(repeated(clientFrame(new TextEncoder().encode("ping"), 0x9), 1000));
  conn.receive(clientFrame(new TextEncoder().encode("last"), 0x9));
  conn.receive(clientFrame(new TextEncoder().encode("read past the pings"), 0x1));
  await done.promise; // every ping before it was read
  await turn();
  // The first pong in flight (7 bytes), and one queued: the last ping's (6).
  assert.equal(ws.socket.bufferedAmount, 7 + 6);
  conn.release();
  await ws.drained();
  const pongs = conn.writes.flatMap((write) => [...write]);
  assert.deepEqual(
    new Uint8Array(pongs),
    new Uint8Array([
      0x8a,
      5,
      ...new TextEncoder().encode("first"),
      0x8a,
      4,
      ...new TextEncoder().encode("last"),
    ]),
  );
});

Deno.test("server WebSocket: a message in more than 1,024 frames is too large, however few its bytes (empty frames held memory)", async () => {
  const conn = new ScriptedConn();
  await using ws = open(conn);
  const events: string[] = [];
  const done = Promise.withResolvers<void>();
  ws.socket.onoversize = () => events.push("oversize");
  ws.socket.onmessage = (data) => {
    events.push(`message ${data}`);
    if (data === "after") done.resolve();
  };
  const empty = new Uint8Array(0);
  const message = (frames: number) => {
    conn.receive(clientFrame(new TextEncoder().encode("x"), 0x1, false));
    conn.receive(repeated(clientFrame(empty, 0x0, false), frames - 2));
    conn.receive(clientFrame(empty, 0x0, true));
  };
  message(1024); // at the limit: delivered
  message(1025);
  conn.receive(clientFrame(new TextEncoder().encode("after"), 0x1));
  await done.promise;
  assert.deepEqual(events, ["message x", "oversize", "message after"]);
});

Deno.test("server WebSocket: a binary message passed on is framed where it was read, and its buffer is used again once written", async () => {
  const fromConn = new ScriptedConn();
  const toConn = new ScriptedConn();
  await using from = open(fromConn, 1 << 20);
  await using to = open(toConn, 1 << 20);
  const received: Uint8Array[] = [];
  from.socket.passOn = true;
  from.socket.onmessage = (data) => {
    assert.ok(data instanceof Uint8Array);
    received.push(data);
    to.socket.sendBinary(data);
  };
  await turn(); // both sockets started
  const messages = [100, 20_000, 30_000, 70_000].map((n) =>
    Uint8Array.from({ length: n }, (_, i) => (i * 7 + n) & 0xff)
  );
  for (const [i, message] of messages.entries()) {
    const drained = to.drained();
    fromConn.receive(clientFrame(message));
    await drained;
    assert.equal(toConn.writes.length, i + 1, "one write per message");
    const written = toConn.writes[i];
    const head = message.length < 126 ? 2 : message.length < 65_536 ? 4 : 10;
    assert.equal(written[0], 0x82);
    assert.deepEqual(written.subarray(head), message, "the bytes, unmasked, intact");
    assert.equal(toConn.buffers[i], received[i].buffer, "written from the buffer it was read into");
  }
  assert.equal(received[0].buffer.byteLength, 12 + 100, "a small message has a buffer of its own");
  assert.equal(
    received[1].buffer.byteLength,
    12 + 32_768,
    "a pooled buffer is at most twice its payload",
  );
  assert.equal(
    received[2].buffer,
    received[1].buffer,
    "the third message was read into the second one's pooled buffer, once that was written",
  );
  assert.equal(received[3].buffer.byteLength, 12 + 131_072);
});

Deno.test("server WebSocket: a socket whose messages are kept reads each into a buffer of its own size", async () => {
  const conn = new ScriptedConn();
  await using ws = open(conn, 1 << 20);
  const received = Promise.withResolvers<Uint8Array>();
  ws.socket.onmessage = (data) => received.resolve(data as Uint8Array);
  const message = Uint8Array.from({ length: 20_000 }, (_, i) => i & 0xff);
  conn.receive(clientFrame(message));
  const data = await received.promise;
  assert.deepEqual(data, message);
  assert.equal(data.buffer.byteLength, 20_000, "no pooled buffer pinned by a kept message");
});

Deno.test("server WebSocket: a peer whose frames are always there lets the event loop turn: a timer set as they arrive runs while they are still being read", async () => {
  const conn = new ScriptedConn();
  await using ws = open(conn);
  await turn(); // started
  const COUNT = 200_000;
  let messages = 0;
  let atTimer = -1;
  ws.socket.onmessage = () => void messages++;
  conn.receive(repeated(clientFrame(new TextEncoder().encode("hi"), 0x1), COUNT));
  setTimeout(() => atTimer = messages, 0);
  for (let turns = 0; turns < 100_000 && messages < COUNT; turns++) await turn();
  assert.equal(messages, COUNT);
  assert.ok(atTimer >= 0 && atTimer < COUNT, `the timer waited for all ${COUNT} messages`);
});
