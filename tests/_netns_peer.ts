// One end of the network-namespace test, run inside its namespace by
// tests/conn_netns_test.ts, with the default settings. It speaks to the test
// through JSON lines on stdout.
//
//   server <hostname> <port>          accept one session and echo it
//   client <hostname> <port> <bytes>  send <bytes> of pattern, read the echo
import { connect, type ImmortalConn, listen } from "../mod.ts";
import { pattern, receiveAll } from "./_helpers.ts";
import { createHash } from "node:crypto";

function say(event: string, fields: Record<string, unknown> = {}): void {
  console.log(JSON.stringify({ event, at: Date.now(), ...fields }));
}

function report(conn: ImmortalConn): void {
  conn.addEventListener("reconnecting", (e) => say("reconnecting", { reason: e.reason }));
  conn.addEventListener(
    "resumed",
    (e) =>
      say("resumed", { downtimeMs: e.downtimeMs, remote: conn.remoteAddr, local: conn.localAddr }),
  );
}

const [role, hostname, portText, bytesText] = Deno.args;
const port = Number(portText);
if (role === "server") {
  using listener = listen({ hostname, port });
  say("listening");
  const conn = await listener.accept();
  report(conn);
  const buffer = new Uint8Array(256 * 1024);
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    await conn.write(buffer.subarray(0, n));
  }
  await conn.closeWrite();
  await conn.closed;
  say("done");
} else {
  const total = Number(bytesText);
  const conn = await connect({ hostname, port });
  report(conn);
  say("connected", { local: conn.localAddr });
  const sent = createHash("sha256");
  const writing = (async () => {
    for (const chunk of pattern(11, total)) {
      sent.update(chunk);
      await conn.write(chunk);
    }
    await conn.closeWrite();
  })();
  // Progress lines let the test fire faults by bytes moved, not by time.
  let read = 0;
  let reported = 0;
  const counting = {
    read: async (buffer: Uint8Array) => {
      const n = await conn.read(buffer);
      if (n !== null) {
        read += n;
        if (read - reported >= 1 << 20) {
          reported = read;
          say("progress", { read });
        }
      }
      return n;
    },
  };
  const received = await receiveAll(counting);
  await writing;
  await conn.closed;
  say("done", { bytes: received.bytes, sent: sent.digest("hex"), received: received.sha256 });
}
