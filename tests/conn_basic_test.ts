import assert from "node:assert/strict";
import { connect, ImmortalError, type Link, listen, TcpLink, TunnelClient } from "../mod.ts";
import { muxPair } from "./_mux_pair.ts";
import {
  patternHash,
  receiveAll,
  renderRecord,
  sendPattern,
  within,
  withLogs,
} from "./_helpers.ts";

const te = new TextEncoder();
const td = new TextDecoder();

Deno.test("client and server share a session; bytes flow both ways through the streams", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  await using client = await connect({ port });
  await using server = await listener.accept();
  assert.equal(client.sessionId, server.sessionId);
  assert.equal(client.state, "connected");

  const writer = client.writable.getWriter();
  await writer.write(te.encode("ping"));
  const reader = server.readable.getReader();
  const { value } = await reader.read();
  assert.equal(td.decode(value), "ping");
  await server.write(te.encode("pong"));
  const buf = new Uint8Array(16);
  const n = await client.read(buf);
  assert.equal(td.decode(buf.subarray(0, n!)), "pong");
  reader.releaseLock();
  writer.releaseLock();
});

Deno.test("half-close: the server still sends a 10 MiB reply after the client's FIN; both end cleanly", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const client = await connect({ port: listener.addr.port });
  const server = await listener.accept();
  const REPLY = 10 << 20;

  const serverSide = (async () => {
    const request = await receiveAll(server); // ends at the client's FIN
    assert.equal(request.bytes, 7);
    return await sendPattern(server, 99, REPLY);
  })();
  await client.write(te.encode("GET all"));
  await client.closeWrite();
  await assert.rejects(client.write(te.encode("late")), /writable side was closed/);
  const reply = await receiveAll(client);
  const sentHash = await serverSide;
  assert.equal(reply.bytes, REPLY);
  assert.equal(reply.sha256, sentHash);
  assert.equal(reply.sha256, patternHash(99, REPLY));
  // Both directions are done and acknowledged: the session ends by itself.
  await Promise.all([client.closed, server.closed]);
  assert.equal(client.state, "closed");
  assert.equal(server.state, "closed");
});

Deno.test("close() aborts: the peer's streams error with a clear reason, logged once as news, not as a warning", async () => {
  await withLogs(async (records) => {
    await closeAborts();
    const peer = records.filter((r) => /aborted/.test(renderRecord(r)));
    assert.deepEqual(
      peer.map((r) => [r.level, renderRecord(r).replace(/Session [0-9a-f]+/, "Session ID")]),
      [["info", "Session ID aborted by the peer: closed by the application"]],
    );
  });
});

async function closeAborts() {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const client = await connect({ port: listener.addr.port });
  const server = await listener.accept();
  const closedEvent = new Promise((resolve) => server.addEventListener("closed", resolve));
  client.close();
  await client.closed; // a local close resolves
  await assert.rejects(
    server.closed,
    (e: unknown) => e instanceof ImmortalError && e.code === "aborted",
  );
  await closedEvent;
  await assert.rejects(server.read(new Uint8Array(8)), /aborted/);
  await assert.rejects(client.write(te.encode("x")), /closed/);
}

Deno.test("bad settings and unreachable servers give one clear error, not a hang", async () => {
  await assert.rejects(connect({ port: 70000 }), /port must be an integer in 1..65535/);
  await assert.rejects(
    connect({ port: 1, heartbeatInterval: 1000, deadLinkTimeout: 500 }),
    /deadLinkTimeout/,
  );
  assert.throws(() => listen({ port: 0, key: "" }), /key must be a non-empty/);
  // Nothing listens on this port (we just closed it).
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = probe.addr.port;
  probe.close();
  await assert.rejects(
    connect({ port }),
    (e: unknown) =>
      e instanceof ImmortalError && e.code === "unreachable" &&
      e.message.includes(`127.0.0.1:${port}`),
  );
});

Deno.test("listener: async iteration, sessionCount, close rejects pending accepts", async () => {
  const listener = listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  const a = await connect({ port });
  const b = await connect({ port });
  const ids: string[] = [];
  for await (const conn of listener) {
    ids.push(conn.sessionId);
    conn.close();
    if (ids.length === 2) break;
  }
  assert.deepEqual(new Set(ids), new Set([a.sessionId, b.sessionId]));
  const pending = listener.accept();
  listener.close();
  await assert.rejects(pending, (e: unknown) => e instanceof ImmortalError && e.code === "closed");
  await Promise.allSettled([a.closed, b.closed]);
  assert.equal(listener.sessionCount, 0);
});

Deno.test({
  name:
    "a server Deno may not reach (no --allow-net for it) is a permission error at once, not an unreachable one retried",
  // Meaningful only under the suite's --allow-net list, which leaves 127.0.0.200 out.
  ignore: Deno.permissions.querySync({ name: "net", host: "127.0.0.200:9" }).state === "granted",
}, async () => {
  // 127.0.0.200 is outside the test's --allow-net.
  const error = await connect({ hostname: "127.0.0.200", port: 9 }).then(
    () => assert.fail("connected"),
    (error: unknown) => error,
  );
  assert.ok(error instanceof ImmortalError && error.code === "permission", String(error));
  assert.match(error.message, /^no permission to connect to 127\.0\.0\.200:9: /);
  // A tunnel client does not wait for it to change (it waits 30 s for an unreachable one).
  await using client = new TunnelClient({
    hostname: "127.0.0.1",
    port: 0,
    server: { hostname: "127.0.0.200", port: 9 },
    connectWait: 600_000,
  });
  await assert.rejects(
    within(10_000, "the refusal", client.open()),
    (e: unknown) => e instanceof ImmortalError && e.code === "permission",
  );
});

