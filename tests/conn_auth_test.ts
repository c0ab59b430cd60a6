import assert from "node:assert/strict";
import { connect, ImmortalError, listen } from "../mod.ts";
import { encodeFrame, type Frame, FrameDecoder, PROTOCOL_VERSION } from "../lib/frame/mod.ts";
import { TcpLink } from "../lib/link/mod.ts";
import { FrameReader } from "../lib/conn/_frame_reader.ts";
import { clientOpen, clientResume } from "../lib/conn/_handshake.ts";
import { renderRecord, waitUntil, withLogs } from "./_helpers.ts";

const te = new TextEncoder();

/** A client's hello, made by hand: a new session's (`publicKey`) or a resume's (`resume`). */
function helloFrame(
  opening: { publicKey: Uint8Array } | { resume: { sessionId: Uint8Array; received: number } },
): Uint8Array {
  return encodeFrame({
    type: "hello",
    version: PROTOCOL_VERSION,
    nonce: crypto.getRandomValues(new Uint8Array(16)),
    window: 1 << 20,
    ...opening,
  });
}

async function readFrame(conn: Deno.Conn, decoder: FrameDecoder): Promise<Frame> {
  const out: Frame[] = [];
  const buf = new Uint8Array(4096);
  while (out.length === 0) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("closed before a frame arrived");
    decoder.push(buf.slice(0, n), out);
  }
  return out[0];
}

function hexToBytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!, (h) => parseInt(h, 16));
}

Deno.test("pre-shared key: no key or a wrong key opens no session; the right one does", async () => {
  await withLogs(async (records) => {
    using listener = listen({ hostname: "127.0.0.1", port: 0, key: "correct horse" });
    const port = listener.addr.port;
    await assert.rejects(
      connect({ port }),
      (e: unknown) => e instanceof ImmortalError && e.code === "auth",
    );
    await assert.rejects(
      connect({ port, key: "wrong" }),
      (e: unknown) =>
        e instanceof ImmortalError && e.code === "auth" && /pre-shared key/.test(e.message),
    );
    assert.equal(listener.sessionCount, 0);
    assert.ok(
      records.some((r) =>
        r.level === "warning" && /Refused .*pre-shared key missing or wrong/.test(renderRecord(r))
      ),
      "refusal is logged",
    );
    // A client retrying with the wrong key comes from a new port each time:
    // still one source, so the log holds one line, the rest summarised later.
    for (let i = 0; i < 10; i++) {
      await assert.rejects(connect({ port, key: "wrong" }));
    }
    const refusals = records.filter((r) => /Refused /.test(renderRecord(r)));
    assert.equal(refusals.length, 1, refusals.map(renderRecord).join("\n"));
    await using client = await connect({ port, key: "correct horse" });
    await using server = await listener.accept();
    await client.write(te.encode("ok"));
    const buf = new Uint8Array(2);
    assert.equal(await server.read(buf), 2);
  });
});

Deno.test("a client with a key refuses a server that cannot prove it, and says when it has no key at all (not a wrong one)", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 }); // no key: it takes anyone
  await assert.rejects(
    connect({ port: listener.addr.port, key: "secret" }),
    (e: unknown) =>
      e instanceof ImmortalError && e.code === "auth" &&
      /^the server proved no pre-shared key: it has none \(it takes anyone\), or it is not your server; give it the same key$/
        .test(e.message),
  );
  // The server did create the session before the client hung up; closing the listener reaps it.
});

Deno.test("a forged resume proof is refused and logged; the real session is unharmed", async () => {
  await withLogs(async (records) => {
    using listener = listen({ hostname: "127.0.0.1", port: 0 });
    const port = listener.addr.port;
    await using client = await connect({ port });
    await using server = await listener.accept();

    // An attacker who knows the session id (it is not secret) tries to take the session over.
    const attacker = await Deno.connect({ hostname: "127.0.0.1", port });
    const decoder = new FrameDecoder();
    await attacker.write(
      helloFrame({ resume: { sessionId: hexToBytes(client.sessionId), received: 0 } }),
    );
    assert.equal((await readFrame(attacker, decoder)).type, "challenge");
    await attacker.write(
      encodeFrame({ type: "proof", mac: crypto.getRandomValues(new Uint8Array(32)) }),
    );
    const answer = await readFrame(attacker, decoder);
    assert.equal(answer.type, "reject");
    assert.equal(answer.type === "reject" && answer.code, "auth");
    attacker.close();

    assert.ok(
      records.some((r) =>
        r.level === "warning" && /Refused .*resume proof is invalid/.test(renderRecord(r))
      ),
      `refusal is logged: ${records.map(renderRecord).join("\n")}`,
    );
    // Nothing changed for the real session: same link, data still flows both ways.
    assert.equal(client.state, "connected");
    assert.equal(client.stats.reconnects + server.stats.reconnects, 0);
    await client.write(te.encode("still here"));
    const buf = new Uint8Array(10);
    let got = 0;
    while (got < 10) got += (await server.read(buf.subarray(got)))!;
    assert.equal(new TextDecoder().decode(buf), "still here");
  });
});

