/**
 * Tunnels: `ssh -L`-style TCP forwarding over immortal sessions. A
 * {@linkcode TunnelServer} forwards to a target; a {@linkcode TunnelClient}
 * listens locally and carries each connection to the server.
 *
 * @example Forward a local port to an echo service
 * ```ts
 * import { TunnelClient, TunnelServer } from "@immortal/sockets/tunnel";
 *
 * using echo = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const echoing = (async () => {
 *   const conn = await echo.accept();
 *   await conn.readable.pipeTo(conn.writable);
 * })();
 * await using server = new TunnelServer({
 *   hostname: "127.0.0.1",
 *   port: 0,
 *   target: { hostname: "127.0.0.1", port: echo.addr.port },
 *   key: "secret",
 * });
 * await using client = new TunnelClient({
 *   port: 0,
 *   server: { hostname: "127.0.0.1", port: server.addr.port },
 *   key: "secret",
 * });
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: client.addr.port });
 * await conn.write(new TextEncoder().encode("ping"));
 * await conn.closeWrite();
 * const answer = await new Response(conn.readable).text(); // "ping"
 * await echoing;
 * ```
 *
 * @module
 */

export { TunnelClient, type TunnelClientOptions } from "./tunnel_client.ts";
export { TunnelServer, type TunnelServerOptions } from "./tunnel_server.ts";
export type { ForwardedBytes } from "./_splice.ts";