Deno.test("flush resolves once the peer's application has read every byte written, not before", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  await using client = await connect({ port: listener.addr.port });
  await using server = await listener.accept();
  const size = 3 << 20;
  let read = 0;
  // The server reads in small steps, behind the client: flush must wait for all of it.
  const reading = (async () => {
    const buffer = new Uint8Array(64 * 1024);
    while (read < size) {
      const n = await server.read(buffer);
      if (n === null) break;
      read += n;
    }
  })();
  await client.write(new Uint8Array(size));
  await client.flush();
  assert.equal(read, size, "flush resolved before the peer's application read everything");
  await reading;
  // Nothing written since: it resolves at once.
  await client.flush();
});

Deno.test("a reader that stops (break out of for await on readable) closes the session, as with Deno.Conn: the peer's writes fail instead of waiting for ever", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  await using client = await connect({ port: listener.addr.port });
  await using server = await listener.accept();
  // The server writes more than any window holds: it waits for the reader.
  const writing = (async () => {
    for (;;) await server.write(new Uint8Array(1 << 20));
  })();
  for await (const _chunk of client.readable) break;
  await within(30_000, "the writer failing", assert.rejects(writing, ImmortalError));
  await assert.rejects(server.closed, /the reader stopped reading/);
  await client.closed;
  assert.equal(client.state, "closed");
});

Deno.test("write takes a Uint8Array only (an ArrayBuffer wrote nothing, silently); `using` closes a session", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  let closing: Promise<void>;
  {
    using client = await connect({ port: listener.addr.port });
    closing = client.closed;
    for (const wrong of [new ArrayBuffer(4), new DataView(new ArrayBuffer(4)), "text", [1, 2]]) {
      await assert.rejects(
        client.write(wrong as unknown as Uint8Array),
        (e: unknown) => e instanceof TypeError && /write takes a Uint8Array, got /.test(e.message),
      );
    }
    assert.equal(client.stats.bytesWritten, 0);
  }
  await closing; // closed at the end of the block
  await using server = await listener.accept();
  await server.closed.catch(() => {});
});

Deno.test("writable.abort(reason) aborts the session, and the peer is told that reason", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  await using client = await connect({ port: listener.addr.port });
  await using server = await listener.accept();
  await client.writable.abort(new Error("the upload was cancelled"));
  await assert.rejects(server.closed, /the upload was cancelled/);
});

Deno.test("a session the listener closes before the application accepted it: its client hears that, not 'closed by the application'", async () => {
  const listener = listen({ hostname: "127.0.0.1", port: 0 });
  const client = await connect({ port: listener.addr.port });
  // Handshake done (connect resolved): the session waits in the listener's queue.
  listener.close();
  const error = await within(30_000, "the client's end", client.closed.then(() => null, (e) => e));
  assert.ok(error instanceof ImmortalError, String(error));
  assert.equal(error.code, "aborted");
  assert.match(error.message, /the server's listener closed before the session was accepted/);
});

Deno.test("a listener closed while a session's accept is on its way: the client, which holds an accepted session, is told why, not left to resume to a listener gone", async () => {
  const tcp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // The server's second write of a handshake is its accept: held until the listener is closing.
  const { promise: accepting, resolve: acceptHeld } = Promise.withResolvers<void>();
  const { promise: release, resolve: releaseAccept } = Promise.withResolvers<void>();
  const acceptor = {
    addr: tcp.addr as Deno.NetAddr,
    async accept(): Promise<Link> {
      const link = new TcpLink(await tcp.accept() as Deno.TcpConn);
      let writes = 0;
      return {
        read: (buffer) => link.read(buffer),
        write: async (data) => {
          if (++writes === 2) {
            acceptHeld();
            await release;
          }
          return link.write(data);
        },
        close: () => link.close(),
        closeWrite: () => link.closeWrite(),
        get remoteAddr() {
          return link.remoteAddr;
        },
      };
    },
    close: () => tcp.close(),
  };
  const listener = listen({ acceptor });
  const connecting = connect({ port: tcp.addr.port });
  await within(30_000, "the accept on its way", accepting);
  listener.close();
  releaseAccept();
  const client = await within(30_000, "the connect", connecting);
  const error = await within(30_000, "the client's end", client.closed.then(() => null, (e) => e));
  assert.ok(error instanceof ImmortalError, String(error));
  assert.match(error.message, /the server's listener closed before the session was accepted/);
});

Deno.test("readable chunks are typed as a Deno.Conn's (Uint8Array<ArrayBuffer>): crypto.subtle and Blob take them as they are, from a session and from a stream", async () => {
  /** What code written for a Deno.Conn's readable takes (a type check, then a run). */
  const digestAll = async (readable: Deno.Conn["readable"]): Promise<number> => {
    let bytes = 0;
    for await (const chunk of readable) {
      await crypto.subtle.digest("SHA-256", chunk);
      bytes += new Blob([chunk]).size;
    }
    return bytes;
  };
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  await using client = await connect({ port: listener.addr.port });
  await using server = await listener.accept();
  await client.write(new Uint8Array(1000));
  await client.closeWrite();
  assert.equal(await digestAll(server.readable), 1000);
  await using mux = await muxPair();
  const stream = mux.client.open();
  const [accepted] = await Promise.all([
    mux.server.accept(),
    stream.write(new Uint8Array(500)).then(() => stream.closeWrite()),
  ]);
  assert.equal(await digestAll(accepted.readable), 500);
});
