/**
 * The relay as an HTTP request handler: mount it in any `Deno.serve` app, or
 * use {@linkcode serveRelay}.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { CHAT_PAGE_HTML } from "./chat_page.ts";
import { _Hub, _JoinRefused, type _Member, type _Sink, type RelayStats } from "./hub.ts";
import { _relaySettings, type RelayOptions } from "./options.ts";
import { _asFrame, _parseFrame, _PATHS, _STREAM_HEADER, SECRET_HEADER } from "./protocol.ts";

const log = getLogger(["immortal", "relay"]);
const encoder = new TextEncoder();

/** Headers that keep proxies and browsers from caching or buffering an event stream. */
const STREAM_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache, no-store, no-transform",
  "x-accel-buffering": "no",
};

/**
 * A relay: sessions of nodes that reach it over WebSocket or, where proxies
 * break WebSockets, over a streaming response plus POSTs.
 *
 * @example Mount it in your own server
 * ```ts ignore
 * import { Relay } from "@immortal/sockets";
 * const relay = new Relay({ secret: Deno.env.get("RELAY_SECRET") });
 * Deno.serve((req, info) => relay.handle(req, info));
 * ```
 */
export class Relay implements Disposable {
  #hub: _Hub;
  #streams = new Map<string, _Member>();

  /** Creates a relay; see {@linkcode RelayOptions}. */
  constructor(options: RelayOptions = {}) {
    this.#hub = new _Hub(_relaySettings(options));
  }

  /** Whether the relay requires a secret. */
  get open(): boolean {
    return this.#hub.settings.secret === undefined;
  }

  /** Counters and gauges (also served at `/metrics`). */
  get stats(): RelayStats {
    return this.#hub.stats;
  }

