/**
 * # immortal — TCP byte streams that outlive the network
 *
 * An {@linkcode ImmortalConn} looks like a `Deno.Conn`, but when the link
 * under it breaks, goes silent, or the client's address changes, it
 * reconnects and resumes: no byte lost, duplicated or reordered.
 *
 * ```ts ignore
 * import { connect, listen } from "@immortal/sockets";
 *
 * const listener = listen({ port: 4000 });
 * const client = await connect({ port: 4000 });
 * const server = await listener.accept();
 * ```
 *
 * Logging goes through LogTape under the category `["immortal"]` and is
 * silent unless the application configures LogTape.
 *
 * @module
 */

export * from "./lib/conn/mod.ts";
export * from "./lib/link/mod.ts";
export * from "./lib/frame/mod.ts";
export * from "./lib/tunnel/mod.ts";
export * from "./lib/relay/mod.ts";
