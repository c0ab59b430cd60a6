/**
 * The server side of links over HTTP (PROTOCOL.md Part 4), as building
 * blocks: what a request is (an upgrade, an opening HTTP-streaming request,
 * an upstream POST), turning one into a link, and feeding upstream POSTs to
 * their link. {@linkcode HttpLinkAcceptor} and the relay's pipes are built on
 * it.
 *
 * @module
 */

import { collectBytes, type CollectOptions, errorMessage } from "../_util.ts";
import { LINK_HEADER, MAX_POST_BYTES, SEQ_HEADER, ServerHttpStreamLink } from "./http_stream.ts";
import type { Link } from "./link.ts";
import { WebSocketLink } from "./websocket.ts";

/** A link being opened, and the response that opens it (return it from the handler). */
export interface OpenedLink {
  link: Link;
  response: Response;
}

/**
 * Turns a WebSocket handshake into a link; a string says why it cannot.
 * Deno's `upgradeWebSocket` by default; a server of its own may bring its own.
 */
export type UpgradeToLink = (req: Request, remoteAddr: Deno.Addr | undefined) =>
  | OpenedLink
  | string;

/** Upgrades with `Deno.upgradeWebSocket` (the request must come from `Deno.serve`). */
export const denoUpgrade: UpgradeToLink = (req, remoteAddr) => {
  let upgraded: { socket: WebSocket; response: Response };
  try {
    // No idle timeout of the socket's own: the session's heartbeats decide
    // when a link is dead, and say so in the same way for every transport.
    upgraded = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
  } catch (error) {
    // A handshake with a header missing or wrong is the client's mistake (a
    // 400), not the server's: anyone could fill the log with 500s otherwise.
    return `not a WebSocket handshake: ${errorMessage(error)}`;
  }
  return { link: new WebSocketLink(upgraded.socket, { remoteAddr }), response: upgraded.response };
};

/** What a request to a link endpoint asks for. */
export type LinkRequestKind = "websocket" | "open" | "upstream" | null;

/** What `req` asks of a link endpoint; null when it is none of its requests. */
export function linkRequestKind(req: Request): LinkRequestKind {
  const linkId = req.headers.get(LINK_HEADER);
  if (req.method === "POST" && linkId === "open") return "open";
  if (req.method === "POST" && linkId !== null) return "upstream";
  if (req.headers.get("upgrade")?.toLowerCase() === "websocket") return "websocket";
  return null;
}

/**
 * Reads the body of a request that said it had none: over HTTP/2 a body
 * needs no header to say so (a link was opened with one). What comes is
 * read, not left to pile up, and a byte of it ends the link.
 */
function refuseLateBody(req: Request, link: Link): void {
  const body = req.body;
  if (body === null) return;
  (async () => {
    const reader = body.getReader();
    try {
      // Empty chunks are no body (a few at most; then it is one).
      for (let reads = 0; reads < 16; reads++) {
        const { done, value } = await reader.read();
        if (done) return;
        if (value.length > 0) break;
      }
      link.close();
    } catch {
      // The request went away: its link's response ends with it.
    } finally {
      reader.cancel().catch(() => {});
    }
  })();
}

/** Whether `req` says it has a body (a length other than 0, or chunks). */
function hasBody(req: Request): boolean {
  const length = req.headers.get("content-length");
  return req.headers.has("transfer-encoding") || (length !== null && length.trim() !== "0");
}

/** The answer to a request that is not for a link endpoint. */
export function notALinkRequest(): Response {
  return new Response("this endpoint takes immortal links (WebSocket, or HTTP streaming)", {
    status: 426,
    headers: { upgrade: "websocket" },
  });
}

/** The HTTP-streaming links of one endpoint, and the opening of links of both kinds. */
export class HttpLinkEndpoint {
  /** Open HTTP-streaming links, by id. */
  #streams = new Map<string, ServerHttpStreamLink>();
  #newId: () => string;

  /** `newId` names each HTTP-streaming link (a relay in a cluster puts its own id in). */
  constructor(newId: () => string = () => crypto.randomUUID()) {
    this.#newId = newId;
  }

