// Types lines to the echo server and prints what comes back; pull the network
// cable (or kill the link) in between and watch the session resume.
//
//   deno run --allow-net examples/echo_client.ts [host] [port] [key]
//
// A mistake (a bad port, no server there, another kind of server, no
// permission) is one line on stderr and exit code 1 (2 for a bad argument).
import { connect, type ImmortalConn, ImmortalError } from "../mod.ts";

const USAGE = "usage: deno run --allow-net examples/echo_client.ts [host] [port] [key]";

/** Ends on a user's mistake: one line, not an uncaught error with its stack. */
function fail(message: string, code = 1): never {
  console.error(`error: ${message}`);
  Deno.exit(code);
}

if (import.meta.main) {
  const [hostname = "127.0.0.1", portText = "4000", key] = Deno.args;
  // Digits only: Number() would take "", "4e3" or "0x10" too.
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= 1 && port <= 65535)) {
    fail(`port must be a number 1-65535, got "${portText}"\n${USAGE}`, 2);
  }
  let conn: ImmortalConn;
  try {
    conn = await connect({ hostname, port, key });
  } catch (error) {
    // Deno's own words ("run again with the --allow-net flag") name no address.
    if (error instanceof ImmortalError && error.code === "permission") {
      const address = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
      fail(`no net permission to connect to ${address}: run with --allow-net=${address}`);
    }
    fail((error as Error).message); // "cannot connect to 127.0.0.1:4000: Connection refused ..."
  }
  console.log(`connected, session ${conn.sessionId.slice(0, 8)}; type lines, Ctrl-D to end`);
  conn.addEventListener(
    "reconnecting",
    (e) => console.log(`link lost (${e.reason}), reconnecting...`),
  );
  conn.addEventListener("resumed", (e) => {
    console.log(
      `resumed after ${(e.downtimeMs / 1000).toFixed(1)} s, ${e.replayedBytes} bytes replayed`,
    );
  });
  const printing = conn.readable.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (text) => void Deno.stdout.write(new TextEncoder().encode(text)) }),
  );
  try {
    await Promise.all([Deno.stdin.readable.pipeTo(conn.writable), printing]);
  } catch (error) {
    // The server restarted and no longer knows the session, or stayed away past its resume timeout.
    fail(`the session ended: ${(error as Error).message}`);
  }
}
