// Chunked responses: a large chunk is written from its own buffer; the bytes
// on the wire are the same either way.

import assert from "node:assert/strict";
import { concat } from "../_util.ts";
import { writeResponse } from "./_http1_response.ts";

/** A connection that records every write (a view of what it was given: no copy). */
function recorder() {
  const writes: Uint8Array[] = [];
  const conn = {
    write(data: Uint8Array): Promise<number> {
      writes.push(data);
      return Promise.resolve(data.length);
    },
  };
  return { conn: conn as unknown as Deno.Conn, writes };
}

Deno.test("writeResponse: a large chunk goes out from its own buffer, a small one framed in one write", async () => {
  const large = new Uint8Array(256 * 1024).fill(7);
  const small = new TextEncoder().encode("data: hi\n\n");
  const { conn, writes } = recorder();
  const body = ReadableStream.from([large, small]);
  const kept = await writeResponse(conn, new Response(body), {
    http10: false,
    head: false,
    keepAlive: true,
  });
  assert.equal(kept, true);
  assert.ok(writes.some((w) => w.buffer === large.buffer), "the large chunk was not copied");
  assert.equal(writes.filter((w) => w.length === small.length + 3 + 2).length, 1, "one write");
  const wire = new TextDecoder("latin1").decode(concat(...writes));
  const headEnd = wire.indexOf("\r\n\r\n") + 4;
  assert.match(wire.slice(0, headEnd), /transfer-encoding: chunked/);
  assert.ok(wire.startsWith("HTTP/1.1 200 OK\r\n"), "a status line with its reason phrase");
  const expected = `40000\r\n${"\x07".repeat(large.length)}\r\na\r\ndata: hi\n\n\r\n0\r\n\r\n`;
  assert.equal(wire.slice(headEnd), expected);
});

Deno.test("writeResponse: a client gone while the body is idle cancels the body and keeps nothing", async () => {
  const { conn } = recorder();
  let cancelled = false;
  // A body that sends one chunk, then nothing until cancelled (a link's idle downstream).
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new Uint8Array([1]));
    },
    cancel() {
      cancelled = true;
    },
  });
  const gone = new AbortController();
  const written = writeResponse(conn, new Response(body), {
    http10: false,
    head: false,
    keepAlive: true,
    clientGone: gone.signal,
  });
  gone.abort();
  assert.equal(await written, false, "the connection ends");
  assert.equal(cancelled, true, "whatever produced the body hears it");
});