Deno.test("a resume claiming bytes never sent is refused with a reason (not accepted, then cut), and ends the session", async () => {
  using listener = listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  const first = new FrameReader(new TcpLink(await Deno.connect({ hostname: "127.0.0.1", port })));
  const { secrets } = await clientOpen(first, null, 1 << 20);
  await using server = await listener.accept();
  await server.write(new Uint8Array(100));
  first.link.close();
  // The server sent 100 bytes; this client says it has 5,000.
  const second = new FrameReader(new TcpLink(await Deno.connect({ hostname: "127.0.0.1", port })));
  try {
    await assert.rejects(
      clientResume(second, secrets, 5_000, 1 << 20),
      (e: unknown) =>
        e instanceof ImmortalError && e.code === "protocol" &&
        /resume position out of range/.test(e.message),
    );
  } finally {
    second.link.close();
  }
  await assert.rejects(
    server.closed,
    (e: unknown) => e instanceof ImmortalError && /outside \[0, 100\]/.test(e.message),
  );
});

Deno.test("a plain echo server is told apart: our hello came back", async () => {
  using echo = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    const conn = await echo.accept();
    await conn.readable.pipeTo(conn.writable).catch(() => {});
  })();
  await assert.rejects(
    connect({ port: echo.addr.port }),
    (e: unknown) =>
      e instanceof ImmortalError && e.code === "protocol" &&
      /sent our hello back: it echoes/.test(e.message),
  );
  await serving;
});

Deno.test("a resume of a session the server does not know (it restarted) is refused, and said in the server's log as well as to the client", async () => {
  await withLogs(async (records) => {
    using listener = listen({ hostname: "127.0.0.1", port: 0 });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    await conn.write(
      helloFrame({
        resume: { sessionId: crypto.getRandomValues(new Uint8Array(16)), received: 0 },
      }),
    );
    const answer = await readFrame(conn, new FrameDecoder());
    conn.close();
    assert.equal(answer.type === "reject" && answer.code, "unknown-session");
    await waitUntil(
      () =>
        records.some((r) =>
          r.level === "warning" &&
          /^Refused to resume a session for 127\.0\.0\.1:\d+: no such session \(it ended or the server restarted\)$/
            .test(renderRecord(r))
        ),
      "the refusal logged",
    );
  });
});

Deno.test("a client that sends a reject in place of its proof is a malformed handshake, not a refusal of the server's; a peer's reason never carries a line break into a log", async () => {
  await withLogs(async (records) => {
    using listener = listen({ hostname: "127.0.0.1", port: 0, key: "k" });
    const stranger = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    const decoder = new FrameDecoder();
    await stranger.write(helloFrame({ publicKey: crypto.getRandomValues(new Uint8Array(32)) }));
    assert.equal((await readFrame(stranger, decoder)).type, "challenge");
    const forged = "x\n18:00:00.000 INF immortal·listener Session resumed\u001b[31m";
    await stranger.write(encodeFrame({ type: "reject", code: "auth", reason: forged }));
    // A frame out of place: the listener hangs up without a word (PROTOCOL.md 1.6).
    const answer = await readFrame(stranger, decoder).catch(() => null);
    assert.equal(answer, null, `answered ${answer?.type}`);
    stranger.close();
    await waitUntil(
      () => records.some((r) => /Handshake with .* failed|Refused/.test(renderRecord(r))),
      "the listener giving up on it",
    );
    const lines = records.map(renderRecord).join("\n");
    assert.doesNotMatch(lines, /server refused/, "a client's reject taken for the server's");
    for (const line of records.map(renderRecord)) {
      assert.ok(!line.includes("\n") && !line.includes("\u001b"), `the peer's text in: ${line}`);
    }
    assert.equal(listener.stats.refusedAuth, 0);
  });
});
