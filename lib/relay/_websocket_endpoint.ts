/**
 * The relay's WebSocket endpoint (`GET /relay/ws`): one frame per text
 * message, both ways. The first frame must be a hello; the relay's own
 * keep-alive, not the socket's, detects dead nodes.
 *
 * @module
 */

import { errorMessage } from "../_util.ts";
import { errorFrame, type Hub, JoinRefused } from "./_hub.ts";
import { frameTooLarge, headerSecretRefusal, refuseRequest, tooLargeReason } from "./_http.ts";
import { connectionOf } from "./_http_server.ts";
import { asFrameObject, type FrameObject, parseNodeFrame, readJson } from "./_parse.ts";
import { type RelayErrorCode, SECRET_HEADER } from "./_protocol.ts";
import type { Member, Sink } from "./_room.ts";

/**
 * What the endpoint needs of a WebSocket: our own strict one
 * (`ServerWebSocket`, under `serveRelay`), or Deno's, adapted, when the
 * relay is mounted in a `Deno.serve` app.
 */
interface RelaySocket {
  readonly open: boolean;
  readonly bufferedAmount: number;
  send(text: string): void;
  close(code: number, reason: string): void;
  onmessage: ((data: string | Uint8Array) => void) | null;
  onoversize: (() => void) | null;
  onclose: ((code: number, reason: string) => void) | null;
  /** Stops reading frames until `resume` (ours can; Deno's cannot, and has no such methods). */
  pause?(): void;
  resume?(): void;
}

/** Deno's WebSocket as a {@linkcode RelaySocket}; messages over `max` bytes are reported, not delivered. */
function denoSocket(socket: WebSocket, max: number): RelaySocket {
  const adapted: RelaySocket = {
    get open() {
      return socket.readyState === WebSocket.OPEN;
    },
    get bufferedAmount() {
      return socket.bufferedAmount;
    },
    send: (text) => socket.send(text),
    close(code, reason) {
      try {
        socket.close(code, reason);
      } catch {
        // Already closing.
      }
    },
    onmessage: null,
    onoversize: null,
    onclose: null,
  };
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") return adapted.onmessage?.(new Uint8Array(0));
    if (frameTooLarge(event.data, max)) return adapted.onoversize?.();
    adapted.onmessage?.(event.data);
  };
  socket.onclose = (event) => adapted.onclose?.(event.code, event.reason);
  socket.onerror = () => {/* onclose follows */};
  return adapted;
}

/** A sink that writes to `socket`, full once more than `maxQueueBytes` wait in it. */
function socketSink(socket: RelaySocket, maxQueueBytes: number): Sink {
  return {
    push(data) {
      if (!socket.open) return true;
      if (socket.bufferedAmount > maxQueueBytes) return false;
      socket.send(data);
      return true;
    },
    close(code, reason) {
      socket.close(code, reason);
    },
  };
}

/** Frames a node may send before its welcome (a join being decided); past them it is refused. */
const MAX_WAITING_FRAMES = 256;

/**
 * Upgrades `req` to a WebSocket whose node joins `hub` with its first frame;
 * `from` is where it comes from, for the log.
 */
