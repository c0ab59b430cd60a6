/**
 * Writing a `Response` as HTTP/1.1 (RFC 9112): the status line, the headers,
 * and the body — chunked to HTTP/1.1 clients, delimited by the end of the
 * connection to HTTP/1.0 ones. The relay's event streams are endless bodies
 * that must reach the client as each event is produced, so every chunk is
 * written as it comes, never collected.
 *
 * @module
 */

const encoder = new TextEncoder();

/** Chunks at least this large are written from their own buffer, not copied into a framed one. */
const WRITTEN_AS_IS = 64 * 1024;
const CRLF = new Uint8Array([13, 10]);

/**
 * Header fields of the connection, not of the message (hop by hop): this
 * writer decides them itself, and a relay passing a message on drops them.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "transfer-encoding",
  "content-length",
  "upgrade",
]);

/** Writes all of `bytes` (a `write` may take only part). */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let written = 0; written < bytes.length;) {
    written += await conn.write(bytes.subarray(written));
  }
}

/** How to frame a response on this connection. */
export interface ResponseFraming {
  /** The request was HTTP/1.0: no chunked coding. */
  http10: boolean;
  /** The request was HEAD: headers only. */
  head: boolean;
  /** The connection carries another request after this one. */
  keepAlive: boolean;
  /** Aborts when the client is gone: the body is cancelled, even while it has nothing to send. */
  clientGone?: AbortSignal;
}

/** Reason phrases of the statuses the relay answers with (RFC 9110 15). */
const REASONS: Record<number, string> = {
  200: "OK",
  204: "No Content",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  409: "Conflict",
  410: "Gone",
  413: "Content Too Large",
  414: "URI Too Long",
  417: "Expectation Failed",
  426: "Upgrade Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

/**
 * A status line: the phrase is optional in HTTP/1.1, but people read these
 * (curl -v, a proxy's log), and an empty one looks like a fault.
 */
export function statusLine(status: number, statusText = ""): string {
  return `HTTP/1.1 ${status} ${statusText || REASONS[status] || ""}\r\n`;
}

let dateSecond = -1;
let dateText = "";

/**
 * Now as an HTTP date (IMF-fixdate, RFC 9110 5.6.7), which every response of
 * an origin server with a clock carries (6.6.1); made once a second.
 */
export function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

/** Status line and header fields of `response`, with our own framing fields added. */
function responseHead(
  response: Response,
  fields: [string, string][],
): Uint8Array {
  let head = statusLine(response.status, response.statusText);
  for (const [name, value] of response.headers) {
    // A 426 names the protocol to upgrade to (RFC 9110 15.5.22).
    if (!HOP_BY_HOP.has(name) || (name === "upgrade" && response.status === 426)) {
      head += `${name}: ${value}\r\n`;
    }
  }
  if (!response.headers.has("date")) head += `date: ${httpDate()}\r\n`;
  for (const [name, value] of fields) head += `${name}: ${value}\r\n`;
  return encoder.encode(head + "\r\n");
}

/**
 * Writes `response` to `conn`. Resolves true once it was written whole and
 * the connection may carry another request; false when the connection must
 * close (the framing said so, or the body failed midway).
 */
export async function writeResponse(
  conn: Deno.Conn,
  response: Response,
  framing: ResponseFraming,
): Promise<boolean> {
  const { status } = response;
  const bodiless = status === 204 || status === 304 || (status >= 100 && status < 200);
  const body = bodiless ? null : response.body;
  const streamed = body !== null && !framing.head;
  // HTTP/1.0 knows no chunked coding: such a body ends where the connection does.
  const keepAlive = framing.keepAlive && !(streamed && framing.http10);
  const fields: [string, string][] = [];
  if (!keepAlive) fields.push(["connection", "close"]);
  if (body === null && !bodiless) fields.push(["content-length", "0"]);
  if (streamed && !framing.http10) fields.push(["transfer-encoding", "chunked"]);
  try {
    await writeAll(conn, responseHead(response, fields));
  } catch (error) {
    // The client is gone: whatever would have produced the body stops too.
    await response.body?.cancel().catch(() => {});
    throw error;
  }
  if (!streamed) {
    await response.body?.cancel();
    return keepAlive;
  }
  const reader = body.getReader();
  // A long response (an event stream, a link's downstream) may be idle for
  // long: a client gone meanwhile must not hold whatever produces it.
  let cancelled = false;
  const cancel = () => {
    cancelled = true;
    reader.cancel().catch(() => {});
  };
  framing.clientGone?.addEventListener("abort", cancel, { once: true });
  // Gone while the head was written: the event fired before anyone listened.
  if (framing.clientGone?.aborted) cancel();
  try {
    for (;;) {
      const { value: chunk, done } = await reader.read();
      if (done) break;
      if (cancelled) throw new Deno.errors.ConnectionReset("the client is gone");
      if (chunk.length === 0) continue;
      if (framing.http10) {
        await writeAll(conn, chunk);
        continue;
      }
      const head = encoder.encode(`${chunk.length.toString(16)}\r\n`);
      if (chunk.length >= WRITTEN_AS_IS) {
        // A large chunk (an HTTP link's stream) is written from where it is:
        // two more syscalls cost less than copying it into a framed buffer.
        // The CRLF goes at once, not in front of the next chunk: a client
        // that hands out a chunk only once it ended would hold it back.
        await writeAll(conn, head);
        await writeAll(conn, chunk);
        await writeAll(conn, CRLF);
        continue;
      }
      // A small chunk (an event) goes in one write: size line, bytes, CRLF.
      const framed = new Uint8Array(head.length + chunk.length + 2);
      framed.set(head);
      framed.set(chunk, head.length);
      framed.set(CRLF, head.length + chunk.length);
      await writeAll(conn, framed);
    }
  } catch {
    // The body failed midway (or the client went away): all we can do is end
    // the connection without the last chunk, so the client sees a cut body.
    cancel();
    return false;
  } finally {
    framing.clientGone?.removeEventListener("abort", cancel);
  }
  // Cancelled because the client is gone: the body "ended", but not whole.
  if (cancelled) return false;
  if (!framing.http10) await writeAll(conn, encoder.encode("0\r\n\r\n"));
  return keepAlive;
}
