/**
 * Many streams over one immortal session: {@linkcode MuxSession} carries
 * independent {@linkcode MuxStream}s, each with its own credit window,
 * half-close and reset, over one `ImmortalConn`. One link, one
 * handshake and one resume serve them all; a link break costs one reconnect
 * whatever the number of streams.
 *
 * @example A server that answers every stream with its metadata
 * ```ts
 * import { connect, listen } from "@immortal/sockets";
 * import { MuxSession } from "@immortal/sockets/mux";
 *
 * using listener = listen({ hostname: "127.0.0.1", port: 0 });
 * const client = new MuxSession(await connect({ port: listener.addr.port }), { role: "client" });
 * const server = new MuxSession(await listener.accept(), { role: "server" });
 * const serving = (async () => {
 *   for await (const stream of server) {
 *     await stream.write(stream.meta);
 *     await stream.closeWrite();
 *   }
 * })();
 * const a = client.open(new TextEncoder().encode("a"));
 * const b = client.open(new TextEncoder().encode("b"));
 * await Promise.all([a.closeWrite(), b.closeWrite()]);
 * const answers = await Promise.all([a, b].map((s) => new Response(s.readable).text()));
 * if (answers.join() !== "a,b") throw new Error("wrong answers");
 * client.close();
 * await serving.catch(() => {});
 * await Promise.all([client.closed, server.closed.catch(() => {})]);
 * ```
 *
 * @module
 */

export { MuxSession, type MuxSessionOptions } from "./mux_session.ts";
export { MuxStream } from "./mux_stream.ts";
