/**
 * Immortal sessions: {@linkcode connect}, {@linkcode listen} and the
 * {@linkcode ImmortalConn} they yield — byte streams that outlive their links.
 *
 * @example
 * ```ts
 * import { connect, listen } from "@immortal/sockets/conn";
 *
 * using listener = listen({ hostname: "127.0.0.1", port: 0 });
 * await using client = await connect({ port: listener.addr.port });
 * await using server = await listener.accept();
 * client.addEventListener("resumed", (event) => console.log(`back after ${event.downtimeMs} ms`));
 * ```
 *
 * @module
 */

export { connect, type ConnectOptions, type ConnectTlsOptions } from "./connect.ts";
export {
  type ImmortalListener,
  listen,
  type ListenerStats,
  type ListenOptions,
  type ListenTlsOptions,
} from "./listener.ts";
export type { ImmortalConn } from "./immortal_conn.ts";
export {
  ClosedEvent,
  type ConnEvent,
  type ConnEventListener,
  type ConnEventMap,
  type ConnState,
  type ConnStats,
  ReconnectingEvent,
  ResumedEvent,
} from "./events.ts";
export { ImmortalError, type ImmortalErrorCode } from "./errors.ts";
export { generateKey } from "./generate_key.ts";
export type { BackoffOptions, SessionOptions } from "./options.ts";
