/**
 * Reading HTTP/1.1 requests (RFC 9112), strictly: the relay's front end faces
 * the internet, so whatever a lenient parser would guess at (a header with a
 * space before its colon, a folded line, both `Content-Length` and
 * `Transfer-Encoding`, conflicting lengths, bare LF line ends) is refused
 * with 400 rather than read one way here and another way by a proxy in
 * front of us — the stuff request smuggling is made of.
 *
 * @module
 */

import { type ByteReader, ReaderFull } from "./_byte_reader.ts";

/** A request we refuse before it reaches the handler, with the status to answer. */
export class HttpError extends Error {
  /** Refuses a request with `status`, for `message`. */
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "HttpError";
  }
}

/** How the body of a request is delimited. */
export type BodyFraming = { kind: "none" } | { kind: "length"; length: number } | {
  kind: "chunked";
};

/** A parsed request head. */
export interface RequestHead {
  method: string;
  /** The request target as sent: `/path?query`, or an absolute URL. */
  target: string;
  /** `HTTP/1.0` or `HTTP/1.1`. */
  version: "HTTP/1.0" | "HTTP/1.1";
  headers: Headers;
  body: BodyFraming;
  /** Whether the client lets the connection carry another request after this one. */
  keepAlive: boolean;
  /** The client waits for `100 Continue` before sending the body. */
  expectContinue: boolean;
}

/** Most header lines in a head. */
const MAX_HEADERS = 100;
/** Longest chunk-size line (with extensions) or trailer line. */
const MAX_LINE = 1024;
/** Largest piece a body of declared length is read in (an HTTP link's upstream POST: 1 MiB). */
const MAX_BODY_PIECE = 1 << 20;
/** Bytes of a token (RFC 9110 5.6.2). */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Control characters a field value must not hold (HTAB is allowed). */
// deno-lint-ignore no-control-regex
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;
const CRLF_CRLF = [13, 10, 13, 10];
/** Methods a `Request` cannot carry (the Fetch standard forbids them). */
const UNSERVED_METHODS = new Set(["CONNECT", "TRACE", "TRACK"]);

/**
 * Why `target` is not a request target this server takes, or null (RFC 9112
 * 3.2): a path (origin-form) or an `http(s)` URL (absolute-form), and `*`
 * for OPTIONS. A path that a URL parser would rewrite — dot segments, plain
 * or encoded; backslashes; encoded slashes; a leading `//`, read as a host —
 * is refused: a reverse proxy in front, matching paths as sent, would allow
 * `/relay/..\metrics` for what we would serve as `/metrics`.
 */
export function targetProblem(method: string, target: string): string | null {
  if (target === "*") return method === "OPTIONS" ? null : "* is a target of OPTIONS only";
  // The authority is a host and a port: anything else in it (a backslash,
  // which a URL parser reads as a slash) is refused with the rest.
  const authority = /^https?:\/\/[A-Za-z0-9.\-_~%\[\]:]+/i.exec(target);
  let path = authority ? target.slice(authority[0].length) || "/" : target;
  // `http://host?q`: an empty path with a query is the root's.
  if (authority && path.startsWith("?")) path = `/${path}`;
  // In the authority or the path; a query may hold what it likes (a gateway's parameters).
  const beforeQuery = target.split("?", 1)[0];
  if (/\\|%5c/i.test(beforeQuery)) return "the request target holds a backslash";
  if (!path.startsWith("/") || path.startsWith("//")) {
    return "the request target must be a path, or an http(s) URL";
  }
  if (target.includes("#")) return "a request target has no fragment (#)";
  const query = path.indexOf("?");
  const pathOnly = query < 0 ? path : path.slice(0, query);
  if (/\\|%2f|%5c/i.test(pathOnly)) return "the path holds a backslash or an encoded slash";
  for (const segment of pathOnly.split("/")) {
    const plain = segment.replace(/%2e/gi, ".");
    if (plain === "." || plain === "..") return "the path holds a dot segment (. or ..)";
  }
  return null;
}

function indexOfSequence(bytes: Uint8Array, sequence: number[], from = 0): number {
  const last = bytes.length - sequence.length;
  outer: for (let i = from; i <= last; i++) {
    for (let j = 0; j < sequence.length; j++) {
      if (bytes[i + j] !== sequence[j]) continue outer;
    }
    return i;
  }
  return -1;
}

/** Bytes as a string of the same code units (ISO-8859-1): what `Headers` takes. */
function latin1(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    out += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return out;
}

