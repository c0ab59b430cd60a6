/**
 * Immortal sessions over HTTP: WebSocket links dialed by URL, accepted by a
 * handler mounted in `Deno.serve`, cut mid-transfer by a real TCP fault.
 */

import assert from "node:assert/strict";
import { connect, HttpLinkAcceptor, listen, webSocketDialer, webSocketUrl } from "../mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { patternHash, receiveAll, sendPattern } from "./_helpers.ts";
import { cutWhile, FAST } from "./_tunnel_helpers.ts";

/** A `Deno.serve` app with immortal sessions at `/link`, and a page of its own elsewhere. */
function serveLinks(key: string) {
  const links = new HttpLinkAcceptor();
  const listener = listen({ acceptor: links, key, ...FAST });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) =>
      new URL(req.url).pathname === "/link"
        ? links.handle(req, info)
        : new Response("the app's own page"),
  );
  return {
    listener,
    port: server.addr.port,
    async [Symbol.asyncDispose]() {
      listener.close();
      await server.shutdown();
    },
  };
}

Deno.test("WebSocket links: 32 MiB each way survive 8 link cuts, fired by bytes forwarded; the app's other pages still work", async () => {
  await using app = serveLinks("k");
  const proxy = await FaultProxy.start({ targetPort: app.port });
  try {
    const url = `ws://127.0.0.1:${proxy.port}/link`;
    await using client = await connect({ dialer: webSocketDialer({ url }), key: "k", ...FAST });
    await using server = await app.listener.accept();
    const size = 32 << 20;
    const cuts = await cutWhile(
      proxy,
      6 << 20,
      4,
      Promise.all([
        sendPattern(client, 1, size).then((sent) => assert.equal(sent, patternHash(1, size))),
        receiveAll(server).then((got) => assert.equal(got.sha256, patternHash(1, size))),
        sendPattern(server, 2, size).then((sent) => assert.equal(sent, patternHash(2, size))),
        receiveAll(client).then((got) => assert.equal(got.sha256, patternHash(2, size))),
      ]),
    );
    assert.ok(cuts.up + cuts.down >= 6, `only ${cuts.up}+${cuts.down} cuts`);
    const page = await fetch(`http://127.0.0.1:${app.port}/`);
    assert.equal(await page.text(), "the app's own page");
  } finally {
    await proxy.close();
  }
});

Deno.test("WebSocket links: a wrong key is refused; a request that is not an upgrade gets 426; URLs are checked", async () => {
  await using app = serveLinks("right");
  const url = `http://127.0.0.1:${app.port}/link`;
  await assert.rejects(
    connect({ dialer: webSocketDialer({ url }), key: "wrong" }),
    /auth|key|proof/i,
  );
  const plain = await fetch(url);
  assert.equal(plain.status, 426);
  await plain.body?.cancel();
  assert.equal(webSocketUrl("https://relay.example/link").href, "wss://relay.example/link");
  assert.throws(() => webSocketUrl("ftp://x/"), /ws:, wss:, http: or https:/);
});
