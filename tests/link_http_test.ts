/**
 * Immortal sessions over HTTP: WebSocket links dialed by URL, accepted by a
 * handler mounted in `Deno.serve`, cut mid-transfer by a real TCP fault.
 */

import assert from "node:assert/strict";
import {
  connect,
  type Dialer,
  formatAddr,
  httpDialer,
  HttpLinkAcceptor,
  httpStreamDialer,
  type ImmortalConn,
  ImmortalError,
  listen,
  webSocketDialer,
  webSocketUrl,
} from "../mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import {
  patternHash,
  receiveAll,
  renderRecord,
  sendPattern,
  within,
  withLogs,
} from "./_helpers.ts";
import { startNginx, startTinyproxy } from "./_proxies.ts";
import { cutWhile, FAST } from "./_tunnel_helpers.ts";
import { makeTestCerts } from "./_tls.ts";

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

/** `size` bytes each way between `client` and `server`, checked by hash. */
function bothWays(client: ImmortalConn, server: ImmortalConn, size: number) {
  return Promise.all([
    sendPattern(client, 1, size).then((sent) => assert.equal(sent, patternHash(1, size))),
    receiveAll(server).then((got) => assert.equal(got.sha256, patternHash(1, size))),
    sendPattern(server, 2, size).then((sent) => assert.equal(sent, patternHash(2, size))),
    receiveAll(client).then((got) => assert.equal(got.sha256, patternHash(2, size))),
  ]);
}

const transports: [string, (url: string) => Dialer][] = [
  ["WebSocket", (url) => webSocketDialer({ url })],
  ["HTTP streaming", (url) => httpStreamDialer({ url })],
];
for (const [name, dialer] of transports) {
  Deno.test(`${name} links: 32 MiB each way survive 8 link cuts, fired by bytes forwarded; the app's other pages still work`, async () => {
    await using app = serveLinks("k");
    const proxy = await FaultProxy.start({ targetPort: app.port });
    try {
      const url = `http://127.0.0.1:${proxy.port}/link`;
      await using client = await connect({ dialer: dialer(url), key: "k", ...FAST });
      await using server = await app.listener.accept();
      // Logs name the server a link reached, also over fetch (which hides its socket).
      const link = await dialer(url)(AbortSignal.timeout(10_000));
      assert.equal(formatAddr(link.remoteAddr), `127.0.0.1:${proxy.port}`);
      link.close();
      const cuts = await cutWhile(proxy, 6 << 20, 4, bothWays(client, server, 32 << 20));
      assert.ok(cuts.up + cuts.down >= 6, `only ${cuts.up}+${cuts.down} cuts`);
      const page = await fetch(`http://127.0.0.1:${app.port}/`);
      assert.equal(await page.text(), "the app's own page");
    } finally {
      await proxy.close();
    }
  });
}

Deno.test("HTTP links through a real tinyproxy (CONNECT only to 443: no WebSocket) fall back to HTTP streaming by themselves, and survive cuts behind it", async () => {
  await withLogs(async (records) => {
    await using app = serveLinks("k");
    const cutter = await FaultProxy.start({ targetPort: app.port });
    await using tinyproxy = await startTinyproxy();
    using client = Deno.createHttpClient({ proxy: { url: `http://127.0.0.1:${tinyproxy.port}` } });
    try {
      const url = `http://127.0.0.1:${cutter.port}/link`;
      await using conn = await connect({ dialer: httpDialer({ url, client }), key: "k", ...FAST });
      await using server = await app.listener.accept();
      await cutWhile(cutter, 4 << 20, 2, bothWays(conn, server, 16 << 20));
      const lines = records.map(renderRecord);
      assert.ok(lines.some((l) => /using HTTP streaming/.test(l)), lines.join("\n"));
      // The bytes went through the proxy: its log has the POSTs.
      assert.match(await tinyproxy.log(), /POST/);
    } finally {
      await cutter.close();
    }
  });
});

Deno.test("HTTP links behind a real nginx reverse proxy (HTTP/1.0 upstream, buffering on, no upgrade headers) move 16 MiB each way", async () => {
  await using app = serveLinks("k");
  await using nginx = await startNginx(app.port);
  const url = `http://127.0.0.1:${nginx.port}/link`;
  await using conn = await connect({ dialer: httpDialer({ url }), key: "k", ...FAST });
  await using server = await app.listener.accept();
  await bothWays(conn, server, 16 << 20);
  assert.match(await nginx.log(), /POST \/link/);
});

