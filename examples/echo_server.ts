// An immortal echo server: every session gets its own bytes back.
//
//   deno run --allow-net examples/echo_server.ts [port] [key]
import { listen } from "../mod.ts";

if (import.meta.main) {
  const port = Number(Deno.args[0] ?? 4000);
  const key = Deno.args[1];
  const listener = listen({ port, key });
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
