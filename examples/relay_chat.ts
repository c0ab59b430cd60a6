/**
 * A terminal chat over the relay. Lines go to everyone; `/to NAME text` goes
 * to one node; `/who` lists the others; `/quit` (or Ctrl-D) leaves.
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-env examples/relay_chat.ts lab max http://127.0.0.1:8080
 * ```
 *
 * The relay address and secret come from the third argument, or from
 * `immortal-relay.properties` / IMMORTAL_RELAY_URL / IMMORTAL_RELAY_SECRET.
 *
 * @module
 */

import { loadRelayConfig, RelayNode } from "../mod.ts";

const [session = "lab", nickname = Deno.env.get("USER") ?? "me", urlArg] = Deno.args;
const config = loadRelayConfig();
const url = urlArg ?? config.url ?? "http://127.0.0.1:8080";
let node: RelayNode;
try {
  node = await RelayNode.connect(url, { session, nickname, secret: config.secret });
} catch (error) {
  console.error(`error: cannot join ${session} at ${url}: ${(error as Error).message}`);
  Deno.exit(1);
}
console.log(`* you are ${node.nickname} in ${session}; here: ${who()}`);

function who(): string {
  return node.members.map((m) => m.nickname).join(", ") || "nobody else";
}

let lost = false;
(async () => {
  for await (const event of node.events) {
    switch (event.type) {
      case "message":
        console.log(`${event.to ? `${event.from} (to you)` : event.from}: ${event.text}`);
        break;
      case "join":
        console.log(`* ${event.nickname} joined`);
        break;
      case "leave":
        console.log(`* ${event.nickname} ${event.reason === "left" ? "left" : "is gone"}`);
        break;
      case "state":
        if (event.state === "connected") {
          // Only news after a blip: the first connect was said above.
          if (lost) console.log(`* back (via ${event.transport ?? "the relay"}); here: ${who()}`);
          lost = false;
        } else {
          lost = true;
          console.log(`* ${event.state}${event.reason ? `: ${event.reason}` : ""}`);
        }
        break;
      case "missed":
        // The relay could not give back everything said while we were away.
        console.log(
          event.reason === "window"
            ? "* some messages were missed while away (older than the relay keeps)"
            : "* the relay restarted without its history: messages may have been missed",
        );
        break;
      case "error":
        console.log(`* relay: ${event.message}`);
        break;
    }
  }
})();

let buffered = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  buffered += chunk;
  const lines = buffered.split("\n");
  buffered = lines.pop()!;
  for (const line of lines) {
    const to = /^\/to\s+(\S+)\s+(.*)$/.exec(line);
    if (line === "/quit") {
      await node.close();
      Deno.exit(0);
    } else if (line === "/who") console.log(`* here: ${who()}`);
    else if (to) node.sendTo(to[1], to[2]);
    else if (line.trim()) node.send(line);
  }
}
await node.close();