Deno.test("HTTP-streaming links behind a real nginx that takes smaller POSTs than ours (300 KB): the next links post less, and 8 MiB go each way (a 413 was a link lost, and the same POST again, for ever)", async () => {
  await using app = serveLinks("k");
  await using nginx = await startNginx(app.port, { maxBody: "300k" });
  const url = `http://127.0.0.1:${nginx.port}/link`;
  const dialer = httpDialer({ url, transport: "http" });
  await using conn = await connect({ dialer, key: "k", ...FAST });
  await using server = await app.listener.accept();
  await within(60_000, "8 MiB each way", bothWays(conn, server, 8 << 20));
  // 1 MiB refused, then 512 KiB (up to four POSTs in flight each), and
  // never again that large, whatever else the run holds.
  const refused = (await nginx.log()).match(/"POST \/link HTTP\/1\.[01]" 413/g) ?? [];
  assert.ok(refused.length >= 1 && refused.length <= 8, `nginx refused ${refused.length}`);
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

Deno.test("HTTP-streaming links: an upstream POST declaring more than 1 MiB is refused before its body is read", async () => {
  await using app = serveLinks("k");
  const url = `http://127.0.0.1:${app.port}/link`;
  const opened = await fetch(url, { method: "POST", headers: { "x-immortal-link": "open" } });
  const id = opened.headers.get("x-immortal-link")!;
  assert.equal(opened.status, 200);
  using tcp = await Deno.connect({ hostname: "127.0.0.1", port: app.port });
  // Headers only: a server that read the body first would wait for 2 MB that never come.
  await tcp.write(new TextEncoder().encode(
    `POST /link HTTP/1.1\r\nhost: 127.0.0.1\r\nx-immortal-link: ${id}\r\n` +
      "x-immortal-seq: 0\r\ncontent-length: 2000000\r\n\r\n",
  ));
  const answer = new Uint8Array(1024);
  const read = tcp.read(answer);
  const bound = Promise.withResolvers<never>();
  const timer = setTimeout(() => bound.reject(new Error("no answer in 10 s")), 10_000);
  try {
    const n = await Promise.race([read, bound.promise]);
    assert.match(new TextDecoder().decode(answer.subarray(0, n ?? 0)), /^HTTP\/1\.1 400/);
  } finally {
    clearTimeout(timer);
  }
  await opened.body!.cancel();
});

Deno.test("HTTP links: a broken WebSocket handshake is a 400, not a 500; a POST without a proper number ends its link with a 400", async () => {
  await using app = serveLinks("k");
  const url = `http://127.0.0.1:${app.port}/link`;
  // An upgrade without its Sec-WebSocket-Key: the client's mistake.
  const broken = await fetch(url, { headers: { upgrade: "websocket", connection: "upgrade" } });
  assert.equal(broken.status, 400);
  assert.match(await broken.text(), /not a WebSocket handshake/);
  for (const seq of ["", "0x1", "1e0", "+1", "00", "-1"]) {
    const opened = await fetch(url, { method: "POST", headers: { "x-immortal-link": "open" } });
    const id = opened.headers.get("x-immortal-link")!;
    const post = await fetch(url, {
      method: "POST",
      headers: { "x-immortal-link": id, "x-immortal-seq": seq },
      body: "x",
    });
    assert.equal(post.status, 400, `seq ${JSON.stringify(seq)}`);
    assert.match(await post.text(), /x-immortal-seq must be a number/);
    // The link is over: its downstream ends, and its id is forgotten.
    await opened.body!.cancel();
    const after = await fetch(url, {
      method: "POST",
      headers: { "x-immortal-link": id, "x-immortal-seq": "0" },
      body: "x",
    });
    assert.equal(after.status, 404);
    await after.body?.cancel();
  }
});

Deno.test("HTTP-streaming links: a session's last frame reaches the server: a clean end ends it there too, and an abort's reason arrives", async () => {
  // The default resume timeout (120 s): a lost last frame would leave the server waiting.
  const links = new HttpLinkAcceptor();
  using listener = listen({ acceptor: links });
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req, info) => links.handle(req, info),
  );
  const url = `http://127.0.0.1:${server.addr.port}/`;
  // A clean end: both directions finished, the client's bye goes out as its link closes.
  const client = await connect({ dialer: httpStreamDialer({ url }) });
  const conn = await listener.accept();
  const echo = conn.readable.pipeTo(conn.writable);
  await client.write(new TextEncoder().encode("abc"));
  await client.closeWrite();
  assert.equal(await new Response(client.readable).text(), "abc");
  await echo;
  await client.closed;
  await within(10_000, "the server's session ending cleanly", conn.closed);
  // An abort: the peer hears why, at once.
  const quitter = await connect({ dialer: httpStreamDialer({ url }) });
  const other = await listener.accept();
  quitter.close("user quit");
  await assert.rejects(
    within(10_000, "the server hearing the abort", other.closed),
    (e: unknown) =>
      e instanceof ImmortalError && e.code === "aborted" && /user quit/.test(e.message),
  );
  await quitter.closed.catch(() => {});
});