  /** Whether `req` (an upstream POST) is for a link of this endpoint. */
  holds(req: Request): boolean {
    return this.#streams.has(req.headers.get(LINK_HEADER) ?? "");
  }

  /** Opens a link for a `websocket` or `open` request (see {@linkcode linkRequestKind}). */
  open(
    req: Request,
    remoteAddr: Deno.Addr | undefined,
    upgrade = denoUpgrade,
  ): OpenedLink | string {
    if (linkRequestKind(req) === "websocket") return upgrade(req, remoteAddr);
    if (hasBody(req)) {
      // Ours sends none. One with a body, answered by a response that lasts
      // as long as the link, had Deno.serve take the body for as long as
      // the client sent it, unread: 150 MiB a connection, before any key.
      req.body?.cancel().catch(() => {});
      return "a request that opens an HTTP-streaming link has no body";
    }
    const link: ServerHttpStreamLink = new ServerHttpStreamLink(
      remoteAddr,
      () => this.#streams.delete(link.id),
      this.#newId(),
    );
    this.#streams.set(link.id, link);
    refuseLateBody(req, link);
    return { link, response: link.response };
  }

  /** An upstream POST: its bytes go to their link. */
  async upstream(req: Request): Promise<Response> {
    const link = this.#streams.get(req.headers.get(LINK_HEADER) ?? "");
    if (!link) {
      await req.body?.cancel();
      return new Response("no such link", { status: 404 });
    }
    const seq = postNumber(req.headers.get(SEQ_HEADER));
    if (seq === null) {
      // A client that cannot number its POSTs cannot keep its bytes in order.
      await req.body?.cancel();
      link.close();
      return new Response(`${SEQ_HEADER} must be a number: 0, or digits without a leading 0`, {
        status: 400,
      });
    }
    // Judged by its number before its body is read: a body is held only for
    // a number in flight, once (PROTOCOL.md 4.2).
    const verdict = await link.admit(seq);
    if (verdict !== "read") {
      await req.body?.cancel();
      if (verdict === "repeat") return await link.post(seq, new Uint8Array(0));
      return verdict === "closed"
        ? new Response("the link is closed", { status: 410 })
        : new Response("out of sequence", { status: 409 });
    }
    let body: Uint8Array;
    try {
      body = await readBounded(req, MAX_POST_BYTES, { signal: link.signal });
    } catch (error) {
      link.release(seq);
      if (error instanceof RangeError) {
        link.close();
        return new Response("the upstream POST was too large", { status: 400 });
      }
      if (link.signal.aborted) return new Response("the link is closed", { status: 410 });
      // Cut on the way (its connection died): its number is not taken, and
      // the client sends it again (PROTOCOL.md 4.2); the link goes on.
      return new Response("the upstream POST was cut", { status: 400 });
    }
    // Its number is taken (or waits its turn) once post() is called: a POST
    // waiting for this one then finds it a repeat.
    const answer = link.post(seq, body);
    link.release(seq);
    return await answer;
  }

  /** Ends every HTTP-streaming link. */
  close(): void {
    for (const link of [...this.#streams.values()]) link.close();
  }
}

/** An upstream POST's number (`x-immortal-seq`: 0, or digits without a leading 0), or null. */
function postNumber(text: string | null): number | null {
  if (text === null || !/^(0|[1-9][0-9]{0,15})$/.test(text)) return null;
  const seq = Number(text);
  return Number.isSafeInteger(seq) ? seq : null;
}

/**
 * A request body, whole; a `RangeError` past `max` bytes (declared or read);
 * `signal` stops the reading (the body is cancelled), `onPiece` hears of
 * each piece ({@linkcode collectBytes}).
 */
export async function readBounded(
  req: Request,
  max: number,
  { signal, onPiece }: Pick<CollectOptions, "signal" | "onPiece"> = {},
): Promise<Uint8Array<ArrayBuffer>> {
  if (Number(req.headers.get("content-length") ?? 0) > max) {
    await req.body?.cancel();
    throw new RangeError(`a body over ${max} bytes`);
  }
  // Our own server hands a body of declared length over in one piece: kept as it is.
  const tooLarge = () => new RangeError(`a body over ${max} bytes`);
  return await collectBytes(req.body, { max, tooLarge, signal, onPiece });
}