function tokens(value: string | null): string[] {
  return value === null ? [] : value.toLowerCase().split(",").map((t) => t.trim()).filter(Boolean);
}

/**
 * Reads the next request head; null if the connection ends before one is
 * whole (the client hung up). Throws {@linkcode HttpError} for a malformed
 * or oversized head.
 */
export async function readHead(reader: ByteReader): Promise<RequestHead | null> {
  let end: number;
  for (let scanned = 0;;) {
    const buffered = reader.buffered;
    // Robustness (RFC 9112 2.2): empty lines before a request line are skipped.
    let skip = 0;
    while (buffered[skip] === 13 && buffered[skip + 1] === 10) skip += 2;
    if (skip > 0) {
      reader.consume(skip);
      scanned = 0;
      continue;
    }
    // A TLS ClientHello (record type 22): a client that took this relay for
    // an https:// one. Answered at once, so that it fails now, not at a timeout.
    if (buffered[0] === 0x16) throw new HttpError(400, "this relay speaks plain HTTP, not TLS");
    // Anything else that cannot start a method (an immortal session's hello,
    // an SSH client): answered at once too, not at the header timeout.
    if (
      buffered.length > 0 && buffered[0] !== 13 && !TOKEN.test(String.fromCharCode(buffered[0]))
    ) {
      throw new HttpError(400, "this is an HTTP server: a request starts with a method");
    }
    end = indexOfSequence(buffered, CRLF_CRLF, Math.max(0, scanned - 3));
    if (end >= 0) break;
    scanned = buffered.length;
    let more: boolean;
    try {
      more = await reader.fill();
    } catch (error) {
      if (error instanceof ReaderFull) {
        // The request line alone fills it: the URL is what is too long (RFC 9110 15.5.15).
        const lineEnd = indexOfSequence(reader.buffered, [13, 10]);
        if (lineEnd < 0) throw new HttpError(414, "the request target is too long");
        throw new HttpError(431, "the request head is too large");
      }
      throw error;
    }
    // The client hung up, before a request or in the middle of one: nobody
    // to answer, and no malformed request to count.
    if (!more) return null;
  }
  const text = latin1(reader.buffered.subarray(0, end));
  reader.consume(end + 4);
  return parseHead(text);
}

/** Parses a request head (without its final empty line). */
export function parseHead(text: string): RequestHead {
  const lines = text.split("\r\n");
  if (lines.some((line) => line.includes("\n") || line.includes("\r"))) {
    throw new HttpError(400, "lines must end with CRLF");
  }
  const parts = lines[0].split(" ");
  if (parts.length !== 3 || !TOKEN.test(parts[0]) || !/^[\x21-\x7e]+$/.test(parts[1])) {
    throw new HttpError(400, "malformed request line");
  }
  const [method, target, versionText] = parts;
  if (!/^HTTP\/\d\.\d$/.test(versionText)) throw new HttpError(400, "malformed request line");
  if (versionText !== "HTTP/1.1" && versionText !== "HTTP/1.0") {
    throw new HttpError(505, `${versionText} is not supported`);
  }
  // Methods are case-sensitive (RFC 9110 9.1): `get` is no GET, though the
  // Request constructor would make it one; CONNECT, TRACE and TRACK it refuses.
  if (!/^[A-Z]+$/.test(method) || UNSERVED_METHODS.has(method)) {
    throw new HttpError(501, `${method} is not a method this server implements`);
  }
  const problem = targetProblem(method, target);
  if (problem !== null) throw new HttpError(400, problem);
  const version = versionText;
  if (lines.length - 1 > MAX_HEADERS) throw new HttpError(431, "too many header fields");
  const headers = new Headers();
  let hosts = 0;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    // A leading space is an obsolete line folding; a space before the colon
    // is how smuggling starts. Both are refused (RFC 9112 5.1, 5.2).
    if (!TOKEN.test(name)) throw new HttpError(400, "malformed header field");
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
    if (BAD_VALUE.test(value)) throw new HttpError(400, `bad characters in header ${name}`);
    if (name.toLowerCase() === "host") hosts++;
    headers.append(name, value);
  }
  if (version === "HTTP/1.1" && hosts !== 1) {
    throw new HttpError(400, "an HTTP/1.1 request needs exactly one Host header");
  }
  const connection = tokens(headers.get("connection"));
  const keepAlive = version === "HTTP/1.1"
    ? !connection.includes("close")
    : connection.includes("keep-alive");
  const expect = headers.get("expect");
  if (expect !== null && expect.toLowerCase() !== "100-continue") {
    throw new HttpError(417, `cannot meet the expectation "${expect}"`);
  }
  return {
    method,
    target,
    version,
    headers,
    body: bodyFraming(headers, version),
    keepAlive,
    expectContinue: expect !== null && version === "HTTP/1.1",
  };
}