for (const [name, dialer] of transports) {
  Deno.test(`${name} links: a session on a live link goes on after its listener closed (new links are refused)`, async () => {
    await using app = serveLinks("k");
    const url = `http://127.0.0.1:${app.port}/link`;
    await using client = await connect({ dialer: dialer(url), key: "k", ...FAST });
    await using server = await app.listener.accept();
    app.listener.close();
    // Its link's POSTs (HTTP streaming) are still taken: 1 MiB each way.
    await bothWays(client, server, 1 << 20);
    assert.equal(client.state, "connected");
    const refused = await fetch(url, { method: "POST", headers: { "x-immortal-link": "open" } });
    assert.equal(refused.status, 503);
    await refused.body?.cancel();
  });
}

Deno.test("using: an HttpLinkAcceptor disposed at the end of its scope refuses links (503) and its accept() rejects", async () => {
  let acceptor: HttpLinkAcceptor;
  {
    using links = new HttpLinkAcceptor();
    acceptor = links;
  }
  await assert.rejects(acceptor.accept(), Deno.errors.BadResource);
  const answer = await acceptor.handle(new Request("http://127.0.0.1/link"));
  assert.equal(answer.status, 503);
  await answer.body?.cancel();
});

Deno.test("httpDialer: one WebSocket refusal where HTTP streaming then works is a passing one (a relay whose peer was not back): the next link tries WebSocket again; two in a row stick to HTTP streaming", async () => {
  const links = new HttpLinkAcceptor();
  const listener = listen({ acceptor: links, ...FAST });
  // WebSocket upgrades refused with 404 while `refusing` is above zero (one per refusal).
  let refusing = 1;
  let upgrades = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req, info) => {
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      upgrades++;
      if (refusing > 0) {
        refusing--;
        return new Response("not yet", { status: 404 });
      }
    }
    return links.handle(req, info);
  });
  const proxy = await FaultProxy.start({ targetPort: server.addr.port });
  /** A byte from the client, read at the server: the session carries data again. */
  const roundTrip = async (client: ImmortalConn, accepted: ImmortalConn) => {
    await client.write(new Uint8Array([7]));
    const byte = new Uint8Array(1);
    assert.equal(await accepted.read(byte), 1);
  };
  await withLogs(async (records) => {
    try {
      const dialer = httpDialer({ url: `http://127.0.0.1:${proxy.port}/link` });
      await using client = await connect({ dialer, ...FAST });
      await using accepted = await listener.accept();
      // The first link: WebSocket refused once, then HTTP streaming.
      assert.equal(upgrades, 1);
      // Cut: the next link is a WebSocket again, and is taken.
      proxy.reset();
      await within(30_000, "a round trip after the cut", roundTrip(client, accepted));
      assert.equal(upgrades, 2);
      assert.ok(
        !records.some((r) => /using HTTP streaming/.test(renderRecord(r))),
        records.map(renderRecord).join("\n"),
      );
      // Refused twice in a row: something on the way refuses WebSocket; HTTP streaming sticks.
      refusing = 2;
      proxy.reset();
      await within(30_000, "a round trip after the second cut", roundTrip(client, accepted));
      proxy.reset();
      await within(30_000, "a round trip after the third cut", roundTrip(client, accepted));
      assert.ok(records.some((r) => /using HTTP streaming/.test(renderRecord(r))));
      const upgradesBefore = upgrades;
      proxy.reset();
      await within(30_000, "a round trip after the fourth cut", roundTrip(client, accepted));
      assert.equal(upgrades, upgradesBefore, "a WebSocket tried after it stuck to HTTP streaming");
    } finally {
      await proxy.close();
      listener.close();
      await server.shutdown();
    }
  });
});

