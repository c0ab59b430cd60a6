/**
 * What a RelayNode says when it cannot join: one line in our words that
 * names the relay and the cause, a code to act on, and the platform's error
 * kept as `cause`.
 */

import assert from "node:assert/strict";
import { ImmortalError, RelayConnectError, RelayNode, RelayRefusedError } from "../mod.ts";
import { freePort, within } from "./_helpers.ts";
import { recordEvents, startRelay, waitForEvent, welcomeAndDrop } from "./_relay.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { makeTestCerts } from "./_tls.ts";

const NODE = { session: "s", nickname: "n", retries: 1, connectTimeout: 10_000 };

async function failure(
  url: string,
  options: Partial<Parameters<typeof RelayNode.connect>[1]> = {},
) {
  try {
    const node = await RelayNode.connect(url, { ...NODE, ...options });
    await node.close();
  } catch (error) {
    return error as Error;
  }
  assert.fail(`${url}: the node joined`);
}

Deno.test("RelayNode errors: unreachable, TLS either way, an untrusted certificate, not a relay — each in one line with its code and cause", async () => {
  const certs = await makeTestCerts();
  await using plain = startRelay();
  await using tls = startRelay({ cert: certs.cert, key: certs.key });
  const tlsPort = tls.addr.port;
  await using elsewhere = startRelay({ hostname: "127.0.0.2", cert: certs.cert, key: certs.key });
  // The CA's own certificate served: what `openssl req -x509` alone makes.
  await using caServed = startRelay({ cert: certs.caCert, key: certs.caKey });
  const other = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("not here", { status: 404 }),
  );
  // Not HTTP at all (an immortal server's port, say): hangs up at once. Its
  // end only (a FIN; never a reset, whatever is still unread), read to the end.
  const hangUp = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const hangingUp = (async () => {
    for await (const conn of hangUp) {
      (async () => {
        await conn.closeWrite();
        const buffer = new Uint8Array(4096);
        while (await conn.read(buffer) !== null) { /* drained */ }
      })().catch(() => {}).finally(() => conn.close());
    }
  })();
  try {
    const closed = freePort();
    const cases: [string, Partial<Parameters<typeof RelayNode.connect>[1]>, string, RegExp][] = [
      [
        `http://127.0.0.1:${closed}`,
        {},
        "unreachable",
        new RegExp(`^nothing listens at 127\\.0\\.0\\.1:${closed} \\(connection refused\\)$`),
      ],
      [
        `https://127.0.0.1:${plain.addr.port}`,
        {},
        "tls",
        /^TLS with 127\.0\.0\.1:\d+ failed \(.*\): is it a plain http:\/\/ relay\?$/,
      ],
      [
        `http://127.0.0.1:${tlsPort}`,
        {},
        "tls",
        /^127\.0\.0\.1:\d+ does not answer in plain HTTP: if it is a TLS relay, use an https:\/\/ relay URL$/,
      ],
      [
        `https://127.0.0.1:${tlsPort}`,
        {},
        "tls",
        /^the certificate of 127\.0\.0\.1:\d+ is not trusted \(.*UnknownIssuer.*\): give the relay's CA certificate \(option caCerts; deno run --cert FILE; the tunnel CLI's --tls-ca\)$/,
      ],
      [
        `https://127.0.0.1:${caServed.addr.port}`,
        { caCerts: [certs.caCert] },
        "tls",
        /^the certificate of 127\.0\.0\.1:\d+ is refused \(.*CaUsedAsEndEntity.*\): it is a CA certificate, which TLS does not take as a server's: serve one that CA signed/,
      ],
      [
        // The certificate names localhost, 127.0.0.1 and ::1, not 127.0.0.2.
        `https://127.0.0.2:${elsewhere.addr.port}`,
        { caCerts: [certs.caCert] },
        "tls",
        /^the certificate of 127\.0\.0\.2:\d+ is for another name \(.*not valid for name "127\.0\.0\.2".*\): use a relay URL with a name it carries$/,
      ],
      [
        // Through a proxy nothing listens at: the proxy is named, not the relay (which is up).
        plain.url,
        { proxy: `http://127.0.0.1:${closed}` },
        "unreachable",
        new RegExp(
          `^nothing listens at the proxy at 127\\.0\\.0\\.1:${closed} \\(connection refused\\)$`,
        ),
      ],
      [
        `http://127.0.0.1:${other.addr.port}`,
        {},
        "not-a-relay",
        /127\.0\.0\.1:\d+ answered 404 Not Found to POST \/relay\/stream, not as a relay does: is the URL right\?/,
      ],
      [
        `http://127.0.0.1:${hangUp.addr.port}`,
        {},
        "broken",
        // The platform's words, without its framing (which named the URL again).
        /^127\.0\.0\.1:\d+ closed the connection before the welcome \([^()]*\)$/,
      ],
    ];
    for (const [url, options, code, message] of cases) {
      const error = await failure(url, options);
      assert.ok(error instanceof RelayConnectError, `${url}: ${error}`);
      assert.equal(error.code, code, `${url}: ${error.message}`);
      assert.match(error.message, message);
      assert.ok(!error.message.includes("\n"), "one line");
      if (code !== "not-a-relay") assert.ok(error.cause !== undefined, `${url}: no cause kept`);
    }
    // With the CA, the same TLS relay is fine.
    const node = await RelayNode.connect(`https://127.0.0.1:${tlsPort}`, {
      ...NODE,
      caCerts: [certs.caCert],
    });
    await node.close();
  } finally {
    hangUp.close();
    await hangingUp;
    await other.shutdown();
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("RelayNode errors: a refusal keeps the relay's code and words (wrong secret, bad nickname)", async () => {
  await using relay = startRelay({ secret: "right" });
  const wrong = await failure(relay.url, { secret: "wrong" });
  assert.ok(wrong instanceof RelayRefusedError);
  assert.equal(wrong.code, "unauthorized");
  assert.equal(wrong.message, "missing or wrong relay secret");
  const bad = await failure(relay.url, { secret: "right", nickname: "x".repeat(100) });
  assert.ok(bad instanceof RelayRefusedError);
  assert.equal(bad.code, "bad-request");
  assert.match(bad.message, /nickname/);
});

Deno.test("RelayNode errors: a WebSocket link cut without a close frame is said to have broken, in words", async () => {
  await using relay = startRelay();
  const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
  try {
    await using node = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
      session: "s",
      nickname: "n",
      transport: "websocket",
    });
    const events = recordEvents(node);
    proxy.reset();
    await events.until(
      () => events.events.some((e) => e.type === "state" && e.state === "disconnected"),
      "the link lost",
    );
    const lost = events.events.find((e) => e.type === "state" && e.state === "disconnected");
    assert.equal(
      lost?.type === "state" && lost.reason,
      "the connection to the relay broke (no WebSocket close frame)",
    );
  } finally {
    await proxy.close();
  }
});