function bodyFraming(headers: Headers, version: string): BodyFraming {
  const encoding = headers.get("transfer-encoding");
  const length = headers.get("content-length");
  if (encoding !== null) {
    if (length !== null) {
      throw new HttpError(400, "Content-Length and Transfer-Encoding must not come together");
    }
    if (version !== "HTTP/1.1") throw new HttpError(400, "Transfer-Encoding needs HTTP/1.1");
    if (encoding.toLowerCase() !== "chunked") {
      throw new HttpError(501, `transfer coding "${encoding}" is not supported`);
    }
    return { kind: "chunked" };
  }
  if (length === null) return { kind: "none" };
  // Repeated fields arrive joined by ", "; they must all say the same.
  const values = new Set(length.split(",").map((v) => v.trim()));
  const [only] = values;
  if (values.size !== 1 || !/^\d{1,15}$/.test(only)) {
    throw new HttpError(400, "malformed Content-Length");
  }
  const n = Number(only);
  return n === 0 ? { kind: "none" } : { kind: "length", length: n };
}

/** A body that ended before its framing said it would. */
export class BodyCut extends Error {
  /** The connection ended mid-body. */
  constructor() {
    super("the connection ended inside a request body");
    this.name = "BodyCut";
  }
}

async function readLine(reader: ByteReader): Promise<string> {
  for (;;) {
    const buffered = reader.buffered;
    const end = indexOfSequence(buffered, [13, 10]);
    if (end >= 0) {
      const line = latin1(buffered.subarray(0, end));
      reader.consume(end + 2);
      return line;
    }
    if (buffered.length > MAX_LINE) throw new HttpError(400, "a chunk line is too long");
    if (!(await reader.fill())) throw new BodyCut();
  }
}

/**
 * The body of a request as a stream read from `reader` (null when it has
 * none). `done` is called once the whole body was read, so the connection
 * knows whether it can carry another request; `firstRead` is awaited
 * before the first read (to send `100 Continue` only to a body that is
 * wanted).
 */
export function bodyStream(
  reader: ByteReader,
  framing: BodyFraming,
  done: () => void,
  firstRead?: () => Promise<void>,
): ReadableStream<Uint8Array> | null {
  if (framing.kind === "none") {
    done();
    return null;
  }
  let left = framing.kind === "length" ? framing.length : 0;
  let ended = false;
  const finish = (controller: ReadableStreamDefaultController<Uint8Array>) => {
    ended = true;
    controller.close();
    done();
  };
  let started = false;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (ended) return;
      if (!started) {
        started = true;
        await firstRead?.();
      }
      if (framing.kind === "chunked" && left === 0) {
        const line = await readLine(reader);
        // Whitespace may come before an extension's ";" (RFC 9112 7.1.1).
        const size = /^([0-9a-fA-F]{1,13})([ \t]*;.*)?$/.exec(line);
        if (!size) throw new HttpError(400, "malformed chunk size");
        left = parseInt(size[1], 16);
        if (left === 0) {
          // Trailer fields are read past and ignored; the empty line ends the body.
          for (let lines = 0; (await readLine(reader)) !== ""; lines++) {
            if (lines >= MAX_HEADERS) throw new HttpError(431, "too many trailer fields");
          }
          return finish(controller);
        }
      }
      // A body of declared length comes in whole pieces, read straight into
      // their own array: an upstream POST of 1 MiB costs a few large reads,
      // not 64 small ones, each a promise and a copy. Every handler reads a
      // body whole before it acts (nothing waits on a partial piece), and
      // refuses a declared length past its limit before reading, so a piece
      // never reserves more than the handler accepted. A chunk's size is not
      // checked by anyone first: chunked bodies come in small pieces.
      const chunk = framing.kind === "length"
        ? await reader.readExactly(Math.min(left, MAX_BODY_PIECE))
        : await reader.readSome(Math.min(left, 65_536));
      if (chunk === null) throw new BodyCut();
      left -= chunk.length;
      controller.enqueue(chunk);
      if (left > 0) return;
      if (framing.kind === "length") return finish(controller);
      if ((await readLine(reader)) !== "") throw new HttpError(400, "a chunk must end with CRLF");
    },
  }, { highWaterMark: 0 });
}