const MOD = new URL("../mod.ts", import.meta.url).href;

/**
 * A client in a process of its own that exits (Deno.exit) the moment its
 * session's `closed` resolves, as a program may: it sends 3 bytes, half
 * closes, reads to the end, waits for `closed`, says "closed" and exits.
 * Run in-process, a `closed` that resolved before the bye went out could
 * still see it out (the event loop went on); an exit cuts it.
 */
const EXITS_ON_CLOSED = `
  import { connect, httpStreamDialer, webSocketDialer } from "${MOD}";
  const [transport, url] = Deno.args;
  const dialer = transport === "WebSocket" ? webSocketDialer({ url }) : httpStreamDialer({ url });
  const conn = await connect({
    dialer,
    key: "k",
    backoff: { initial: 5, max: 50 },
  });
  await conn.write(new Uint8Array([1, 2, 3]));
  await conn.closeWrite();
  const buffer = new Uint8Array(1024);
  while (await conn.read(buffer) !== null);
  await conn.closed;
  console.log("closed");
  Deno.exit(0);
`;

for (const [name, dialer] of transports) {
  Deno.test(`${name} links: a client's closed resolves once the server has its bye (a program may exit then), not before it went out`, async () => {
    await using app = serveLinks("k");
    const url = `http://127.0.0.1:${app.port}/link`;
    const client = await connect({ dialer: dialer(url), key: "k", ...FAST });
    const server = await app.listener.accept();
    server.closed.catch(() => {});
    await client.write(new Uint8Array([1, 2, 3]));
    await client.closeWrite();
    assert.equal((await receiveAll(server)).bytes, 3);
    await server.closeWrite();
    assert.equal((await receiveAll(client)).bytes, 0);
    await within(30_000, "the client's end", client.closed);
    // What a program that exits now leaves behind: nothing; the server forgot the session on its bye.
    assert.equal(app.listener.sessionCount, 0, "the server still waited for the client's bye");

    // The same client in a process of its own that exits on `closed`: its
    // bye must not be cut by the exit (an HTTP link's last POST was).
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", EXITS_ON_CLOSED, name, url],
      cwd: new URL("..", import.meta.url).pathname,
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const said = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    try {
      const other = await within(30_000, "the child's session", app.listener.accept());
      // How the server's session ends: on the client's bye (closed cleanly),
      // or its link lost first (the client gone before its bye went out: the
      // server then keeps the session for its resume, and says so at once).
      const ended = new Promise<string>((resolve) => {
        other.addEventListener("reconnecting", (e) => resolve(`link lost: ${e.reason}`));
        other.addEventListener("closed", (e) => resolve(e.error?.message ?? "closed"));
      });
      other.closed.catch(() => {});
      assert.equal((await receiveAll(other)).bytes, 3);
      await other.closeWrite();
      assert.equal(await within(30_000, "the server's session ending", ended), "closed");
      assert.equal((await within(30_000, "the child's exit", child.status)).code, 0);
      assert.match((await said.read()).value ?? "", /^closed$/m);
      assert.equal(app.listener.sessionCount, 0, "the server still waited for the child's bye");
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited already.
      }
      await child.status;
      await said.cancel();
    }
  });
}

Deno.test("HttpLinkAcceptor behind a real nginx: with trustedProxies, a session's source is the client nginx names in X-Forwarded-For (the listener's limits count clients), not nginx; a header the client wrote itself is not believed", async () => {
  const serve = async (trustedProxies: string[]) => {
    const links = new HttpLinkAcceptor({ trustedProxies });
    const listener = listen({ acceptor: links, key: "k", ...FAST });
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (req, info) => links.handle(req, info),
    );
    // nginx reaches the app from 127.0.0.5, and names its client (127.0.0.1).
    const nginx = await startNginx(server.addr.port, {
      websocket: true,
      forwardedFor: "127.0.0.5",
    });
    const dialer = httpDialer({
      url: `http://127.0.0.1:${nginx.port}/`,
      headers: { "x-forwarded-for": "203.0.113.9" }, // a client's own claim, before nginx's
    });
    await using client = await connect({ dialer, key: "k", ...FAST });
    await using accepted = await listener.accept();
    const source = (accepted.remoteAddr as Deno.NetAddr).hostname;
    await client.write(new Uint8Array([1]));
    assert.equal(await accepted.read(new Uint8Array(1)), 1);
    listener.close();
    await nginx[Symbol.asyncDispose]();
    await server.shutdown();
    return source;
  };
  assert.equal(await serve(["127.0.0.5"]), "127.0.0.1");
  assert.equal(await serve([]), "127.0.0.5");
  assert.throws(() => new HttpLinkAcceptor({ trustedProxies: ["nginx.local"] }), TypeError);
});

