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
// The wire protocol's frames and names, as PROTOCOL.md Part 2 describes them:
// for tools and for clients written against the types rather than the prose.
export {
  type ErrorFrame,
  type HelloFrame,
  type LeaveReason,
  type MessageBody,
  type MissedReason,
  type NodeFrame,
  type NodeMessageFrame,
  PATHS,
  PIPE_HEADERS,
  type PipeFrame,
  type PipeRefuseFrame,
  type RecoverPosition,
  type RefusalBody,
  type RelayErrorCode,
  type RelayFrame,
  type RelayMember,
  type RelayMessageFrame,
  type RelayRole,
  SECRET_HEADER,
  STREAM_HEADER,
  type WelcomeFrame,
} from "./_protocol.ts";
export {
  loadRelayConfig,
  type LoadRelayConfigOptions,
  RELAY_CONFIG_FILE,
  type RelayConfig,
} from "./config.ts";
