// One end of a tunnel through a relay, for bench/relay_tunnel.ts: the
// library's TunnelServer/TunnelClient over relay pipes, with the settings
// the CLI does not offer (unencrypted sessions, a chosen transport).
//
//   deno run --allow-net=127.0.0.1 bench/_relay_tunnel_end.ts server URL TARGET_PORT ENCRYPT TRANSPORT [SESSION]
//   deno run --allow-net=127.0.0.1 bench/_relay_tunnel_end.ts client URL LISTEN_PORT ENCRYPT TRANSPORT [SESSION]
import { RelayNode, TunnelClient, TunnelServer } from "../mod.ts";

const [role, url, port, encrypt, transport, session = "bench"] = Deno.args;
const node = await RelayNode.connect(url, {
  session,
  nickname: role === "server" ? "srv" : "cli",
  transport: transport === "http" ? "http" : "websocket",
});
const settings = { key: "bench-key", encrypt: encrypt === "encrypt" };
const tunnel = role === "server"
  ? new TunnelServer({
    port: 0,
    acceptor: node.pipeAcceptor(),
    ...settings,
    target: { hostname: "127.0.0.1", port: Number(port) },
  })
  : new TunnelClient({
    hostname: "127.0.0.1",
    port: Number(port),
    dialer: node.pipeDialer("srv"),
    ...settings,
    server: { hostname: "srv", port: 0 },
  });
console.log("ready");
Deno.addSignalListener("SIGTERM", async () => {
  await tunnel.close();
  await node.close();
  Deno.exit(0);
});