export function acceptWebSocket(hub: Hub, req: Request, from?: string): Response {
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return refuseRequest(hub, 426, "upgrade-required", "this endpoint speaks WebSocket");
  }
  // A secret in a header is checked before the upgrade, so a wrong one is a plain 401.
  const wrongSecret = headerSecretRefusal(hub, req, from);
  if (wrongSecret) return wrongSecret;
  const headerSecret = req.headers.get(SECRET_HEADER);
  const settings = hub.settings;
  const max = settings.maxMessageBytes;
  // Dropped once the node joined: it reaches the request (headers, body) the
  // connection came with, which a joined node has no more use for.
  let connection = connectionOf(req);
  let socket: RelaySocket;
  let response: Response;
  if (connection) {
    const upgraded = connection.upgradeWebSocket(req);
    if (typeof upgraded === "string") return refuseRequest(hub, 400, "bad-request", upgraded);
    ({ socket, response } = upgraded);
  } else {
    let upgraded: { socket: WebSocket; response: Response };
    try {
      // Our own keep-alive detects dead nodes; Deno's idle timeout would be a second, slower one.
      upgraded = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
    } catch (error) {
      // A handshake with a header missing or wrong: the client's mistake, a 400.
      return refuseRequest(
        hub,
        400,
        "bad-request",
        `not a WebSocket handshake: ${errorMessage(error)}`,
      );
    }
    socket = denoSocket(upgraded.socket, max);
    response = upgraded.response;
  }
  const sink = socketSink(socket, settings.maxQueueBytes);
  let member: Member | null = null;
  let waiting: FrameObject[] | null = null;
  // Before the join a bad frame ends the connection; after it, only the frame is refused.
  // Refused before it joined: closing. What the node sent after (a ping on
  // its way) is not news, nor another refusal to count.
  let turnedAway = false;
  const refuse = (closeCode: number, code: RelayErrorCode, reason: string) => {
    hub.refuseFrame(sink, { code, reason });
    if (member === null) {
      turnedAway = true;
      sink.close(closeCode, reason.slice(0, 120));
    }
  };
  let authTimer: ReturnType<typeof setTimeout> | undefined = setTimeout(() => {
    if (member === null) refuse(4408, "auth-timeout", "no hello within the auth deadline");
  }, settings.authTimeout);
  socket.onoversize = () => refuse(1009, "too-large", tooLargeReason(max));
  /** One frame of the joined node; false after a bye (nothing after it counts). */
  const handle = (joined: Member, frame: FrameObject): boolean => {
    const leaving = hub.handle(joined, parseNodeFrame(frame, hub.rules));
    if (leaving === undefined) return true;
    // A bye, in a cluster: the node's close frame, which follows it, is
    // answered once Redis has the leave (see Hub.handle).
    if (socket.pause && socket.resume) {
      socket.pause();
      leaving.finally(() => socket.resume!());
    }
    return false;
  };
  socket.onmessage = (data) => {
    if (turnedAway) return;
    if (typeof data !== "string") {
      hub.refuseFrame(sink, { code: "bad-frame", reason: "frames are JSON text" });
      return sink.close(1003, "frames are JSON text");
    }
    const frame = asFrameObject(readJson(data));
    if (frame === null) return refuse(1003, "bad-frame", "frames are JSON objects");
    if (member !== null) return void handle(member, frame);
    // A join the cluster is still deciding: what the node sends next waits for it.
    if (waiting !== null) {
      // Bounded: a join may be held for seconds (after Redis lost its data).
      if (waiting.length >= MAX_WAITING_FRAMES) {
        return refuse(1008, "bad-frame", "too many frames before the welcome");
      }
      return void waiting.push(frame);
    }
    if (frame.t !== "hello") return refuse(4400, "bad-hello", "the first frame must be a hello");
    clearTimeout(authTimer);
    authTimer = undefined; // a timer object, kept as long as this closure otherwise
    const refused = (error: unknown) => {
      if (!(error instanceof JoinRefused)) throw error;
      turnedAway = true;
      // Counted by the hub already, under its reason (a wrong secret is "secret", once).
      sink.push(errorFrame({ code: error.code, reason: error.message }));
      sink.close(4000 + error.status, error.message.slice(0, 120));
    };
    const admitted = (joined: Member, frames: FrameObject[]) => {
      member = joined;
      connection?.joined();
      connection = undefined;
      // Closed while the join was being decided: a blip already.
      if (!socket.open) return hub.detach(joined, sink);
      for (const next of frames) if (!handle(joined, next)) break;
    };
    let result: Member | Promise<Member>;
    try {
      result = hub.admit(frame, headerSecret, sink, { from, left: () => !socket.open });
    } catch (error) {
      return refused(error);
    }
    if (!(result instanceof Promise)) return admitted(result, []);
    waiting = [];
    result.then((joined) => {
      const frames = waiting ?? [];
      waiting = null;
      admitted(joined, frames);
    }, (error) => {
      waiting = null;
      refused(error);
    });
  };
  socket.onclose = () => {
    clearTimeout(authTimer);
    if (member !== null && member.sink === sink) hub.detach(member, sink);
  };
  return response;
}
