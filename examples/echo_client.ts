// Types lines to the echo server and prints what comes back; pull the network
// cable (or kill the link) in between and watch the session resume.
//
//   deno run --allow-net examples/echo_client.ts [host] [port] [key]
import { connect } from "../mod.ts";

if (import.meta.main) {
  const [hostname = "127.0.0.1", port = "4000", key] = Deno.args;
  const conn = await connect({ hostname, port: Number(port), key });
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
  await Deno.stdin.readable.pipeTo(conn.writable);
  await printing;
}