Deno.test("a node whose connection the relay handed to another holder of its token (4409) stops, saying so, instead of taking it back for ever", async () => {
  // Another process showed this node's token: the relay replaced this connection.
  await using relay = welcomeAndDrop(4409, "replaced by a newer connection of the same node");
  const node = await RelayNode.connect(relay.url, {
    session: "s",
    nickname: "n",
    transport: "websocket",
    backoff: { initial: 1, max: 1 },
  });
  const error = await waitForEvent(node, "error");
  assert.equal(error.code, "replaced");
  assert.match(error.message, /another connection holds this node's token/);
  assert.equal(node.state, "closed");
  assert.equal(relay.hellos.length, 1, "it did not come back");
  await node.close();
});

Deno.test("a relay that drops every node just after its welcome (its cluster store down) is redialed with a growing backoff, not at once for ever", async () => {
  await using relay = welcomeAndDrop(4503, "the relay cannot reach its cluster store");
  await using _node = await RelayNode.connect(relay.url, {
    session: "s",
    nickname: "n",
    transport: "websocket",
    backoff: { initial: 200, max: 1000 },
  });
  await within(30_000, "the fourth connection", relay.hello(4));
  // Jittered to [0.5, 1) of 200, 400, 800 ms. Before, every redial went at
  // once: the gaps were a few ms, a storm of connections for as long as it lasted.
  const gaps = relay.gaps();
  assert.ok(gaps[0] >= 100 && gaps[1] >= 200 && gaps[2] >= 400, `gaps ${gaps.map(Math.round)}`);
});

/** A server that accepts connections and answers nothing: a dial to it waits for its timeout. */
function silentServer() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  let accepted = () => {};
  const firstAccepted = new Promise<void>((resolve) => accepted = resolve);
  const serving = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      accepted();
    }
  })();
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    firstAccepted,
    async [Symbol.asyncDispose]() {
      listener.close();
      await serving;
      for (const conn of conns) conn.close();
    },
  };
}