  /** Handles one HTTP request (a `Deno.serve` handler). */
  handle(req: Request, _info?: Deno.ServeHandlerInfo): Response | Promise<Response> {
    const url = new URL(req.url);
    const method = req.method;
    const route = `${method} ${url.pathname}`;
    switch (route) {
      case "GET /":
      case "HEAD /":
        return this.#home();
      case "GET /chat":
        return this.#hub.settings.chatPage
          ? new Response(CHAT_PAGE_HTML, {
            headers: { "content-type": "text/html; charset=utf-8" },
          })
          : this.#refuse(404, "not-found", "no chat page on this relay");
      case "GET /healthz":
        return Response.json({ status: "ok", ...this.#gauges() });
      case "GET /metrics":
        return new Response(this.#metrics(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
      case `GET ${_PATHS.ws}`:
        return this.#webSocket(req);
      case `POST ${_PATHS.stream}`:
        return this.#stream(req);
      case `POST ${_PATHS.send}`:
        return this.#send(req);
    }
    const known = ["/", "/chat", "/healthz", "/metrics", ...Object.values(_PATHS)];
    if (known.includes(url.pathname)) {
      return this.#refuse(405, "method-not-allowed", `${method} is not allowed here`);
    }
    return this.#refuse(404, "not-found", "no such page");
  }

  /** Disconnects every node and stops the keep-alive timer. */
  close(): void {
    this.#hub.close();
    this.#streams.clear();
  }

  /** Same as {@linkcode Relay.close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #refuse(status: number, code: string, message: string): Response {
    this.#hub.refuse(code);
    return Response.json({ error: code, message }, { status });
  }

  #gauges() {
    const { sessions, nodes } = this.#hub.stats;
    return { sessions, nodes };
  }

  #home(): Response {
    const { sessions, nodes } = this.#gauges();
    const body = `<!doctype html><meta charset="utf-8"><title>immortal relay</title>
<h1>immortal relay</h1>
<p>${sessions} session(s), ${nodes} node(s) connected.${
      this.open ? " <strong>This relay is open: it has no secret.</strong>" : ""
    }</p>
<p>Nodes connect with <code>RelayNode.connect()</code> from <code>@immortal/sockets</code>.
${this.#hub.settings.chatPage ? '<a href="/chat">Chat in the browser</a>.' : ""}</p>
<p><a href="/healthz">/healthz</a> · <a href="/metrics">/metrics</a></p>
`;
    return new Response(body, { headers: { "content-type": "text/html; charset=utf-8" } });
  }

  #metrics(): string {
    const s = this.#hub.stats;
    const lines = [
      "# HELP immortal_relay_sessions Sessions with at least one node.",
      "# TYPE immortal_relay_sessions gauge",
      `immortal_relay_sessions ${s.sessions}`,
      "# HELP immortal_relay_nodes Nodes joined.",
      "# TYPE immortal_relay_nodes gauge",
      `immortal_relay_nodes ${s.nodes}`,
    ];
    const counters: [string, string, number][] = [
      ["joins", "Joins accepted.", s.joins],
      ["messages", "Messages accepted from nodes.", s.messages],
      ["deliveries", "Message copies handed to receiving nodes.", s.deliveries],
      ["dropped", "Message copies dropped: the receiver's queue was full.", s.dropped],
      ["slow_disconnects", "Nodes disconnected: their queue was full.", s.slowDisconnects],
      ["faded", "Nodes declared gone after missing keep-alives.", s.faded],
    ];
    for (const [name, help, value] of counters) {
      lines.push(
        `# HELP immortal_relay_${name}_total ${help}`,
        `# TYPE immortal_relay_${name}_total counter`,
        `immortal_relay_${name}_total ${value}`,
      );
    }
    lines.push(
      "# HELP immortal_relay_refused_total Requests and frames refused, by reason.",
      "# TYPE immortal_relay_refused_total counter",
    );
    for (const [reason, value] of Object.entries(s.refused)) {
      lines.push(`immortal_relay_refused_total{reason="${reason}"} ${value}`);
    }
    return lines.join("\n") + "\n";
  }

  /** Bytes of a frame as UTF-8, computed only when the length alone cannot decide. */
  #tooLarge(data: string): boolean {
    const max = this.#hub.settings.maxMessageBytes;
    if (data.length > max) return true;
    return data.length * 3 > max && encoder.encode(data).length > max;
  }

  #tooLargeMessage(): string {
    return `frames are limited to ${this.#hub.settings.maxMessageBytes} bytes`;
  }

  #webSocket(req: Request): Response {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return this.#refuse(426, "upgrade-required", "this endpoint speaks WebSocket");
    }
    const headerSecret = req.headers.get(SECRET_HEADER);
    if (headerSecret !== null) {
      try {
        this.#hub.checkSecret(headerSecret);
      } catch (error) {
        const e = error as _JoinRefused;
        return Response.json({ error: e.code, message: e.message }, { status: e.status });
      }
    }
    // Our own keep-alive detects dead nodes; Deno's idle timeout would be a second, slower one.
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
    const hub = this.#hub;
    const settings = hub.settings;
    let member: _Member | null = null;
    const sink: _Sink = {
      push(data) {
        if (socket.readyState !== WebSocket.OPEN) return true;
        if (socket.bufferedAmount > settings.maxQueueBytes) return false;
        socket.send(data);
        return true;
      },
      close(code, reason) {
        try {
          socket.close(code, reason);
        } catch {
          // Already closing.
        }
      },
    };
    // Before the join a bad frame ends the connection; after it, only the frame is refused.
    const refuse = (code: number, error: string, message: string) => {
      hub.refuseFrame(sink, error, message);
      if (member === null) sink.close(code, message.slice(0, 120));
    };
    const authTimer = setTimeout(() => {
      if (member === null) refuse(4408, "auth-timeout", "no hello within the auth deadline");
    }, settings.authTimeout);
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") {
        hub.refuseFrame(sink, "bad-frame", "frames are JSON text");
        return sink.close(1003, "frames are JSON text");
      }
      if (this.#tooLarge(event.data)) return refuse(1009, "too-large", this.#tooLargeMessage());
      const frame = _parseFrame(event.data);
      if (frame === null) return refuse(1003, "bad-frame", "frames are JSON objects");
      if (member !== null) return hub.receive(member, frame);
      if (frame.t !== "hello") return refuse(4400, "bad-hello", "the first frame must be a hello");
      clearTimeout(authTimer);
      try {
        if (headerSecret === null) hub.checkSecret(frame.secret);
        member = hub.join(frame, sink);
      } catch (error) {
        if (!(error instanceof _JoinRefused)) throw error;
        refuse(4000 + error.status, error.code, error.message);
      }
    };
    socket.onclose = () => {
      clearTimeout(authTimer);
      if (member !== null && member.sink === sink) hub.leave(member, "gone");
    };
    socket.onerror = () => {/* onclose follows */};
    return response;
  }

  async #stream(req: Request): Promise<Response> {
    const hub = this.#hub;
    const settings = hub.settings;
    let hello: Record<string, unknown> | null;
    try {
      hello = _parseFrame((await _readBody(req, settings.maxMessageBytes)).text);
    } catch (error) {
      return this.#refuse(413, "too-large", (error as Error).message);
    }
    if (hello === null || hello.t !== "hello") {
      return this.#refuse(400, "bad-hello", "the body must be a JSON hello frame");
    }
    const streamId = crypto.randomUUID();
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    let closed = false;
    const sink: _Sink = {
      push(data) {
        if (closed) return true;
        if ((controller.desiredSize ?? 0) <= 0) return false;
        controller.enqueue(encoder.encode(`data: ${data}\n\n`));
        return true;
      },
      close: (code, reason) => {
        if (closed) return;
        closed = true;
        this.#streams.delete(streamId);
        try {
          controller.enqueue(
            encoder.encode(`event: close\ndata: ${JSON.stringify({ code, reason })}\n\n`),
          );
          controller.close();
        } catch {
          // The client is gone already.
        }
      },
    };
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        controller = c;
      },
      cancel: () => {
        closed = true;
        this.#streams.delete(streamId);
        if (member && member.sink === sink) hub.leave(member, "gone");
      },
    }, { highWaterMark: settings.maxQueueBytes, size: (chunk) => chunk.byteLength });
    let member: _Member;
    try {
      hub.checkSecret(req.headers.get(SECRET_HEADER) ?? hello.secret);
      member = hub.join(hello, sink, { stream: streamId });
    } catch (error) {
      if (!(error instanceof _JoinRefused)) throw error;
      closed = true;
      return Response.json({ error: error.code, message: error.message }, {
        status: error.status,
      });
    }
    this.#streams.set(streamId, member);
    log.debug("Node {nickname} uses the HTTP streaming transport", { nickname: member.nickname });
    return new Response(body, { headers: STREAM_HEADERS });
  }

  async #send(req: Request): Promise<Response> {
    const streamId = req.headers.get(_STREAM_HEADER) ?? "";
    const member = this.#streams.get(streamId);
    if (!member) return this.#refuse(404, "no-such-stream", "unknown or closed stream");
    const settings = this.#hub.settings;
    let body: { text: string; size: number };
    try {
      // A POST may carry a batch of frames; each is still held to the frame limit below.
      body = await _readBody(req, settings.maxMessageBytes * 16);
    } catch (error) {
      return this.#refuse(413, "too-large", (error as Error).message);
    }
    let frames: unknown;
    try {
      frames = JSON.parse(body.text);
    } catch {
      return this.#refuse(400, "bad-frame", "the body must be JSON");
    }
    if (!Array.isArray(frames)) frames = [frames];
    // A body within the frame limit holds only frames within it; only a larger
    // batch needs its frames measured one by one.
    const measure = body.size > settings.maxMessageBytes;
    for (const value of frames as unknown[]) {
      if (this.#streams.get(streamId) !== member) break; // left mid-batch (a bye)
      const frame = _asFrame(value);
      // Like on a WebSocket, a bad frame is refused on its own; the stream goes on.
      if (frame === null) {
        this.#hub.refuseFrame(member.sink, "bad-frame", "frames are JSON objects");
      } else if (measure && this.#tooLarge(JSON.stringify(frame))) {
        this.#hub.refuseFrame(member.sink, "too-large", this.#tooLargeMessage());
      } else {
        this.#hub.receive(member, frame);
      }
    }
    return new Response(null, { status: 204 });
  }
}

/** Reads a request body as text (and its size in bytes), refusing more than `max` bytes early. */
async function _readBody(req: Request, max: number): Promise<{ text: string; size: number }> {
  const declared = Number(req.headers.get("content-length") ?? 0);
  if (declared > max) {
    await req.body?.cancel();
    throw new Error(`the body is larger than ${max} bytes`);
  }
  if (!req.body) return { text: "", size: 0 };
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body) {
    size += chunk.byteLength;
    if (size > max) throw new Error(`the body is larger than ${max} bytes`);
    chunks.push(chunk);
  }
  const all = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return { text: new TextDecoder().decode(all), size };
}
