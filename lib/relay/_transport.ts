/**
 * How a {@linkcode RelayNode} reaches the relay: the interface both client
 * transports implement (`_websocket_transport.ts`, and
 * `_http_stream_transport.ts` for networks whose proxies break WebSockets),
 * and the error for a relay that refuses the node.
 *
 * @module
 */

import { CA_AS_SERVER_ADVICE, tlsFailureKind } from "../_util.ts";
import type {
  HelloFrame,
  NodeFrame,
  RelayErrorCode,
  RelayFrame,
  WelcomeFrame,
} from "./_protocol.ts";

/**
 * Members a node keeps track of: 100 times the nodes a relay lets into a
 * session by default (`maxNodesPerSession`, 1000). A relay that announces
 * more is broken or hostile: one that flooded `join` frames with new
 * nicknames held the node's memory without bound (1.7 million members, 730
 * MB, in 8 s). Past it the node drops the connection, saying why, and
 * reconnects with backoff; it does not drop joins silently, which would
 * leave it a member list that is wrong.
 */
export const MAX_MEMBERS = 100_000;

/**
 * The longest frame a node takes from a relay before the welcome says more,
 * in bytes: a welcome that lists {@linkcode MAX_MEMBERS} members, each named
 * in up to 300 bytes, fits (a nickname of the relay's default longest, 32
 * characters, takes at most 128).
 */
const MIN_FRAME_BOUND = 32 << 20;
/** What the relay adds to a message a node sent, at most: sender, id, numbers. */
const FRAME_SLACK = 64 << 10;
/** The most a relay's word (its welcome's `maxMessageBytes`) raises the bound to. */
const MAX_FRAME_BOUND = 64 << 20;

/**
 * The longest frame a node takes from a relay whose welcome said
 * `maxMessageBytes` (or, before one, nothing): its own welcome, or a message
 * as large as a node may send with what the relay adds to it. An HTTP
 * stream whose event runs longer fails, the relay taken for broken.
 */
export function relayFrameBound(maxMessageBytes?: number): number {
  return Math.min(MAX_FRAME_BOUND, Math.max(MIN_FRAME_BOUND, (maxMessageBytes ?? 0) + FRAME_SLACK));
}

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

/** Why a node could not reach a relay: {@linkcode RelayConnectError.code}. */
export type RelayConnectErrorCode =
  /** Nothing answered: connection refused, no route, blocked. */
  | "unreachable"
  /** TLS went wrong: `https:` to a plain relay, `http:` to a TLS one, an untrusted certificate. */
  | "tls"
  /** Something answered, but not as a relay does (another HTTP server, a wrong path). */
  | "not-a-relay"
  /** The relay took the connection but sent no welcome in time. */
  | "timeout"
  /** The connection broke before the welcome. */
  | "broken";

/**
 * A node could not reach the relay (retrying may help, unlike a
 * {@linkcode RelayRefusedError}). `cause` is the underlying error.
 *
 * @example Telling a relay that is down from a wrong URL
 * ```ts
 * import { RelayConnectError, RelayNode } from "@immortal/sockets/relay";
 *
 * try {
 *   await RelayNode.connect("http://127.0.0.1:8", { session: "s", nickname: "n", retries: 1 });
 * } catch (error) {
 *   if (error instanceof RelayConnectError) console.log(error.code, error.message);
 * }
 * ```
 */
export class RelayConnectError extends Error {
  /** What went wrong, in a word. */
  readonly code: RelayConnectErrorCode;
  /** Creates the error. */
  constructor(code: RelayConnectErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "RelayConnectError";
    this.code = code;
  }
}

/**
 * The failure to open a connection to `url`, in our words: what the
 * platform said (`detail`, the innermost message) read for its cause.
 * Through `proxy`, the only connection made is the proxy's: a refusal or
 * an unreachable address is the proxy's, and an answer may be too.
 */