for (const transport of ["websocket", "http"] as const) {
  Deno.test(`RelayNode.connect with a signal: aborting gives up a ${transport} dial the relay never answers, with the signal's reason`, async () => {
    await using server = silentServer();
    const abort = new AbortController();
    const joining = RelayNode.connect(server.url, {
      session: "s",
      nickname: "n",
      transport,
      connectTimeout: 120_000,
      signal: abort.signal,
    });
    await server.firstAccepted;
    const reason = new Error("the user gave up");
    abort.abort(reason);
    // Without the signal, this waits out the two-minute timeout.
    await assert.rejects(within(10_000, "connect given up", joining), (error) => error === reason);
  });
}

Deno.test("RelayNode.connect with a signal: aborted before, it rejects with the reason; aborted in the backoff between attempts, it rejects at once", async () => {
  await using server = silentServer();
  const before = AbortSignal.abort(new Error("never mind"));
  await assert.rejects(
    RelayNode.connect(server.url, { session: "s", nickname: "n", signal: before }),
    /never mind/,
  );
  // A port nothing listens on: each attempt fails at once, then a minute's backoff.
  const abort = new AbortController();
  const joining = RelayNode.connect(`http://127.0.0.1:${freePort()}`, {
    session: "s",
    nickname: "n",
    retries: 3,
    backoff: { initial: 60_000, max: 60_000 },
    signal: abort.signal,
  });
  abort.abort(new Error("stop waiting"));
  await assert.rejects(within(10_000, "connect given up", joining), /stop waiting/);
});

for (const transport of ["websocket", "http"] as const) {
  Deno.test(`RelayNode.connect with a signal: aborting once joined leaves the node (${transport}) connected`, async () => {
    await using relay = startRelay();
    const abort = new AbortController();
    await using a = await RelayNode.connect(relay.url, {
      session: "s",
      nickname: "a",
      transport,
      signal: abort.signal,
    });
    const events = recordEvents(a);
    abort.abort();
    await using b = await RelayNode.connect(relay.url, { session: "s", nickname: "b" });
    b.sendTo("a", "still there?");
    await events.until(
      () => events.events.some((e) => e.type === "message" && e.text === "still there?"),
      "the message to a",
    );
    assert.equal(a.state, "connected");
    assert.ok(!events.events.some((e) => e.type === "state" && e.state !== "connected"));
  });
}

Deno.test("a closed RelayNode says so as an ImmortalError of code closed: send throws, a flush waiting for the relay rejects", async () => {
  await using relay = startRelay();
  const proxy = await FaultProxy.start({ targetPort: relay.addr.port });
  try {
    const node = await RelayNode.connect(`http://127.0.0.1:${proxy.port}`, {
      session: "s",
      nickname: "n",
    });
    // Nothing reaches the relay any more: the message waits for its acknowledgement.
    proxy.blackhole();
    node.send("into the void");
    const flushing = node.flush();
    await node.close();
    const closed = (error: unknown) => error instanceof ImmortalError && error.code === "closed";
    await assert.rejects(
      flushing,
      (error) => closed(error) && /closed with 1 unsent/.test(String(error)),
    );
    assert.throws(() => node.send("again"), closed);
  } finally {
    await proxy.close();
  }
});
