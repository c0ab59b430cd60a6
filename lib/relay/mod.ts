/**
 * The firewall-friendly relay: {@linkcode Relay} (a `Deno.serve` handler),
 * {@linkcode serveRelay}, and the {@linkcode RelayNode} client.
 *
 * @module
 */

export { Relay } from "./relay.ts";
export { type RelayServer, serveRelay, type ServeRelayOptions } from "./serve.ts";
export type { OverflowPolicy, RelayOptions } from "./options.ts";
export type { RelayStats } from "./hub.ts";
export { type RelayEvent, RelayNode, type RelayNodeOptions, type RelayNodeState } from "./node.ts";
export { RelayRefusedError, type RelayTransportKind } from "./node_transport.ts";
export { type RelayMember, type RelayRole, SECRET_HEADER } from "./protocol.ts";
export {
  loadRelayConfig,
  type LoadRelayConfigOptions,
  RELAY_CONFIG_FILE,
  type RelayConfig,
} from "./config.ts";
