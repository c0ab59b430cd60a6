/**
 * Server-Sent Events as the HTTP streaming transport uses them: each relay
 * frame is one `data:` event, and the relay's close (code and reason, what a
 * WebSocket close frame would carry) is one `event: close`. Both directions
 * live here so the format is written and read in one place.
 *
 * @module
 */

import { peerText } from "../_util.ts";
import { readJson } from "./_parse.ts";

const encoder = new TextEncoder();

/** The end of a stream, as the relay announces it. */
export interface SseClose {
  /** A WebSocket-style close code. */
  code: number;
  /** Why, for people. */
  reason: string;
}

/** What a reader finds in the stream: an encoded frame, or the relay's close. */
export type SseEvent = { type: "frame"; data: string } | { type: "close"; close: SseClose };

/** One encoded frame as an event. */
export function sseFrame(data: string): Uint8Array {
  return encoder.encode(`data: ${data}\n\n`);
}

/** The relay's close as an event. */
export function sseClose(close: SseClose): Uint8Array {
  return encoder.encode(`event: close\ndata: ${JSON.stringify(close)}\n\n`);
}

function asClose(value: unknown): SseClose {
  const close = value as Partial<SseClose> | undefined;
  return {
    code: typeof close?.code === "number" ? close.code : 1000,
    // The relay's words, bound for logs: escaped as they come in.
    reason: typeof close?.reason === "string" ? peerText(close.reason) : "closed by the relay",
  };
}

/** The event of `block` (its blank line taken off), or null for one without data. */
function parseEvent(block: string): SseEvent | null {
  let event = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trimStart();
  }
  if (data === "") return null;
  return event === "close"
    ? { type: "close", close: asClose(readJson(data)) }
    : { type: "frame", data };
}

/**
 * Reads an event stream body into events; blocks without data are skipped.
 * An event longer than `maxEventBytes()` (asked as it grows: a limit the
 * welcome may raise) fails the read: an endless line held memory without
 * bound. Each chunk is scanned once, alone, for the blank lines that end
 * events, and an event's chunks are joined once it is whole: scanning (and
 * so flattening) all of an event at every chunk took quadratic time.
 */
export async function* readSse(
  body: ReadableStream<Uint8Array>,
  maxEventBytes: () => number,
): AsyncGenerator<SseEvent> {
  /** The chunks of the event under way, and their length. */
  let pending: string[] = [];
  let length = 0;
  for await (const text of body.pipeThrough(new TextDecoderStream())) {
    if (text === "") continue;
    let start = 0;
    // A blank line across two chunks: the last one ended with its first "\n".
    if (text[0] === "\n" && pending.at(-1)?.endsWith("\n")) {
      const event = parseEvent(pending.join("").slice(0, -1));
      pending = [];
      length = 0;
      start = 1;
      if (event !== null) yield event;
    }
    for (let end = text.indexOf("\n\n", start); end >= 0; end = text.indexOf("\n\n", start)) {
      pending.push(text.slice(start, end));
      const event = parseEvent(pending.join(""));
      pending = [];
      length = 0;
      start = end + 2;
      if (event !== null) yield event;
    }
    if (start === text.length) continue;
    pending.push(text.slice(start));
    length += text.length - start;
    // In UTF-16 units, which are never more than the UTF-8 bytes they came as:
    // an event within the limit in bytes is never refused.
    const max = maxEventBytes();
    if (length > max) {
      throw new Error(
        `the relay sent an event longer than ${max} bytes (a frame of the relay's is not)`,
      );
    }
  }
}
