/**
 * Links over plain HTTP requests, for proxies that refuse WebSocket: one
 * long response carries the server's bytes down (binary, flushed per write,
 * with headers that keep proxies from buffering it — the modern form of
 * TcpJLib's "long WAV file"), and POSTs carry the client's bytes up: a few
 * in flight at once (as many as the server announces, at most four), each
 * with everything written while they were. PROTOCOL.md 4.2 has the wire
 * format.
 *
 * A failed request ends the link, and the session above resumes on a new
 * one, as after any other link's death; but an upstream POST that failed
 * without an answer goes once more, with its number (a proxy may close a
 * kept-alive connection just as it is used again): the server takes each
 * number's bytes once.
 *
 * @module
 */

import { errorMessage, innermostMessage, isNotCapable, refusalText } from "../_util.ts";
import { type Dialer, type Link, urlAddr } from "./link.ts";
import { ByteQueue } from "./_byte_queue.ts";
import { PostBodies } from "./_post_bodies.ts";
import { PostSizing } from "./_post_sizing.ts";
import { CLOSE_GRACE_MS } from "./_websocket_client.ts";

/** Header naming the link a request belongs to; `open` on the request that opens one. */
export const LINK_HEADER = "x-immortal-link";
/** Header numbering the upstream POSTs of a link: 0, 1, 2, ... */
export const SEQ_HEADER = "x-immortal-seq";
/**
 * Header of the response that opens a link: how many upstream POSTs the
 * server takes in flight at once (absent: one).
 */
export const UPSTREAM_HEADER = "x-immortal-upstream";
/**
 * Upstream POSTs in flight at once, both ways: what our server announces,
 * and the most our client sends whatever a server announces. One at a time
 * made the upstream one round trip per MiB: through a relay 50 ms away
 * (bench/relay_tunnel.ts --delay=25), 0.12 Gbit/s; with 2, 0.25; with 4,
 * 0.41. The server may hold a MiB per POST in flight, so no more.
 */
export const MAX_POSTS_IN_FLIGHT = 4;
/** Headers that keep proxies and browsers from caching or buffering the downstream. */
export const DOWNSTREAM_HEADERS = {
  "content-type": "application/octet-stream",
  "cache-control": "no-cache, no-store, no-transform",
  "x-accel-buffering": "no",
};
/** Most bytes one upstream POST carries. */
export const MAX_POST_BYTES = 1 << 20;
/** Bytes written and not yet answered beyond which a write waits: the POSTs in flight, and the next. */
const HIGH_WATER = (MAX_POSTS_IN_FLIGHT + 1) * MAX_POST_BYTES;
/** Bytes the server queues from upstream POSTs before it answers the next one only once read. */
const UP_HIGH_WATER = 512 * 1024;
/** Bytes the server queues for the downstream beyond which a write waits. */
const DOWN_HIGH_WATER = 512 * 1024;

/**
 * An endpoint answered the request that opens a link with something other
 * than a link: its status and body say why (a relay's JSON refusal, say).
 */
export class LinkRefused extends Error {
  /** `message` for people; `status` and `body` as the endpoint answered. */
  constructor(readonly status: number, readonly body: string, message: string) {
    super(message);
    this.name = "LinkRefused";
  }
}

function linkClosed(why: string): Deno.errors.ConnectionReset {
  return new Deno.errors.ConnectionReset(`HTTP link: ${why}`);
}

/**
 * The server's end of an HTTP-streaming link: `write` feeds the downstream
 * response, POSTs feed `read`.
 */
export class ServerHttpStreamLink implements Link {
  readonly remoteAddr?: Deno.Addr;
  readonly id: string;
  /** The downstream response; return it from the handler. */
  readonly response: Response;
  #up = new ByteQueue();
  #nextSeq = 0;
  /** POSTs that came ahead of their turn, by number: their bytes, and their answer's wake-up. */
  #early = new Map<number, { body: Uint8Array; taken: () => void; done: Promise<void> }>();
  /** Bytes of the POSTs in `#early`. */
  #earlyBytes = 0;
  /** Numbers whose body one POST is reading now: another with it waits for that one. */
  #reading = new Map<number, PromiseWithResolvers<void>>();
  /** Ends the body reads of this link's POSTs when it closes. */
  #abort = new AbortController();
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #pulled: (() => void) | null = null;
  #closed = false;
  #onClose: () => void;

