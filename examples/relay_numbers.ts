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
 * Relay address and secret as in `relay_send_line.ts`. Ctrl-C and SIGTERM
 * leave with a bye (the others hear "left"); what stops the example (no relay
 * there, a wrong secret) is one line on stderr, and the exit status 1.
 *
 * @module
 */

import { loadRelayConfig, type RelayConfig, type RelayEvent, RelayNode } from "../mod.ts";

/** Ends on a user's mistake (no relay there, a wrong secret, a typo in a file): one line, no stack. */
function fail(message: string): never {
  console.error(`error: ${message}`);
  Deno.exit(1);
}

const [role = "agent", session = "lab"] = Deno.args;
if (role !== "bridge" && role !== "agent") {
  console.error(`error: the role is "bridge" or "agent", got "${role}"`);
  Deno.exit(2);
}
let config: RelayConfig;
try {
  config = loadRelayConfig();
} catch (error) {
  fail((error as Error).message);
}
const url = config.url ?? "http://127.0.0.1:8080";
let node: RelayNode;
try {
  node = await RelayNode.connect(url, { session, nickname: role, role, secret: config.secret });
} catch (error) {
  fail(`cannot join ${session} at ${url}: ${(error as Error).message}`);
}

let leaving: Promise<never> | undefined;
/**
 * Says bye, then exits 0: a node that just vanishes is "gone" to the others,
 * and the relay keeps its nickname a while for its return. Once: a second
 * Ctrl-C waits for the same (short) goodbye.
 */
function leave(): Promise<never> {
  return leaving ??= node.close().then(() => Deno.exit(0));
}
Deno.addSignalListener("SIGINT", leave);
// Windows has no SIGTERM to listen for.
if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", leave);

let lastError = "the node closed";
/** The next event that `wanted` picks; fails if the node closes first, unless we are leaving. */
async function next(wanted: (event: RelayEvent) => boolean): Promise<RelayEvent> {
  for await (const event of node.events) {
    if (event.type === "error") lastError = event.message;
    if (wanted(event)) return event;
  }
  // The events end when the node closes: on our leave, or when the relay
  // refuses to take it back after a blip (its secret changed, say).
  if (leaving) return leaving;
  fail(`cannot rejoin ${session}: ${lastError}`);
}

if (role === "bridge") {
  console.log(`${node.nickname} (the bridge) waiting for agents in ${session}`);
  for (;;) {
    const event = await next((e) => e.type === "numbers");
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
  const bridgeHere = () => node.members.some((m) => m.role === "bridge");
  if (!bridgeHere()) {
    console.log(`${node.nickname} waiting for a bridge in ${session}`);
    await next(bridgeHere);
  }
  const numbers = Array.from({ length: 10 }, () => Math.floor(Math.random() * 100));
  const sum = numbers.reduce((a, b) => a + b, 0);
  node.sendNumbers([...numbers, sum]);
  console.log(`${node.nickname} sent ${numbers.join(" ")} and their sum ${sum}`);
  const answer = await next((e) => e.type === "numbers");
  if (answer.type === "numbers") console.log(`the bridge says the sum is ${answer.numbers[0]}`);
  await leave();
}
