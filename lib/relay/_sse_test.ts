import assert from "node:assert/strict";
import { readSse, sseClose, type SseEvent, sseFrame } from "./_sse.ts";

const encoder = new TextEncoder();

/** A body of `chunks`, each its own read. */
function body(chunks: (string | Uint8Array)[]): ReadableStream<Uint8Array> {
  const queue = chunks.map((chunk) => typeof chunk === "string" ? encoder.encode(chunk) : chunk);
  return new ReadableStream({
    pull(controller) {
      const next = queue.shift();
      if (next === undefined) controller.close();
      else controller.enqueue(next);
    },
  }, { highWaterMark: 0 });
}

async function readAll(
  stream: ReadableStream<Uint8Array>,
  max = 1 << 20,
): Promise<SseEvent[]> {
  const events: SseEvent[] = [];
  for await (const event of readSse(stream, () => max)) events.push(event);
  return events;
}

Deno.test("readSse: events split anywhere across chunks, several in one, and the relay's close", async () => {
  const whole = new TextDecoder().decode(
    new Uint8Array([
      ...sseFrame('{"t":"ping"}'),
      ...sseFrame('{"t":"msg","text":"é ✓"}'),
      ...encoder.encode(": a comment, no data\n\n"),
      ...sseClose({ code: 4001, reason: "bye" }),
    ]),
  );
  const expected: SseEvent[] = [
    { type: "frame", data: '{"t":"ping"}' },
    { type: "frame", data: '{"t":"msg","text":"é ✓"}' },
    { type: "close", close: { code: 4001, reason: "bye" } },
  ];
  const bytes = encoder.encode(whole);
  // Every split point, the blank lines' "\n" | "\n" and the multi-byte characters included.
  for (let at = 0; at <= bytes.length; at++) {
    assert.deepEqual(
      await readAll(body([bytes.slice(0, at), bytes.slice(at)])),
      expected,
      `at ${at}`,
    );
  }
  // A byte at a time.
  assert.deepEqual(await readAll(body([...bytes].map((b) => new Uint8Array([b])))), expected);
});

Deno.test("readSse: an event longer than the bound (an endless data line) fails the read, at the chunk past it", async () => {
  let pulled = 0;
  const endless = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulled++;
      controller.enqueue(encoder.encode(pulled === 1 ? "data: " : "b".repeat(1000)));
      // Finite, so that a reader without the bound ends instead of hanging.
      if (pulled === 50) controller.close();
    },
  }, { highWaterMark: 0 });
  await assert.rejects(
    readAll(endless, 4096),
    /^Error: the relay sent an event longer than 4096 bytes \(a frame of the relay's is not\)$/,
  );
  assert.ok(pulled <= 10, `read ${pulled} chunks`);
  // One within the bound, however it came, is taken.
  const data = "x".repeat(4000);
  assert.deepEqual(await readAll(body([`data: ${data}`, "\n\n"]), 4096), [{ type: "frame", data }]);
});

Deno.test("readSse: a close reason meant for a terminal is escaped", async () => {
  const events = await readAll(body([sseClose({ code: 4001, reason: "\x1b[31mred\r\nforged" })]));
  assert.deepEqual(events, [{
    type: "close",
    close: { code: 4001, reason: "\\u001b[31mred\\u000d\\u000aforged" },
  }]);
});