  /** A link whose downstream is `response`; `onClose` runs once when it ends. */
  constructor(
    remoteAddr: Deno.Addr | undefined,
    onClose: () => void,
    id: string = crypto.randomUUID(),
  ) {
    this.remoteAddr = remoteAddr;
    this.id = id;
    this.#onClose = onClose;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => {
        const pulled = this.#pulled;
        this.#pulled = null;
        pulled?.();
      },
      // The client went away (or a proxy dropped the response).
      cancel: () => this.close(),
    }, { highWaterMark: DOWN_HIGH_WATER, size: (chunk) => chunk.byteLength });
    this.response = new Response(body, {
      headers: {
        ...DOWNSTREAM_HEADERS,
        [LINK_HEADER]: this.id,
        [UPSTREAM_HEADER]: String(MAX_POSTS_IN_FLIGHT),
      },
    });
  }

  /** Bytes held: received and not yet read, and written but not yet sent down. */
  get queuedBytes(): number {
    if (this.#closed) return 0;
    return this.#up.size + this.#earlyBytes +
      Math.max(0, DOWN_HIGH_WATER - (this.#controller.desiredSize ?? 0));
  }

  read(buffer: Uint8Array): Promise<number | null> {
    return this.#up.read(buffer);
  }

  /** The oldest upstream bytes, at most `max`, as POSTed: the caller's own (no copy). */
  take(max: number): Promise<Uint8Array | null> {
    return this.#up.take(max);
  }

  write(data: Uint8Array): Promise<void> {
    // A copy: the response holds it until the client has read it.
    return this.writeOwned(data.slice());
  }

  /** `write` of bytes nobody else will touch: the response holds them as they are. */
  async writeOwned(data: Uint8Array): Promise<void> {
    if (this.#closed) throw linkClosed("closed");
    this.#controller.enqueue(data);
    while ((this.#controller.desiredSize ?? 0) <= 0) {
      await new Promise<void>((resolve) => this.#pulled = resolve);
      if (this.#closed) throw linkClosed("closed while writing");
    }
  }

  /** Aborted once the link is closed: a POST still reading its body stops. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /**
   * Where an upstream POST numbered `seq` stands, before its body is read:
   * `read` (read it, then {@linkcode ServerHttpStreamLink.post}; the number
   * is reserved until {@linkcode ServerHttpStreamLink.release}), `repeat`
   * (its number was taken: answer it with `post` and an empty body),
   * `out-of-sequence` (past the POSTs in flight: the link is closed) or
   * `closed`. A POST whose number another one is reading waits for that one:
   * a body is held once per number, and only for numbers in flight, whatever
   * a client (or a stranger who knows the link's id) sends.
   */
  async admit(seq: number): Promise<"read" | "repeat" | "out-of-sequence" | "closed"> {
    for (;;) {
      if (this.#closed) return "closed";
      if (seq < this.#nextSeq || this.#early.has(seq)) return "repeat";
      if (seq >= this.#nextSeq + MAX_POSTS_IN_FLIGHT) {
        this.close(linkClosed(`upstream POST ${seq} where ${this.#nextSeq} was due`));
        return "out-of-sequence";
      }
      const reading = this.#reading.get(seq);
      if (reading === undefined) break;
      await reading.promise;
    }
    this.#reading.set(seq, Promise.withResolvers());
    return "read";
  }

  /** The POST that {@linkcode ServerHttpStreamLink.admit} let read `seq` is done with it (posted, or cut). */
  release(seq: number): void {
    this.#reading.get(seq)?.resolve();
    this.#reading.delete(seq);
  }

  /**
   * One upstream POST: `seq` must be the next number or one of the next few
   * (POSTs in flight together may arrive in any order, each on its own
   * connection); one ahead of its turn waits for the ones before it. A number
   * already taken or waiting is a repeat (a client sends a POST again when
   * its connection died under it, not knowing whether it arrived; a proxy may
   * replay one): its bytes are dropped, and it is answered as the original
   * is. One too far ahead ends the link. Answers once the bytes are taken
   * and the queue is under its bound, so a fast sender waits for a slow
   * reader (and a 204 always lets the client's window move on: a repeat
   * answered while its original still waited let the client send a number
   * too far ahead).
   */
  async post(seq: number, body: Uint8Array): Promise<Response> {
    if (this.#closed) return new Response("the link is closed", { status: 410 });
    const next = this.#nextSeq;
    const original = this.#early.get(seq);
    if (seq < next || original) {
      if (original) await original.done;
      if (this.#closed) return new Response("the link is closed", { status: 410 });
      await this.#up.below(UP_HIGH_WATER);
      return new Response(null, { status: 204 });
    }
    if (seq >= next + MAX_POSTS_IN_FLIGHT) {
      this.close(linkClosed(`upstream POST ${seq} where ${next} was due`));
      return new Response("out of sequence", { status: 409 });
    }
    if (seq !== next) {
      // Its bytes are taken by the POST whose turn comes before it, in the
      // same synchronous step: a replay of this number that arrives meanwhile
      // finds it taken or waiting, never due.
      const taken = Promise.withResolvers<void>();
      this.#early.set(seq, { body, taken: taken.resolve, done: taken.promise });
      this.#earlyBytes += body.length;
      await taken.promise;
      if (this.#closed) return new Response("the link is closed", { status: 410 });
    } else {
      this.#take(body);
      for (let early; (early = this.#early.get(this.#nextSeq)) !== undefined;) {
        this.#early.delete(this.#nextSeq);
        this.#earlyBytes -= early.body.length;
        this.#take(early.body);
        early.taken();
      }
    }
    await this.#up.below(UP_HIGH_WATER);
    return new Response(null, { status: 204 });
  }

  /** Queues the bytes of the POST whose turn it is; the next number is due. */
  #take(body: Uint8Array): void {
    this.#nextSeq++;
    if (body.length > 0) this.#up.push(body);
  }

  close(error?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#up.end(error);
    try {
      this.#controller.close();
    } catch {
      // Cancelled already.
    }
    const pulled = this.#pulled;
    this.#pulled = null;
    pulled?.();
    for (const early of this.#early.values()) early.taken();
    this.#early.clear();
    this.#earlyBytes = 0;
    for (const reading of this.#reading.values()) reading.resolve();
    this.#reading.clear();
    this.#abort.abort(new Deno.errors.BadResource("the link is closed"));
    this.#onClose();
  }
}

/** The client's end: the downstream response's body, and the POSTs. */
class ClientHttpStreamLink implements Link {
  /** The server dialed (no socket of ours tells: fetch has it). */
  readonly remoteAddr: Deno.NetAddr;
  #url: URL;
  #id: string;
  #client?: Deno.HttpClient;
  #down: ReadableStreamDefaultReader<Uint8Array>;
  #downChunk: Uint8Array | null = null;
  #abort: AbortController;
  /** Written, not POSTed yet. */
  #pending: PostBodies;
  /** The dialer's POST size, told how the POSTs of this link fared. */
  #sizing: PostSizing;
  /** Written and not yet answered: pending, and in the POSTs in flight. */
  #unanswered = 0;
  #seq = 0;
  #inFlight = 0;
  #maxInFlight: number;
  #error: Error | null = null;
  /** No more writes: the link is closing (what was written still goes out) or ended. */
  #closed = false;
  /** Every request of the link is over (aborted, or answered). */
  #ended = false;
  #grace: ReturnType<typeof setTimeout> | undefined;
  /** Settles a pending read at close (the downstream itself ends later, with the POSTs). */
  #wakeReader: (() => void) | null = null;
  #drained: (() => void)[] = [];

  /** The link `opened` (the answer to its opening request) at `url`. */
  constructor(url: URL, opened: OpenedHttpLink) {
    this.remoteAddr = urlAddr(url);
    this.#url = url;
    this.#id = opened.id;
    this.#client = opened.client;
    this.#down = opened.downstream.getReader();
    this.#abort = opened.abort;
    this.#maxInFlight = opened.postsInFlight;
    this.#sizing = opened.sizing;
    this.#pending = new PostBodies(opened.sizing.bytes);
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    if (this.#error) throw this.#error;
    while (this.#downChunk === null || this.#downChunk.length === 0) {
      if (this.#closed) return null;
      let next: ReadableStreamReadResult<Uint8Array> | null;
      try {
        // A promise of its own per read: racing one long-lived promise would
        // pile a reaction on it per read for the link's whole life.
        const closed = new Promise<null>((resolve) => this.#wakeReader = () => resolve(null));
        next = await Promise.race([this.#down.read(), closed]);
      } catch (error) {
        if (this.#closed) return null;
        throw linkClosed(`the downstream failed: ${errorMessage(error)}`);
      } finally {
        this.#wakeReader = null;
      }
      // Closed: a reader gets the end now, as from any link (Link.close).
      if (next === null || next.done) return null;
      this.#downChunk = next.value;
    }
    const chunk = this.#downChunk;
    const n = Math.min(chunk.length, buffer.length);
    buffer.set(chunk.subarray(0, n));
    this.#downChunk = n === chunk.length ? null : chunk.subarray(n);
    return n;
  }

  async write(data: Uint8Array): Promise<void> {
    if (this.#error) throw this.#error;
    if (this.#closed) throw linkClosed("closed");
    if (data.length === 0) return;
    this.#unanswered += data.length;
    // Into a body of ours, never the caller's buffer: a POST that goes again
    // (see #post) needs its bytes after this write returned.
    this.#pending.append(data);
    this.#postPending();
    while (this.#unanswered >= HIGH_WATER && !this.#closed) {
      await new Promise<void>((resolve) => this.#drained.push(resolve));
    }
    if (this.#error) throw this.#error;
  }

  /**
   * Resolves once every POST of what was written has been answered: the
   * session's last frames (a bye) are with the server. Reads go on (the
   * server ends the downstream when it is done).
   */
  async closeWrite(): Promise<void> {
    this.#postPending();
    while (this.#unanswered > 0 && !this.#closed && this.#error === null) {
      await new Promise<void>((resolve) => this.#drained.push(resolve));
    }
    if (this.#error) throw this.#error;
  }

  /**
   * Closes the link once what was written has gone out (within
   * {@linkcode CLOSE_GRACE_MS}): a write resolves when its POST starts, and
   * the session's last frame (its bye, or a close with the reason) is often
   * in the last one. Aborting it, the server would learn nothing, and keep
   * the session for its resume timeout.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wakeReader?.();
    for (const resolve of this.#drained.splice(0)) resolve();
    if (this.#error === null) this.#postPending();
    if (this.#inFlight === 0 || this.#error !== null) this.#end();
    else this.#grace = setTimeout(() => this.#end(), CLOSE_GRACE_MS);
  }

  /** Ends every request of the link: the downstream, and the POSTs still in flight. */
  #end(): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#grace);
    this.#abort.abort();
    this.#down.cancel().catch(() => {});
  }

  /** POSTs pending bodies, in order, while fewer POSTs than allowed are in flight. */
  #postPending(): void {
    while (this.#inFlight < this.#maxInFlight && !this.#ended) {
      const body = this.#pending.shift();
      if (body === null) return;
      this.#post(body, this.#seq++);
    }
  }

  /**
   * One upstream POST, number `seq` (in the order of the calls: the server
   * puts POSTs in flight together back in that order). Its answer lets the
   * next pending body go. A POST whose request failed without an answer (its
   * connection died under it: a proxy that closes a kept-alive connection
   * as it is used again) goes once more, with the same number: the server
   * takes a number it has as a repeat.
   */
  #post(body: Uint8Array<ArrayBuffer>, seq: number, again = false): void {
    const bytes = body.length;
    if (!again) this.#inFlight++;
    let answered = false;
    fetch(this.#url, {
      method: "POST",
      headers: {
        [LINK_HEADER]: this.#id,
        [SEQ_HEADER]: String(seq),
        "content-type": "application/octet-stream",
      },
      body,
      signal: this.#abort.signal,
      ...(this.#client ? { client: this.#client } : {}),
    }).then(async (response) => {
      answered = true;
      await response.body?.cancel();
      if (response.status === 413) {
        // Too large for the path (a proxy's limit): the next link posts less.
        const next = this.#sizing.failed(bytes, true);
        throw linkClosed(
          `an upstream POST of ${bytes} bytes was refused as too large (413): the next link's ` +
            `are at most ${next} bytes`,
        );
      }
      if (response.status !== 204) {
        throw linkClosed(`the server answered an upstream POST with ${response.status}`);
      }
      this.#sizing.answered(bytes);
      // Answered: the body's buffer may take the next writes.
      this.#pending.recycle(body);
      this.#inFlight--;
      this.#unanswered -= bytes;
      for (const resolve of this.#drained.splice(0)) resolve();
      this.#postPending();
      // Closing, and all of it went out: the link may end now.
      if (this.#closed && this.#inFlight === 0) this.#end();
    }).catch((error) => {
      // A POST aborted by our own close is no failure of the link's; one
      // that fails while the link closes ends it at once.
      if (this.#closed) {
        this.#end();
        return;
      }
      if (!answered && !again) return this.#post(body, seq, true);
      // Lost twice under way: maybe the path cuts what is that long.
      if (!answered) this.#sizing.failed(bytes, false);
      this.#error ??= error instanceof Deno.errors.ConnectionReset
        ? error
        : linkClosed(`an upstream POST failed: ${errorMessage(error)}`);
      this.close();
    });
  }
}

/** What the request that opens an HTTP-streaming link brought back. */
interface OpenedHttpLink {
  id: string;
  downstream: ReadableStream<Uint8Array>;
  /** Ends every request of the link: the downstream, and the POSTs in flight. */
  abort: AbortController;
  client?: Deno.HttpClient;
  /** Upstream POSTs in flight at once: the server's word, within ours. */
  postsInFlight: number;
  /** How large its POSTs may be: the dialer's, for all its links. */
  sizing: PostSizing;
}

/** Where and how {@linkcode httpStreamDialer} connects. */
export interface HttpStreamDialerOptions {
  /** The endpoint, `http:` or `https:`. */
  url: string | URL;
  /** An HTTP client for a forward proxy or extra CA certificates. */
  client?: Deno.HttpClient;
  /** Extra headers of the request that opens a link (credentials, say). */
  headers?: Record<string, string>;
}

/** The `http(s):` URL of an endpoint given as `http(s):` or `ws(s):`. */
export function httpUrl(url: string | URL): URL {
  const out = new URL(url);
  if (out.protocol === "ws:") out.protocol = "http:";
  else if (out.protocol === "wss:") out.protocol = "https:";
  if (out.protocol !== "http:" && out.protocol !== "https:") {
    throw new TypeError(`an HTTP URL is http:, https:, ws: or wss:, got ${out.protocol}`);
  }
  return out;
}

/**
 * Returns a {@linkcode Dialer} of HTTP-streaming links to `options.url` (an
 * {@linkcode HttpLinkAcceptor}'s endpoint).
 *
 * @example An immortal session over plain HTTP requests
 * ```ts
 * import { connect, HttpLinkAcceptor, httpStreamDialer, listen } from "@immortal/sockets";
 *
 * const links = new HttpLinkAcceptor();
 * using listener = listen({ acceptor: links });
 * await using server = Deno.serve(
 *   { hostname: "127.0.0.1", port: 0, onListen() {} },
 *   (req, info) => links.handle(req, info),
 * );
 * const url = `http://127.0.0.1:${server.addr.port}/`;
 * await using client = await connect({ dialer: httpStreamDialer({ url }) });
 * await using conn = await listener.accept();
 * await client.write(new TextEncoder().encode("no WebSocket needed"));
 * await client.closeWrite();
 * console.log(await new Response(conn.readable).text()); // "no WebSocket needed"
 * ```
 */
export function httpStreamDialer(options: HttpStreamDialerOptions): Dialer {
  const sizing = new PostSizing(MAX_POST_BYTES);
  return (signal) => dialHttpStream(options, sizing, signal);
}

/**
 * Opens one link, its POSTs sized by `sizing`: the dialer's, shared by its
 * links, so that what one link learnt of the path the next one knows.
 *
 * @internal
 */
export async function dialHttpStream(
  options: HttpStreamDialerOptions,
  sizing: PostSizing,
  signal: AbortSignal,
): Promise<Link> {
  const url = httpUrl(options.url);
  // The dial's signal bounds the dial only; the link's requests live on
  // under their own controller until the link is closed.
  const abort = new AbortController();
  const abortDial = () => abort.abort(signal.reason);
  signal.addEventListener("abort", abortDial);
  let response: Response;
  try {
    signal.throwIfAborted();
    response = await fetch(url, {
      method: "POST",
      headers: { ...options.headers, [LINK_HEADER]: "open" },
      signal: abort.signal,
      ...(options.client ? { client: options.client } : {}),
    });
  } catch (error) {
    if (signal.aborted || isNotCapable(error)) throw error;
    // fetch says "fetch failed"; what failed (refused, an untrusted
    // certificate, a proxy that is down) is in its cause.
    throw new Error(innermostMessage(error), { cause: error });
  } finally {
    signal.removeEventListener("abort", abortDial);
  }
  const id = response.headers.get(LINK_HEADER);
  if (response.status !== 200 || id === null || response.body === null) {
    // Read within the dial's time, and only as much as a reason takes.
    const text = await refusalText(response, signal);
    abort.abort();
    if (signal.aborted) throw signal.reason;
    throw new LinkRefused(response.status, text, `${url.href} answered ${response.status}`);
  }
  // A server that does not say takes one POST at a time.
  const announced = Number(response.headers.get(UPSTREAM_HEADER) ?? 1);
  return new ClientHttpStreamLink(url, {
    id,
    downstream: response.body,
    abort,
    client: options.client,
    postsInFlight: Number.isSafeInteger(announced)
      ? Math.max(1, Math.min(announced, MAX_POSTS_IN_FLIGHT))
      : 1,
    sizing,
  });
}
