/**
 * How a {@linkcode RelayNode} reaches the relay: the interface both client
 * transports implement (`_websocket_transport.ts`, and
 * `_http_stream_transport.ts` for networks whose proxies break WebSockets),
 * and the error for a relay that refuses the node.
 *
 * @module
 */

import type {
  HelloFrame,
  NodeFrame,
  RelayErrorCode,
  RelayFrame,
  WelcomeFrame,
} from "./_protocol.ts";

/** Transports a node can use. */
export type RelayTransportKind = "websocket" | "http";

/** An error that retrying will not fix (wrong secret, bad nickname, relay full). */
export class RelayRefusedError extends Error {
  /** Short machine-readable reason, e.g. `unauthorized`, `bad-request`, `full`. */
  readonly code: RelayErrorCode;
  /** Creates the error. */
  constructor(code: RelayErrorCode, message: string) {
    super(message);
    this.name = "RelayRefusedError";
    this.code = code;
  }
}

/** One open transport, after the welcome. */
export interface ClientTransport {
  /** Which transport this is. */
  readonly kind: RelayTransportKind;
  /** Sends one frame, in order. */
  send(frame: NodeFrame): void;
  /**
   * Says goodbye (the others hear "left") and closes; `onClose` is not called
   * for a close we asked for. Resolves when done, or after a short bound.
   */
  close(): Promise<void>;
}

/** What a transport needs from its node. */
export interface TransportHooks {
  /** A frame from the relay, after the welcome. */
  onFrame(frame: RelayFrame): void;
  /** A frame from the relay that does not parse; it is dropped. */
  onBadFrame(reason: string): void;
  /** The link broke (not called for a close the node asked for). */
  onClose(reason: string): void;
}

/** Connection settings shared by both transports. */
export interface DialSettings {
  /** The relay's base URL (`http:` or `https:`). */
  base: URL;
  /** The relay secret, if any. */
  secret?: string;
  /** An HTTP client for a proxy or extra CA certificates. */
  client?: Deno.HttpClient;
  /** Per attempt, ms. */
  timeout: number;
}

/** A transport just opened, and the relay's welcome on it. */
export interface OpenedTransport {
  /** The open transport. */
  transport: ClientTransport;
  /** The relay's welcome. */
  welcome: WelcomeFrame;
}

/** Opens a transport: sends `hello`, resolves once welcomed. */
export type OpenTransport = (
  settings: DialSettings,
  hello: HelloFrame,
  hooks: TransportHooks,
) => Promise<OpenedTransport>;
