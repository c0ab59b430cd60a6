/**
 * The old TcpJLib example "send a line to all": join a session, send each line
 * typed on stdin to every other node, print what the others send.
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-env examples/relay_send_line.ts lab max
 * ```
 *
 * The relay address and secret come from `immortal-relay.properties` (here,
 * then in your home directory) or IMMORTAL_RELAY_URL / IMMORTAL_RELAY_SECRET;
 * the default is a local relay on http://127.0.0.1:8080.
 *
 * @module
 */

import { loadRelayConfig, RelayNode } from "../mod.ts";

const [session = "lab", nickname = "node"] = Deno.args;
const config = loadRelayConfig();
const node = await RelayNode.connect(config.url ?? "http://127.0.0.1:8080", {
  session,
  nickname,
  secret: config.secret,
});
console.log(`joined ${session} as ${node.nickname}; type lines to send them to all`);

(async () => {
  for await (const event of node.events) {
    if (event.type === "message") console.log(`${event.from}: ${event.text}`);
  }
})();

for await (const line of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  for (const text of line.split("\n")) if (text) node.send(text);
}
await node.close();
