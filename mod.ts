/**
 * # immortal — TCP byte streams that outlive the network
 *
 * An {@linkcode ImmortalConn} looks like a `Deno.Conn`, but when the link
 * under it breaks, goes silent, or the client's address changes, it
 * reconnects and resumes: no byte lost, duplicated or reordered.
 *
 * ```ts
 * import { connect, listen } from "@immortal/sockets";
 *
 * using listener = listen({ hostname: "127.0.0.1", port: 0 });
 * await using client = await connect({ port: listener.addr.port });
 * await using server = await listener.accept();
 * await client.write(new TextEncoder().encode("hello"));
 * ```
 *
 * This module reaches every capability in one hop: sessions
 * ({@linkcode connect}, {@linkcode listen}), the transports they run on
 * ({@linkcode tcpDialer}, {@linkcode tlsDialer}, ...), many streams over
 * one session ({@linkcode MuxSession}), tunnels ({@linkcode TunnelClient},
 * {@linkcode TunnelServer}) and the relay ({@linkcode Relay},
 * {@linkcode serveRelay}, {@linkcode RelayNode}). Each layer is also its
 * own entry point: `@immortal/sockets/conn`, `/link`, `/mux`, `/tunnel`,
 * `/relay`, and `/frame` for the wire codec (not re-exported here:
 * applications never need it).
 *
 * Logging goes through LogTape under the category `["immortal"]` and is
 * silent unless the application configures LogTape.
 *
 * @module
 */

export * from "./lib/conn/mod.ts";
export * from "./lib/link/mod.ts";
export * from "./lib/mux/mod.ts";
export * from "./lib/tunnel/mod.ts";
export * from "./lib/relay/mod.ts";
