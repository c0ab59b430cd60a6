/**
 * Server-Sent Events as the HTTP streaming transport uses them: each relay
 * frame is one `data:` event, and the relay's close (code and reason, what a
 * WebSocket close frame would carry) is one `event: close`. Both directions
 * live here so the format is written and read in one place.
 *
 * @module
 */

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
    reason: typeof close?.reason === "string" ? close.reason : "closed by the relay",
  };
}

/** Reads an event stream body into events; blocks without data are skipped. */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  let buffer = "";
  for await (const text of body.pipeThrough(new TextDecoderStream())) {
    buffer += text;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (data === "") continue;
      yield event === "close"
        ? { type: "close", close: asClose(readJson(data)) }
        : { type: "frame", data };
    }
  }
}