Deno.test("httpDialer to an https: server whose certificate is not trusted: a tls error that says to give the CA, over either transport and auto, not 'unreachable: fetch failed'", async () => {
  const certs = await makeTestCerts();
  const links = new HttpLinkAcceptor();
  const listener = listen({ acceptor: links });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: certs.cert, key: certs.key, onListen() {} },
    (req, info) => links.handle(req, info),
  );
  try {
    for (const transport of ["auto", "websocket", "http"] as const) {
      const dialer = httpDialer({ url: `https://127.0.0.1:${server.addr.port}/`, transport });
      const error = await connect({ dialer }).then(() => null, (e) => e);
      assert.ok(error instanceof ImmortalError, `${transport}: ${error}`);
      assert.equal(error.code, "tls", `${transport}: ${error.message}`);
      assert.match(error.message, /not trusted.*give the CA/, transport);
    }
  } finally {
    listener.close();
    await server.shutdown();
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("HTTP streaming links: a client's closed waits for its bye at most the flush time, even when the server stops answering its POSTs", async () => {
  const links = new HttpLinkAcceptor();
  // A server slow to notice a silent link: only the client's own bound ends its wait.
  const listener = listen({ acceptor: links, ...FAST, deadLinkTimeout: 60_000 });
  // Once the client's end of data is in, its upstream POSTs (its last ack, its bye) are never answered.
  let stall = false;
  const held: (() => void)[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req, info) => {
    const upstream = req.method === "POST" && req.headers.has("x-immortal-seq");
    if (stall && upstream) {
      return new Promise<Response>((resolve) =>
        held.push(() => resolve(new Response(null, { status: 503 })))
      );
    }
    return links.handle(req, info);
  });
  try {
    const dialer = httpStreamDialer({ url: `http://127.0.0.1:${server.addr.port}/` });
    const client = await connect({ dialer, ...FAST });
    const accepted = await listener.accept();
    accepted.closed.catch(() => {});
    await client.closeWrite();
    assert.equal((await receiveAll(accepted)).bytes, 0);
    // The client's FIN is in: what it posts from now on (its ack of ours, its bye) hangs.
    stall = true;
    await accepted.closeWrite();
    assert.equal((await receiveAll(client)).bytes, 0);
    // Without a bound, this waited for ever: the bye's POST is never answered.
    await within(10_000, "the client's end", client.closed);
  } finally {
    for (const answer of held) answer();
    listener.close();
    await server.shutdown();
  }
});

Deno.test("HTTP links to a URL with no link endpoint (a page, a 404, a 405): the status named and what it may mean, still retried (a proxy, a login page may answer so for a while)", async () => {
  const statuses = [200, 404, 405];
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) => {
      const status = Number(new URL(req.url).pathname.slice(1));
      return new Response(status === 200 ? "<html>a page</html>" : null, { status });
    },
  );
  const dialers: [string, (url: string) => Dialer][] = [
    ...transports,
    ["auto", (url) => httpDialer({ url })],
  ];
  for (const [name, dialer] of dialers) {
    for (const status of statuses) {
      const url = `http://127.0.0.1:${server.addr.port}/${status}`;
      await assert.rejects(
        connect({ dialer: dialer(url), key: "k" }),
        (error) => {
          assert.ok(error instanceof ImmortalError, `${name} ${status}: ${error}`);
          assert.equal(error.code, "unreachable", `${name} ${status}: ${error.message}`);
          assert.match(
            error.message,
            new RegExp(
              `answered ${status}\\b.*: no immortal link endpoint there \\(is the URL's path right\\? ` +
                "a proxy or a Wi-Fi login page may answer so too\\)$",
            ),
          );
          return true;
        },
      );
    }
  }
});
