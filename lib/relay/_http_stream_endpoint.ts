/**
 * The relay's HTTP streaming endpoint, for networks whose proxies break
 * WebSockets: `POST /relay/stream` with a hello opens a Server-Sent Events
 * response that carries the relay's frames down; `POST /relay/send` with the
 * stream's id in a header carries a node's frames (one, or a batch) up.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { forwardToOwner, ownedId } from "./_forward.ts";
import { type Hub, JoinRefused } from "./_hub.ts";
import {
  bodyRefusal,
  frameTooLarge,
  headerSecretRefusal,
  readBody,
  refusedJoin,
  refuseRequest,
  tooLargeReason,
} from "./_http.ts";
import { connectionOf } from "./_http_server.ts";
import { asFrameObject, parseNodeFrame, readJson } from "./_parse.ts";
import { SECRET_HEADER, STREAM_HEADER } from "./_protocol.ts";
import type { Member, Sink } from "./_room.ts";
import { sseClose, sseFrame } from "./_sse.ts";

const log = getLogger(["immortal", "relay"]);

/** Headers that keep proxies and browsers from caching or buffering an event stream. */
const STREAM_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache, no-store, no-transform",
  "x-accel-buffering": "no",
};

/** The open event streams of one relay, by stream id. */
export class HttpStreamEndpoint {
  #hub: Hub;
  #streams = new Map<string, Member>();

  /** The endpoint of `hub`'s relay. */
  constructor(hub: Hub) {
    this.#hub = hub;
  }

  /** `POST /relay/stream`: joins the node whose hello is the body; answers with its event stream. */
  async open(req: Request, from?: string): Promise<Response> {
    const hub = this.#hub;
    const settings = hub.settings;
    // A secret in a header is checked before the body is read, as before a
    // WebSocket's upgrade: a wrong one is refused before the client sends
    // its hello (it waits for 100 Continue, if it asked for it).
    const wrongSecret = headerSecretRefusal(hub, req, from);
    if (wrongSecret) return wrongSecret;
    let text: string;
    try {
      text = (await readBody(req, settings.maxMessageBytes)).text;
    } catch (error) {
      return bodyRefusal(hub, error, "bad-hello");
    }
    const hello = asFrameObject(readJson(text));
    if (hello === null || hello.t !== "hello") {
      return refuseRequest(hub, 400, "bad-hello", "the body must be a JSON hello frame");
    }
    // In a cluster the id names this relay: a POST for it that reaches another relay comes here.
    const streamId = ownedId((await hub.cluster)?.id ?? null);
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    let closed = false;
    let member: Member | undefined;
    const sink: Sink = {
      push(data) {
        if (closed) return true;
        if ((controller.desiredSize ?? 0) <= 0) return false;
        controller.enqueue(sseFrame(data));
        return true;
      },
      close: (code, reason) => {
        if (closed) return;
        closed = true;
        this.#streams.delete(streamId);
        try {
          controller.enqueue(sseClose({ code, reason }));
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
        if (member) hub.detach(member, sink);
      },
    }, { highWaterMark: settings.maxQueueBytes, size: (chunk) => chunk.byteLength });
    try {
      member = await hub.admit(hello, req.headers.get(SECRET_HEADER), sink, {
        stream: streamId,
        from,
        left: () => closed || req.signal.aborted,
      });
    } catch (error) {
      if (!(error instanceof JoinRefused)) throw error;
      closed = true;
      return refusedJoin(error);
    }
    this.#streams.set(streamId, member);
    connectionOf(req)?.joined();
    log.debug("Node {nickname} uses the HTTP streaming transport", { nickname: member.nickname });
    return new Response(body, { headers: STREAM_HEADERS });
  }

  /**
   * `POST /relay/send`: a node's frames, one or an array, for the stream named
   * in the header. One for a stream another relay of the cluster holds goes
   * on to it, unless it came from a relay (`forwarded`) already.
   */
  async send(req: Request, forwarded = false): Promise<Response> {
    const hub = this.#hub;
    const streamId = req.headers.get(STREAM_HEADER) ?? "";
    const found = this.#streams.get(streamId);
    // A stream whose node said bye (its leave on its way to Redis) takes nothing more.
    const member = found !== undefined && hub.isMember(found) ? found : undefined;
    const max = hub.settings.maxMessageBytes;
    if (!member) {
      // Ours, and ended: not another relay's to take.
      const elsewhere = forwarded || found !== undefined
        ? null
        : await forwardToOwner(hub, req, streamId, max * 16);
      return elsewhere ?? refuseRequest(hub, 404, "no-such-stream", "unknown or closed stream");
    }
    let body: { text: string; size: number };
    try {
      // A POST may carry a batch of frames; each is still held to the frame limit below.
      body = await readBody(req, max * 16);
    } catch (error) {
      return bodyRefusal(hub, error, "bad-frame");
    }
    const value = readJson(body.text);
    if (value === undefined) return refuseRequest(hub, 400, "bad-frame", "the body must be JSON");
    const frames: unknown[] = Array.isArray(value) ? value : [value];
    // A body within the frame limit holds only frames within it; only a larger
    // batch needs its frames measured one by one.
    const measure = body.size > max;
    let leaving: Promise<void> | undefined;
    for (const item of frames) {
      if (this.#streams.get(streamId) !== member) break; // left mid-batch (a bye)
      // Like on a WebSocket, a bad frame is refused on its own; the stream goes on.
      if (measure && asFrameObject(item) !== null && frameTooLarge(JSON.stringify(item), max)) {
        hub.refuseFrame(member.sink, { code: "too-large", reason: tooLargeReason(max) });
      } else {
        leaving = hub.handle(member, parseNodeFrame(item, hub.rules));
        if (leaving !== undefined) break; // a bye: nothing after it counts
      }
    }
    // A bye, in a cluster: answered once Redis has the leave (see Hub.handle).
    await leaving;
    return new Response(null, { status: 204 });
  }

  /** Forgets every stream (the hub closes their sinks). */
  close(): void {
    this.#streams.clear();
  }
}
