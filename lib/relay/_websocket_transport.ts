/**
 * The WebSocket client transport: one frame per text message, both ways.
 * The secret travels in the hello frame, not a header: browsers cannot set
 * WebSocket headers, and URLs get logged.
 *
 * @module
 */

import { peerText } from "../_util.ts";
import { encodeFrame, type HelloFrame, type NodeFrame, PATHS, relayUrl } from "./_protocol.ts";
import { parseRelayFrame, readJson } from "./_parse.ts";
import {
  type ClientTransport,
  connectFailure,
  type DialSettings,
  type OpenedTransport,
  RelayConnectError,
  RelayRefusedError,
  type TransportHooks,
} from "./_transport.ts";

/** How long a goodbye may take before the socket is given up. */
const CLOSE_BOUND_MS = 1000;

/** A node's WebSocket to the relay. */
export class WebSocketTransport implements ClientTransport {
  /** Always `"websocket"`. */
  readonly kind = "websocket" as const;
  #socket: WebSocket;
  #closing = false;

  private constructor(socket: WebSocket) {
    this.#socket = socket;
  }

  /** Opens a WebSocket, sends `hello`, resolves with the welcome (or `signal`'s reason). */
  static open(
    settings: DialSettings,
    hello: HelloFrame,
    hooks: TransportHooks,
    signal?: AbortSignal,
  ): Promise<OpenedTransport> {
    const url = relayUrl(settings.base, PATHS.ws);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (signal?.aborted) return Promise.reject(signal.reason);
    const socket = new WebSocket(url, { client: settings.client });
    const transport = new WebSocketTransport(socket);
    return new Promise((resolve, reject) => {
      let welcomed = false;
      // Before the welcome only: a settled dial rejects no more.
      const giveUp = (error: unknown) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        reject(error);
        socket.close();
      };
      const onAbort = () => giveUp(signal!.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      const timer = setTimeout(() => {
        giveUp(
          new RelayConnectError(
            "timeout",
            `no welcome from ${url.host} within ${settings.timeout} ms`,
          ),
        );
      }, settings.timeout);
      socket.onopen = () => socket.send(encodeFrame(hello));
      socket.onmessage = (event) => {
        if (typeof event.data !== "string") return hooks.onBadFrame("a binary message");
        const parsed = parseRelayFrame(readJson(event.data));
        if (!parsed.ok) return hooks.onBadFrame(parsed.problem.reason);
        const frame = parsed.frame;
        if (welcomed) return hooks.onFrame(frame);
        if (frame.t === "welcome") {
          welcomed = true;
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          resolve({ transport, welcome: frame });
        } else if (frame.t === "error") {
          // The relay's words, bound for terminals and logs: escaped here, as they come in.
          giveUp(new RelayRefusedError(frame.code, peerText(frame.message)));
        }
      };
      // onclose follows with a code only: what went wrong is said here.
      let failure: ErrorEvent | undefined;
      socket.onerror = (event) => failure = event as ErrorEvent;
      socket.onclose = (event) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        const reason = peerText(event.reason) ||
          (event.code === 1000 || event.code === 1001
            ? `the relay closed the connection (WebSocket ${event.code})`
            : "the connection to the relay broke (no WebSocket close frame)");
        if (!welcomed) {
          const detail = failure?.message ?? reason;
          reject(connectFailure(
            settings.base,
            detail,
            failure?.error ?? failure?.message,
            settings.proxy,
          ));
        } else if (!transport.#closing) {
          hooks.onClose(reason, event.code);
        }
      };
    });
  }

  /** Sends one frame; dropped when the socket is no longer open. */
  send(frame: NodeFrame): void {
    if (this.#socket.readyState === WebSocket.OPEN) this.#socket.send(encodeFrame(frame));
  }

  /** Says bye (unless `bye` is false) and closes; resolves once closed, or after a short bound. */
  close(bye = true): Promise<void> {
    if (this.#closing) return Promise.resolve();
    const socket = this.#socket;
    if (bye) this.send({ t: "bye" });
    this.#closing = true;
    socket.close(1000);
    return new Promise<void>((resolve) => {
      const bound = setTimeout(resolve, CLOSE_BOUND_MS);
      socket.addEventListener("close", () => {
        clearTimeout(bound);
        resolve();
      });
    });
  }
}
