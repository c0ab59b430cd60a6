/**
 * The old TcpBridge/TcpAgent example, typed: each agent sends ten random
 * numbers and their sum to the bridge; the bridge checks the sum and answers
 * the agent with what it computed.
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-env examples/relay_numbers.ts bridge lab
 * deno run --allow-net --allow-read --allow-env examples/relay_numbers.ts agent lab
 * ```
 *
 * Relay address and secret as in `relay_send_line.ts`.
 *
 * @module
 */

import { loadRelayConfig, RelayNode } from "../mod.ts";

const [role = "agent", session = "lab"] = Deno.args;
if (role !== "bridge" && role !== "agent") {
  console.error(`error: the role is "bridge" or "agent", got "${role}"`);
  Deno.exit(2);
}
const config = loadRelayConfig();
const node = await RelayNode.connect(config.url ?? "http://127.0.0.1:8080", {
  session,
  nickname: role,
  role,
  secret: config.secret,
});

if (role === "bridge") {
  console.log(`bridge ${node.nickname} waiting for agents in ${session}`);
  for await (const event of node.events) {
    if (event.type !== "numbers") continue;
    const numbers = event.numbers.slice(0, -1);
    const claimed = event.numbers.at(-1);
    const sum = numbers.reduce((a, b) => a + b, 0);
    console.log(
      `${event.from}: ${numbers.join(" ")} sum ${sum} ${sum === claimed ? "ok" : "MISMATCH"}`,
    );
    node.sendNumbers([sum], event.from);
  }
} else {
  // Wait for a bridge to be there: a message to nobody is dropped, never kept.
  for await (const event of node.events) {
    const bridgeHere = node.members.some((m) => m.role === "bridge");
    if (bridgeHere) break;
    if (event.type === "state" && event.state === "closed") Deno.exit(1);
  }
  const numbers = Array.from({ length: 10 }, () => Math.floor(Math.random() * 100));
  const sum = numbers.reduce((a, b) => a + b, 0);
  node.sendNumbers([...numbers, sum]);
  console.log(`${node.nickname} sent ${numbers.join(" ")} and their sum ${sum}`);
  for await (const event of node.events) {
    if (event.type === "numbers") {
      console.log(`the bridge says the sum is ${event.numbers[0]}`);
      break;
    }
  }
  await node.close();
}
