/**
 * A node whose messages wait for their acks asks the relay with a ping
 * before it gives up on the link: a relay that answers is slow (in a
 * cluster, Redis takes each message before it is acknowledged), not gone,
 * and the node keeps its connection. The relay here is a stand-in that
 * answers pings and never acknowledges; the test waits on the pings it
 * sees, not on time.
 */

import assert from "node:assert/strict";
import { RelayNode } from "../mod.ts";

Deno.test("relay node: messages left unacknowledged by a relay that answers pings: the node pings and keeps its link", async () => {
  let connections = 0;
  let pings = 0;
  let sawPings = Promise.withResolvers<void>();
  const sockets = new Set<WebSocket>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    connections++;
    sockets.add(socket);
    socket.onclose = () => sockets.delete(socket);
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.t === "hello") {
        socket.send(JSON.stringify({
          t: "welcome",
          session: frame.session,
          nickname: frame.nickname,
          role: "peer",
          token: "tok",
          members: [],
          keepAlive: 60_000, // the keep-alive stays out of it
          fadeAfter: 150_000,
          epoch: "e1",
          offset: 0,
          acked: 0,
        }));
      } else if (frame.t === "ping") {
        socket.send(JSON.stringify({ t: "pong" }));
        if (++pings === 2) sawPings.resolve();
      }
      // Messages are taken and never acknowledged: a relay whose acks are slow.
    };
    return response;
  });
  const node = await RelayNode.connect(`http://127.0.0.1:${server.addr.port}`, {
    session: "s",
    nickname: "n",
    transport: "websocket",
  });
  try {
    node.send("waits for its ack");
    const timer = setTimeout(
      () => sawPings.reject(new Error("no second ping within 30 s")),
      30_000,
    );
    await sawPings.promise.finally(() => clearTimeout(timer));
    // Two pings, each answered: the node asked twice and stayed.
    assert.equal(connections, 1, "the node reconnected although the relay answered");
    assert.equal(node.state, "connected");
    assert.equal(node.unacked, 1);
  } finally {
    sawPings = Promise.withResolvers<void>();
    await node.close();
    for (const socket of sockets) socket.close();
    await server.shutdown();
  }
});
