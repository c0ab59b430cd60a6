// The reader's buffer: shrunk for an idle connection, grown again while reads fill it.

import assert from "node:assert/strict";
import { readingConn as source } from "../../tests/_fake_conn.ts";
import { ByteReader } from "./_byte_reader.ts";

Deno.test("ByteReader: shrinks and keeps what it holds; grows again only while reads fill it", async () => {
  const data = Uint8Array.from({ length: 5000 }, (_, i) => i % 251);
  const { conn, offered } = source(data);
  const reader = new ByteReader(conn, 16 * 1024);
  assert.equal(await reader.fill(), true);
  assert.equal(offered[0], 2048, "starts at 2 KiB (a request head)");
  reader.consume(2000);
  reader.shrink(512);
  assert.deepEqual([...reader.buffered], [...data.subarray(2000, 2048)], "kept, in order");
  const got: number[] = [...reader.buffered];
  reader.consume(reader.buffered.length);
  while (await reader.fill()) {
    got.push(...reader.buffered);
    reader.consume(reader.buffered.length);
  }
  assert.deepEqual(got, [...data.subarray(2000)]);
  // 512 filled, so 1024 next, then 2048: a busy reader reads more at once.
  assert.deepEqual(offered.slice(1, 4), [512, 1024, 2048]);
});

Deno.test("ByteReader: shrink leaves a buffer that holds more than the new size", async () => {
  const data = new Uint8Array(1500).fill(7);
  const { conn, offered } = source(data);
  const reader = new ByteReader(conn, 16 * 1024);
  await reader.fill();
  reader.shrink(512); // 1500 bytes held: no room to shrink into
  assert.equal(reader.buffered.length, 1500);
  reader.consume(1500);
  assert.equal(await reader.fill(), false);
  assert.deepEqual(offered, [2048, 2048]);
});

Deno.test("ByteReader: back to the shrunk size once reads stop filling the grown buffer", async () => {
  // A burst of 4096 bytes, then small pieces: the source hands out what the test queues.
  const pieces: Uint8Array[] = [new Uint8Array(4096)];
  for (let i = 0; i < 20; i++) pieces.push(new Uint8Array(10));
  const offered: number[] = [];
  const conn = {
    read(into: Uint8Array): Promise<number | null> {
      offered.push(into.length);
      const piece = pieces[0];
      if (piece === undefined) return Promise.resolve(null);
      const n = Math.min(into.length, piece.length);
      into.set(piece.subarray(0, n));
      if (n === piece.length) pieces.shift();
      else pieces[0] = piece.subarray(n);
      return Promise.resolve(n);
    },
  } as unknown as Deno.Conn;
  const reader = new ByteReader(conn, 16 * 1024);
  reader.shrink(512);
  while (await reader.fill()) reader.consume(reader.buffered.length);
  // Grown through the burst, then 16 quiet reads at the grown size, then back to 512.
  assert.deepEqual(offered.slice(0, 4), [512, 1024, 2048, 4096]);
  assert.ok(offered.includes(4096));
  assert.equal(offered[offered.length - 1], 512, `offered: ${offered}`);
});

Deno.test("ByteReader: a read ahead tells the end of the stream, and what it read comes first in the next reads", async () => {
  const data = Uint8Array.from({ length: 3000 }, (_, i) => i % 251);
  const { conn, offered } = source(data, 1000);
  const reader = new ByteReader(conn, 16 * 1024);
  assert.equal(await reader.readAhead(), true, "bytes came: the peer is there");
  assert.equal(await reader.readAhead(), true, "asked again: the same read, not another");
  assert.equal(offered.length, 1);
  // The next read takes the read ahead's bytes, then reads on in order.
  const out = new Uint8Array(3000);
  assert.equal(await reader.readFull(out), true);
  assert.deepEqual(out, data);
  assert.equal(await reader.readAhead(), false, "the end of the stream");
  assert.equal(await reader.fill(), false);
});

Deno.test("ByteReader: a read ahead with bytes buffered reads nothing; once settled and consumed, the next read ahead is a new read", async () => {
  const data = new TextEncoder().encode("req1req2");
  const { conn, offered } = source(data, 4);
  const reader = new ByteReader(conn, 16 * 1024);
  assert.equal(await reader.readAhead(), true);
  assert.equal(offered.length, 1);
  // A pipelined request is there already: nothing to read to know it.
  assert.equal(await reader.readAhead(), true);
  assert.equal(offered.length, 1, "no read while bytes are buffered");
  reader.consume(4); // taken without a fill, as a request head found whole is
  assert.equal(await reader.readAhead(), true, "a new read, not the first one's outcome");
  assert.equal(offered.length, 2);
  assert.equal(new TextDecoder().decode(reader.buffered), "req2");
  reader.consume(4);
  assert.equal(await reader.readAhead(), false, "the end of the stream");
});

Deno.test("ByteReader: shrink while a read ahead is under way keeps its bytes (the buffer it reads into is not replaced)", async () => {
  const data = Uint8Array.from({ length: 3000 }, (_, i) => i % 251);
  const { conn } = source(data, 1000);
  const reader = new ByteReader(conn, 16 * 1024);
  const ahead = reader.readAhead();
  reader.shrink(512);
  assert.equal(await ahead, true);
  const out = new Uint8Array(3000);
  assert.equal(await reader.readFull(out), true);
  assert.deepEqual(out, data);
});
