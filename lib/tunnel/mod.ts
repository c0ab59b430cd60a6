/**
 * Tunnels: `ssh -L`-style TCP forwarding over immortal sessions.
 *
 * @module
 */

export { TunnelClient, type TunnelClientOptions } from "./tunnel_client.ts";
export { TunnelServer, type TunnelServerOptions } from "./tunnel_server.ts";
export type { SpliceResult } from "./splice.ts";
