/**
 * Immortal sessions: {@linkcode connect}, {@linkcode listen} and the
 * {@linkcode ImmortalConn} they yield.
 *
 * @module
 */

export { connect, type ConnectOptions, type ConnectTlsOptions } from "./connect.ts";
export {
  type ImmortalListener,
  listen,
  type ListenOptions,
  type ListenTlsOptions,
} from "./listener.ts";
export type { ImmortalConn } from "./immortal_conn.ts";
export {
  ConnEvent,
  type ConnEventInit,
  type ConnEventType,
  type ConnState,
  type ConnStats,
} from "./events.ts";
export { ImmortalError, type ImmortalErrorCode } from "./errors.ts";
export type { BackoffOptions, SessionOptions } from "./options.ts";
