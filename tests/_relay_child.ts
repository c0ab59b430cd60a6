// A relay node in its own process, for tests that kill it: joins, prints "joined", then waits.
import { RelayNode } from "../mod.ts";

const [url, session, nickname] = Deno.args;
const node = await RelayNode.connect(url, { session, nickname });
console.log(`joined ${node.nickname}`);
for await (const _ of node.events) { /* keep reading until killed */ }
