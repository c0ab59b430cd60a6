/**
 * A terminal chat over the relay. Lines go to everyone; `/to NAME text` goes
 * to one node; `/who` lists the others; `/help` the commands; `/quit` (or
 * Ctrl-D, Ctrl-C) leaves.
 * Any other line that starts with `/` is taken for a mistyped command and
 * goes nowhere: to send one, double the slash (`//shrug` sends `/shrug`).
 *
 * ```sh
 * deno run --allow-net --allow-read --allow-env examples/relay_chat.ts lab max http://127.0.0.1:8080
 * ```
 *
 * The relay address and secret come from the third argument, or from
 * `immortal-relay.properties` / IMMORTAL_RELAY_URL / IMMORTAL_RELAY_SECRET.
 *
 * Leaving (`/quit`, end of input, Ctrl-C, SIGTERM) says bye: the others hear
 * "left", and the nickname is free again at once. What stops the chat (no
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

// The login name, if this process may read it: asking would prompt before anything else.
const user = Deno.permissions.querySync({ name: "env", variable: "USER" }).state === "granted"
  ? Deno.env.get("USER")
  : undefined;
const [session = "lab", nickname = user ?? "me", urlArg] = Deno.args;
let config: RelayConfig;
try {
  config = loadRelayConfig();
} catch (error) {
  fail((error as Error).message);
}
const url = urlArg ?? config.url ?? "http://127.0.0.1:8080";
let node: RelayNode;
try {
  node = await RelayNode.connect(url, { session, nickname, secret: config.secret });
} catch (error) {
  fail(`cannot join ${session} at ${url}: ${(error as Error).message}`);
}

function who(): string {
  return node.members.map((m) => m.nickname).join(", ") || "nobody else";
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
console.log(`* you are ${node.nickname} in ${session}; here: ${who()}`);

let lost = false;
(async () => {
  let lastError = "the node closed";
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
        } else if (!leaving) {
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
        lastError = event.message;
        break;
    }
  }
  // The events end when the node closes: on our leave, or when the relay
  // refuses to take it back after a blip (its secret changed, say).
  if (!leaving) fail(`cannot rejoin ${session}: ${lastError}`);
})();

const HELP = "/to NAME text, /who, /quit; start a line with // to send one that starts with /";

/** Runs one typed line: a command, or a message to everyone. */
async function typed(line: string): Promise<void> {
  // The relay refuses control characters: a Windows line end loses its CR.
  line = line.replace(/\r$/, "");
  if (!line.startsWith("/") || line.startsWith("//")) {
    // A message; "//" is an escaped "/", so that any text can be sent.
    const text = line.startsWith("//") ? line.slice(1) : line;
    if (text.trim()) send(() => node.send(text));
    return;
  }
  // A command, never sent as typed: a mistyped one would go to everyone.
  const [, command, rest] = /^(\/\S*)\s*(.*)$/s.exec(line)!;
  switch (command) {
    case "/to": {
      const to = /^(\S+)\s+(\S.*)$/s.exec(rest);
      if (to) send(() => node.sendTo(to[1], to[2]));
      else console.error("usage: /to NAME text");
      break;
    }
    case "/who":
      console.log(`* here: ${who()}`);
      break;
    case "/quit":
      await leave();
      break;
    case "/help":
      console.log(`* commands: ${HELP}`);
      break;
    default:
      console.error(`unknown command ${command}, nothing sent: try ${HELP}`);
  }
}

/** Sends, or says why it cannot: too many lines wait for a relay that is away, say. */
function send(sending: () => number): void {
  try {
    sending();
  } catch (error) {
    console.error(`* not sent: ${(error as Error).message}`);
  }
}

// Lines, not chunks: a read may end in the middle of a line (a pasted or piped text).
let buffered = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  const lines = (buffered + chunk).split("\n");
  buffered = lines.pop()!;
  for (const line of lines) await typed(line);
}
await typed(buffered);
await leave();
