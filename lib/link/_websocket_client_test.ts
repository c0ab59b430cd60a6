// The client's masked frames, checked against a plain byte-by-byte decoder:
// every payload alignment (the frame is built a word at a time from where the
// payload's words start) and every header size. And what the client makes of
// a server's frames that break the rules, and of a proxy's refusal.

import assert from "node:assert/strict";
import { acceptKey, FRAME_ROOM, maskFrameInto, openWebSocketLink } from "./_websocket_client.ts";
import { webSocketDialer } from "./websocket.ts";

/** The payload of a masked frame, unmasked byte by byte, and the frame's opcode. */
function decode(frame: Uint8Array): { opcode: number; payload: Uint8Array } {
  assert.equal(frame[0] & 0x80, 0x80, "FIN set");
  assert.equal(frame[1] & 0x80, 0x80, "masked");
  const short = frame[1] & 0x7f;
  const view = new DataView(frame.buffer, frame.byteOffset, frame.length);
  const lengthBytes = short === 126 ? 2 : short === 127 ? 8 : 0;
  const n = short === 126
    ? view.getUint16(2)
    : short === 127
    ? Number(view.getBigUint64(2))
    : short;
  const head = 2 + lengthBytes + 4;
  assert.equal(frame.length, head + n, "the frame ends where its payload does");
  const mask = frame.subarray(head - 4, head);
  const payload = frame.slice(head);
  for (let i = 0; i < n; i++) payload[i] ^= mask[i & 3];
  return { opcode: frame[0] & 0x0f, payload };
}

Deno.test("WebSocket client frames: every payload alignment and header size masks and unmasks to the same bytes", () => {
  const source = Uint8Array.from({ length: 70_010 }, (_, i) => (i * 2_654_435_761) >>> 24);
  // One buffer reused for every frame, as the link does, with the room it reserves beyond the
  // largest payload (here 70,003 bytes).
  const target = new ArrayBuffer(70_003 + FRAME_ROOM);
  for (const offset of [0, 1, 2, 3, 6]) {
    for (const n of [0, 1, 2, 3, 4, 5, 7, 125, 126, 127, 1_000, 65_535, 65_536, 65_537, 70_003]) {
      const payload = source.subarray(offset, offset + n);
      const frame = maskFrameInto(target, 0x2, payload);
      const decoded = decode(frame);
      assert.equal(decoded.opcode, 0x2);
      assert.deepEqual(decoded.payload, payload, `offset ${offset}, ${n} bytes`);
    }
  }
});

/**
 * A server that answers the opening handshake with 101, sends `bytes`, then
 * ends the connection; resolves to what a link to it reads: the bytes, then
 * `null` or the error.
 */
async function readFromServerSending(bytes: Uint8Array): Promise<{ got: number[]; end: unknown }> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    const conn = await listener.accept();
    const buffer = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error("no request");
      head += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const key = /sec-websocket-key: (\S+)/i.exec(head)![1];
    const answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
      `Connection: Upgrade\r\nSec-WebSocket-Accept: ${await acceptKey(key)}\r\n\r\n`;
    await conn.write(new TextEncoder().encode(answer));
    await conn.write(bytes);
    conn.close();
  })();
  const link = await openWebSocketLink(
    new URL(`ws://127.0.0.1:${listener.addr.port}/`),
    AbortSignal.timeout(10_000),
  );
  await serving;
  const got: number[] = [];
  const buffer = new Uint8Array(64);
  try {
    for (let n; (n = await link.read(buffer)) !== null;) got.push(...buffer.subarray(0, n));
    return { got, end: null };
  } catch (error) {
    return { got, end: error };
  } finally {
    link.close();
  }
}

Deno.test("WebSocket client link: a frame RFC 6455 forbids, or a stream that ends inside a frame, breaks the link; an end between frames ends it", async () => {
  const binary = [0x82, 2, 7, 8];
  const broken = [
    { bytes: [...binary, 0x83, 0], why: /unknown opcode 3/ },
    { bytes: [...binary, 0x8b, 0], why: /unknown opcode 11/ },
    { bytes: [...binary, 0x89, 126, 0, 126, ...new Uint8Array(126)], why: /longer than 125/ },
    { bytes: [...binary, 0x09, 0], why: /in fragments/ },
    { bytes: [...binary, 0x82], why: /ended inside a frame/ },
    { bytes: [...binary, 0x82, 127, 0, 0], why: /ended inside a frame/ },
    { bytes: [...binary, 0x89, 5, 1, 2], why: /ended inside a frame/ },
  ];
  for (const { bytes, why } of broken) {
    const { got, end } = await readFromServerSending(new Uint8Array(bytes));
    assert.deepEqual(got, [7, 8], bytes.join(" "));
    assert.ok(end instanceof Deno.errors.ConnectionReset, `${bytes.join(" ")}: ${end}`);
    assert.match((end as Error).message, why);
  }
  assert.deepEqual(await readFromServerSending(new Uint8Array(binary)), { got: [7, 8], end: null });
});

Deno.test("WebSocket dialer through a proxy: a refusal by the proxy says its status", async () => {
  using proxy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const answering = (async () => {
    using conn = await proxy.accept();
    await conn.read(new Uint8Array(4096));
    await conn.write(
      new TextEncoder().encode(
        "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
      ),
    );
  })();
  using client = Deno.createHttpClient({ proxy: { url: `http://127.0.0.1:${proxy.addr.port}` } });
  const dial = webSocketDialer({ url: "ws://127.0.0.1:9/", client });
  await assert.rejects(
    dial(AbortSignal.timeout(10_000)),
    /cannot open ws:\/\/127\.0\.0\.1:9\/: .*407/,
  );
  await answering;
});
