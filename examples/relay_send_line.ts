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
 * End of input (Ctrl-D), Ctrl-C and SIGTERM leave with a bye: the others hear
 * "left", and the nickname is free again at once. What stops the example (no
 * relay there, a wrong secret) is one line on stderr, and the exit status 1.
 *
 * @module
 */

import { loadRelayConfig, type RelayConfig, RelayNode } from "../mod.ts";

/** Ends on a user's mistake (no relay there, a wrong secret, a typo in a file): one line, no stack. */
function fail(message: string): never {
  console.error(`error: ${message}`);
  Deno.exit(1);
}

const [session = "lab", nickname = "node"] = Deno.args;
let config: RelayConfig;
try {
  config = loadRelayConfig();
} catch (error) {
  fail((error as Error).message);
}
const url = config.url ?? "http://127.0.0.1:8080";
let node: RelayNode;
try {
  node = await RelayNode.connect(url, { session, nickname, secret: config.secret });
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
// After the listeners: once this line shows, Ctrl-C says bye.
console.log(`joined ${session} as ${node.nickname}; type lines to send them to all`);

(async () => {
  let lastError = "the node closed";
  for await (const event of node.events) {
    if (event.type === "message") console.log(`${event.from}: ${event.text}`);
    else if (event.type === "error") {
      // Why a line went nowhere (nobody else here, say), or why the node stops.
      console.error(`* relay: ${event.message}`);
      lastError = event.message;
    }
  }
  // The events end when the node closes: on our leave, or when the relay
  // refuses to take it back after a blip (its secret changed, say).
  if (!leaving) fail(`cannot rejoin ${session}: ${lastError}`);
})();

/** Sends one line to all; a line that cannot go is said, and the rest still go. */
function send(line: string): void {
  // The relay refuses control characters: a Windows line end loses its CR.
  const text = line.replace(/\r$/, "");
  if (!text) return;
  try {
    node.send(text);
  } catch (error) {
    // Too many lines waiting for a relay that is away, or the node closing.
    console.error(`* not sent: ${(error as Error).message}`);
  }
}

// Lines, not chunks: a read may end in the middle of a line (a pasted or piped text).
let buffered = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  const lines = (buffered + chunk).split("\n");
  buffered = lines.pop()!;
  for (const line of lines) send(line);
}
send(buffered);
await leave();
