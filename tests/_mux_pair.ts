/** Two multiplexed sessions, client and server, over a real loopback ImmortalConn. */

import { connect, listen, MuxSession } from "../mod.ts";

/** A client and a server session over a real loopback ImmortalConn; disposing closes both. */
export async function muxPair() {
  const listener = listen({ hostname: "127.0.0.1", port: 0 });
  const clientConn = await connect({ port: listener.addr.port });
  const serverConn = await listener.accept();
  listener.close();
  const client = new MuxSession(clientConn, { role: "client" });
  const server = new MuxSession(serverConn, { role: "server" });
  return {
    client,
    server,
    clientConn,
    serverConn,
    async [Symbol.asyncDispose]() {
      client.close();
      server.close();
      await Promise.allSettled([
        client.closed,
        server.closed,
        clientConn.closed,
        serverConn.closed,
      ]);
    },
  };
}
