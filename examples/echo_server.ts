// An immortal echo server: every session gets its own bytes back.
//
//   deno run --allow-net examples/echo_server.ts [port] [key]
//
// Port 0 picks a free one. A mistake (a bad port, a port in use, no
// permission) is one line on stderr and exit code 1 (2 for a bad argument).
import { type ImmortalListener, listen } from "../mod.ts";

const USAGE = "usage: deno run --allow-net examples/echo_server.ts [port] [key]";

/** Ends on a user's mistake: one line, not an uncaught error with its stack. */
function fail(message: string, code = 1): never {
  console.error(`error: ${message}`);
  Deno.exit(code);
}

if (import.meta.main) {
  const [portText = "4000", key] = Deno.args;
  // Digits only: Number() would take "", "4e3" or "0x10" too.
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port <= 65535)) fail(`port must be a number 0-65535, got "${portText}"\n${USAGE}`, 2);
  let listener: ImmortalListener;
  try {
    listener = listen({ port, key });
  } catch (error) {
    // Deno's own words ("run again with the --allow-net flag") name no address.
    if (error instanceof Deno.errors.NotCapable) {
      fail(`no net permission to listen on 0.0.0.0:${port}: run with --allow-net=0.0.0.0:${port}`);
    }
    fail((error as Error).message); // "cannot listen on 0.0.0.0:4000: Address already in use ..."
  }
  console.log(
    `echo server on port ${listener.addr.port}${key ? " (key required)" : ""}`,
  );
  for await (const conn of listener) {
    console.log(`session ${conn.sessionId.slice(0, 8)} opened`);
    conn.addEventListener(
      "reconnecting",
      () => console.log(`session ${conn.sessionId.slice(0, 8)}: link lost`),
    );
    conn.addEventListener(
      "resumed",
      () => console.log(`session ${conn.sessionId.slice(0, 8)}: resumed`),
    );
    conn.readable.pipeTo(conn.writable).then(
      () => console.log(`session ${conn.sessionId.slice(0, 8)} ended`),
      (error) => console.log(`session ${conn.sessionId.slice(0, 8)} failed: ${error.message}`),
    );
  }
}
