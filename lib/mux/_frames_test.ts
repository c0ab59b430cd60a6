import assert from "node:assert/strict";
import { concat } from "../_util.ts";
import {
  encodeCredit,
  encodeFrame,
  FrameParser,
  FrameType,
  GREETING,
  MAX_DATA,
  MuxProtocolError,
} from "./_frames.ts";

type Event = [string, number, number[]];

function collect(): { events: Event[]; parser: FrameParser } {
  const events: Event[] = [];
  const parser = new FrameParser({
    data: (stream, bytes) => {
      // Pieces of one data frame are joined, so any split compares equal.
      const last = events.at(-1);
      if (last && last[0] === "data" && last[1] === stream) {
        last[2].push(...bytes);
      } else events.push(["data", stream, [...bytes]]);
    },
    control: (type, stream, payload) => events.push([`control ${type}`, stream, [...payload]]),
  });
  return { events, parser };
}

const wire = concat(...[
  GREETING,
  encodeFrame(FrameType.open, 1, new TextEncoder().encode("target")),
  encodeFrame(FrameType.data, 1, new Uint8Array([1, 2, 3])),
  encodeCredit(1, 70_000),
  encodeFrame(FrameType.fin, 1),
  encodeFrame(FrameType.reset, 3, new TextEncoder().encode("why")),
]);

Deno.test("mux frames parse the same however the stream is cut", () => {
  const whole = collect();
  whole.parser.push(wire);
  assert.deepEqual(whole.events, [
    [`control ${FrameType.open}`, 1, [...new TextEncoder().encode("target")]],
    ["data", 1, [1, 2, 3]],
    [`control ${FrameType.credit}`, 1, [0, 1, 0x11, 0x70]],
    [`control ${FrameType.fin}`, 1, []],
    [`control ${FrameType.reset}`, 3, [...new TextEncoder().encode("why")]],
  ]);
  for (let cut = 1; cut < wire.length; cut++) {
    const split = collect();
    split.parser.push(wire.subarray(0, cut));
    split.parser.push(wire.subarray(cut));
    assert.deepEqual(split.events, whole.events, `cut at ${cut}`);
  }
  const bytewise = collect();
  for (const byte of wire) bytewise.parser.push(new Uint8Array([byte]));
  assert.deepEqual(bytewise.events, whole.events);
});

Deno.test("mux frames: malformed input is a protocol error", () => {
  const bad = (bytes: Uint8Array, pattern: RegExp) => {
    const { parser } = collect();
    assert.throws(() => parser.push(concat(...[GREETING, bytes])), MuxProtocolError);
    const again = collect();
    assert.throws(() => again.parser.push(concat(...[GREETING, bytes])), pattern);
  };
  bad(encodeFrame(0x09, 1), /unknown frame type 0x09/);
  bad(encodeFrame(FrameType.data, 1), /empty data frame/);
  bad(encodeFrame(FrameType.accept, 1, new Uint8Array(1)), /limit 0/);
  bad(encodeFrame(FrameType.credit, 1, new Uint8Array(3)), /credit frame of 3 bytes/);
  const header = encodeFrame(FrameType.data, 1, new Uint8Array(1));
  header[5] = 0xff; // length far above MAX_DATA
  bad(header.subarray(0, 9), new RegExp(`limit ${MAX_DATA}`));
  const { parser } = collect();
  assert.throws(() => parser.push(new TextEncoder().encode("GET / HTTP/1.1")), /bad greeting/);
});
