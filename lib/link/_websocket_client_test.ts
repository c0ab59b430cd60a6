// The client's masked frames, checked against a plain byte-by-byte decoder:
// every payload alignment (the frame is built a word at a time from where the
// payload's words start) and every header size.

import assert from "node:assert/strict";
import { FRAME_ROOM, maskFrameInto } from "./_websocket_client.ts";

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
