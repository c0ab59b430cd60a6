/**
 * The firewall-friendly relay: {@linkcode Relay} (a `Deno.serve` handler),
 * {@linkcode serveRelay}, and the {@linkcode RelayNode} client. Nodes that
 * join the same session id share a room: they hear each other.
 *
 * @module
 */

export { Relay } from "./relay.ts";
export { type RelayServer, serveRelay, type ServeRelayOptions } from "./serve.ts";
export type { OverflowPolicy, RelayOptions } from "./options.ts";
export type { RelayStats } from "./_hub.ts";
export type { RelayConnectionStats } from "./_http_server.ts";
export type { PipeStats } from "./_pipes.ts";
export { type RelayEvent, RelayNode, type RelayNodeOptions, type RelayNodeState } from "./node.ts";
export {
  RelayConnectError,
  type RelayConnectErrorCode,
  RelayRefusedError,
  type RelayTransportKind,
} from "./_transport.ts";
export {
  type LeaveReason,
  type MissedReason,
  type RelayErrorCode,
  type RelayMember,
  type RelayRole,
  SECRET_HEADER,
} from "./_protocol.ts";
export {
  loadRelayConfig,
  type LoadRelayConfigOptions,
  RELAY_CONFIG_FILE,
  type RelayConfig,
} from "./config.ts";