export function connectFailure(
  url: URL,
  detail: string,
  cause: unknown,
  proxy?: URL,
): RelayConnectError {
  const host = url.host;
  // What the platform said, without the framing that repeats the URL.
  const said = detail
    .replace(/^(NetworkError: )?failed to connect to WebSocket: /, "")
    .replace(/^error sending request .*?: client error \(\w+\): /, "");
  const make = (code: RelayConnectErrorCode, message: string) =>
    new RelayConnectError(code, message, { cause });
  if (/invalid HTTP version parsed/i.test(said)) {
    // Most often a TLS relay; any other service that is not HTTP says the same.
    return make(
      "tls",
      `${host} does not answer in plain HTTP: if it is a TLS relay, use an https:// relay URL`,
    );
  }
  const tls = tlsFailureKind(said);
  if (tls === "not-tls") {
    return make("tls", `TLS with ${host} failed (${said}): is it a plain http:// relay?`);
  }
  if (tls === "wrong-name") {
    return make(
      "tls",
      `the certificate of ${host} is for another name (${said}): use a relay URL with a name it carries`,
    );
  }
  if (tls === "ca-as-server") {
    return make("tls", `the certificate of ${host} is refused (${said}): ${CA_AS_SERVER_ADVICE}`);
  }
  if (tls === "untrusted") {
    return make(
      "tls",
      `the certificate of ${host} is not trusted (${said}): ` +
        "give the relay's CA certificate (option caCerts; deno run --cert FILE; the tunnel CLI's --tls-ca)",
    );
  }
  if (tls === "refused" || /tls|handshake/i.test(said)) {
    return make("tls", `TLS with ${host} failed: ${said}`);
  }
  const through = proxy ? `the proxy at ${proxy.host}` : null;
  if (/Connection refused/i.test(said)) {
    return make(
      "unreachable",
      through
        ? `nothing listens at ${through} (connection refused)`
        : `nothing listens at ${host} (connection refused)`,
    );
  }
  if (/status code|status \d/i.test(said)) {
    return make(
      "not-a-relay",
      through
        ? `${host}, through ${through}, did not answer as a relay does (${said}): the proxy ` +
          "may refuse the request, or pass it on without its WebSocket upgrade"
        : `${host} answered, but not as a relay does (${said})`,
    );
  }
  if (/closed before message completed|connection closed|end of file|eof/i.test(said)) {
    return make("broken", `${host} closed the connection before the welcome (${said})`);
  }
  if (/tcp connect|route|unreachable|dns|lookup|blocked|reset|timed out/i.test(said)) {
    return make("unreachable", `cannot reach ${through ?? host}: ${said}`);
  }
  return make("broken", `the connection to ${host} broke before the welcome: ${said}`);
}

/** One open transport, after the welcome. */
export interface ClientTransport {
  /** Which transport this is. */
  readonly kind: RelayTransportKind;
  /** Sends one frame, in order. */
  send(frame: NodeFrame): void;
  /**
   * Says goodbye (the others hear "left", and the nickname is free) and
   * closes; with `bye` false, only drops the link: the node means to come
   * back (its nickname waits for it). `onClose` is not called for a close
   * we asked for. Resolves when done, or after a short bound.
   */
  close(bye?: boolean): Promise<void>;
}

/** What a transport needs from its node. */
export interface TransportHooks {
  /** A frame from the relay, after the welcome. */
  onFrame(frame: RelayFrame): void;
  /** A frame from the relay that does not parse; it is dropped. */
  onBadFrame(reason: string): void;
  /** The link broke (not called for a close the node asked for). */
  onClose(reason: string, code?: number): void;
}

/** Connection settings shared by both transports. */
export interface DialSettings {
  /** The relay's base URL (`http:` or `https:`). */
  base: URL;
  /** The relay secret, if any. */
  secret?: string;
  /** An HTTP client for a proxy or extra CA certificates. */
  client?: Deno.HttpClient;
  /** The forward proxy `client` goes through, if any: failures name it. */
  proxy?: URL;
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

/**
 * Opens a transport: sends `hello`, resolves once welcomed; rejects with
 * `signal`'s reason, the dial given up, once it is aborted.
 */
export type OpenTransport = (
  settings: DialSettings,
  hello: HelloFrame,
  hooks: TransportHooks,
  signal?: AbortSignal,
) => Promise<OpenedTransport>;
