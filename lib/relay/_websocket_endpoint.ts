/**
 * The relay's WebSocket endpoint (`GET /relay/ws`): one frame per text
 * message, both ways. The first frame must be a hello; the relay's own
 * keep-alive, not the socket's, detects dead nodes.
 *
 * @module
 */

import { type Hub, JoinRefused } from "./_hub.ts";
import { frameTooLarge, refusedJoin, refuseRequest, tooLargeReason } from "./_http.ts";
import { asFrameObject, parseNodeFrame, readJson } from "./_parse.ts";
import { type RelayErrorCode, SECRET_HEADER } from "./_protocol.ts";
import type { Member, Sink } from "./_room.ts";

/** A sink that writes to `socket`, full once more than `maxQueueBytes` wait in it. */
function socketSink(socket: WebSocket, maxQueueBytes: number): Sink {
  return {
    push(data) {
      if (socket.readyState !== WebSocket.OPEN) return true;
      if (socket.bufferedAmount > maxQueueBytes) return false;
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
}

/** Upgrades `req` to a WebSocket whose node joins `hub` with its first frame. */
export function acceptWebSocket(hub: Hub, req: Request): Response {
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return refuseRequest(hub, 426, "upgrade-required", "this endpoint speaks WebSocket");
  }
  // A secret in a header is checked before the upgrade, so a wrong one is a plain 401.
  const headerSecret = req.headers.get(SECRET_HEADER);
  if (headerSecret !== null) {
    try {
      hub.checkSecret(headerSecret);
    } catch (error) {
      if (error instanceof JoinRefused) return refusedJoin(error);
      throw error;
    }
  }
  const settings = hub.settings;
  // Our own keep-alive detects dead nodes; Deno's idle timeout would be a second, slower one.
  const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 0 });
  const sink = socketSink(socket, settings.maxQueueBytes);
  let member: Member | null = null;
  // Before the join a bad frame ends the connection; after it, only the frame is refused.
  const refuse = (closeCode: number, code: RelayErrorCode, reason: string) => {
    hub.refuseFrame(sink, { code, reason });
    if (member === null) sink.close(closeCode, reason.slice(0, 120));
  };
  const authTimer = setTimeout(() => {
    if (member === null) refuse(4408, "auth-timeout", "no hello within the auth deadline");
  }, settings.authTimeout);
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") {
      hub.refuseFrame(sink, { code: "bad-frame", reason: "frames are JSON text" });
      return sink.close(1003, "frames are JSON text");
    }
    const max = settings.maxMessageBytes;
    if (frameTooLarge(event.data, max)) return refuse(1009, "too-large", tooLargeReason(max));
    const frame = asFrameObject(readJson(event.data));
    if (frame === null) return refuse(1003, "bad-frame", "frames are JSON objects");
    if (member !== null) return hub.handle(member, parseNodeFrame(frame, hub.rules));
    if (frame.t !== "hello") return refuse(4400, "bad-hello", "the first frame must be a hello");
    clearTimeout(authTimer);
    try {
      member = hub.admit(frame, headerSecret, sink);
    } catch (error) {
      if (!(error instanceof JoinRefused)) throw error;
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
