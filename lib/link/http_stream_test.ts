// Upstream POSTs in flight together: the server takes their bytes in the
// order of their numbers, whatever order they arrive in, and our client
// really sends several at once.

import assert from "node:assert/strict";
import { HttpLinkEndpoint, linkRequestKind } from "./_http_link_endpoint.ts";
import { collectBytes, MAX_REFUSAL_BYTES } from "../_util.ts";
import {
  httpStreamDialer,
  LinkRefused,
  MAX_POST_BYTES,
  MAX_POSTS_IN_FLIGHT,
  ServerHttpStreamLink,
  UPSTREAM_HEADER,
} from "./http_stream.ts";

/** Reads exactly `n` bytes from `link`. */
async function readExactly(link: { read(b: Uint8Array): Promise<number | null> }, n: number) {
  const out = new Uint8Array(n);
  for (let got = 0; got < n;) {
    const read = await link.read(out.subarray(got));
    if (read === null) throw new Error(`ended after ${got} of ${n} bytes`);
    got += read;
  }
  return out;
}

Deno.test("HTTP-streaming server link: POSTs in flight are taken in their numbers' order; a number taken is a repeat, one too far ahead ends the link", async () => {
  const link = new ServerHttpStreamLink(undefined, () => {});
  assert.equal(link.response.headers.get(UPSTREAM_HEADER), String(MAX_POSTS_IN_FLIGHT));
  // 2 and 1 arrive before 0: each waits for its turn.
  const later = [link.post(2, new Uint8Array([3])), link.post(1, new Uint8Array([2]))];
  const first = link.post(0, new Uint8Array([1]));
  assert.deepEqual([...(await readExactly(link, 3))], [1, 2, 3]);
  for (const answer of await Promise.all([first, ...later])) assert.equal(answer.status, 204);
  // A number already taken again (a POST sent again, its first answer lost): answered, dropped.
  assert.equal((await link.post(1, new Uint8Array([9]))).status, 204);
  assert.equal((await link.post(3, new Uint8Array([4]))).status, 204);
  assert.deepEqual([...(await readExactly(link, 1))], [4], "nothing of the repeat");
  link.close();
  await link.response.body?.cancel();

  const ahead = new ServerHttpStreamLink(undefined, () => {});
  assert.equal((await ahead.post(MAX_POSTS_IN_FLIGHT, new Uint8Array([1]))).status, 409);
  await ahead.response.body?.cancel();
});

Deno.test("HTTP-streaming server link: a repeat of a number, waiting or just taken, is answered and adds no byte; the link goes on", async () => {
  // The repeat comes right behind the POST that lets the waiting one in.
  const link = new ServerHttpStreamLink(undefined, () => {});
  const early = link.post(1, new Uint8Array([1]));
  const due = link.post(0, new Uint8Array([0]));
  const repeat = link.post(1, new Uint8Array([1]));
  assert.equal((await repeat).status, 204);
  assert.deepEqual([...(await readExactly(link, 2))], [0, 1], "no byte of the repeat");
  await Promise.all([early, due]);
  assert.equal((await link.post(2, new Uint8Array([2]))).status, 204);
  assert.deepEqual([...(await readExactly(link, 1))], [2], "the link goes on");
  link.close();
  await link.response.body?.cancel();

  // A second copy of a POST still waiting for its turn.
  const waiting = new ServerHttpStreamLink(undefined, () => {});
  const first = waiting.post(2, new Uint8Array([2]));
  const again = waiting.post(2, new Uint8Array([2]));
  assert.equal(waiting.queuedBytes, 1, "held once");
  waiting.close();
  assert.equal((await first).status, 410, "the waiting one is answered when the link ends");
  assert.equal((await again).status, 410, "and its repeat, as it is");
  await waiting.response.body?.cancel();
});

Deno.test("HTTP-streaming server link: its end answers the POSTs waiting for their turn (410), and counts their bytes until then", async () => {
  const link = new ServerHttpStreamLink(undefined, () => {});
  const waiting = link.post(3, new Uint8Array(1000));
  assert.equal(link.queuedBytes, 1000, "held bytes include POSTs waiting for their turn");
  link.close();
  assert.equal((await waiting).status, 410);
  await link.response.body?.cancel();
});

Deno.test("HTTP-streaming links: the client has several POSTs in flight at once, and the bytes arrive in order", async () => {
  const endpoint = new HttpLinkEndpoint();
  const accepted = Promise.withResolvers<{ read(b: Uint8Array): Promise<number | null> }>();
  // The first upstream POST is answered only once a second one is in: a
  // client that sends one at a time never gets past it (the test's bound).
  const second = Promise.withResolvers<void>();
  let upstreams = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    if (linkRequestKind(req) === "upstream") {
      if (++upstreams === 2) second.resolve();
      const answer = endpoint.upstream(req);
      if (upstreams === 1) await second.promise;
      return await answer;
    }
    const opened = endpoint.open(req, undefined);
    if (typeof opened === "string") return new Response(opened, { status: 400 });
    accepted.resolve(opened.link);
    return opened.response;
  });
  const signal = AbortSignal.timeout(10_000);
  const client = await httpStreamDialer({ url: `http://127.0.0.1:${server.addr.port}/` })(signal);
  try {
    const link = await accepted.promise;
    const size = 3 << 20;
    const data = Uint8Array.from({ length: size }, (_, i) => (i * 31) % 251);
    const writing = client.write(data);
    const got = await Promise.race([
      readExactly(link, size),
      new Promise<never>((_, reject) =>
        signal.addEventListener("abort", () => reject(new Error("one POST at a time")))
      ),
    ]);
    await writing;
    assert.ok(got.every((byte, i) => byte === data[i]), "the bytes, in order");
    assert.ok(upstreams >= 3, `${upstreams} POSTs`);
  } finally {
    second.resolve(); // a POST held for a second one that never came lets the server stop
    client.close();
    endpoint.close();
    await server.shutdown();
  }
});

Deno.test("HTTP-streaming links: a POST whose connection dies before its answer (after the server took it) goes once more; the server takes it as a repeat, and the link lives on", async () => {
  const endpoint = new HttpLinkEndpoint();
  const accepted = Promise.withResolvers<{ read(b: Uint8Array): Promise<number | null> }>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (linkRequestKind(req) === "upstream") return endpoint.upstream(req);
    const opened = endpoint.open(req, undefined);
    if (typeof opened === "string") return new Response(opened, { status: 400 });
    accepted.resolve(opened.link);
    return opened.response;
  });
  // Between client and server, a proxy that passes the first upstream POST on, and
  // drops the connection instead of passing the answer back (what a proxy
  // closing a kept-alive connection under a request does to the client).
  const front = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let killed = 0;
  const relaying = (async () => {
    for await (const near of front) {
      (async () => {
        const far = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
        let first = true;
        let post = false;
        const up = (async () => {
          const buffer = new Uint8Array(65536);
          for (let n; (n = await near.read(buffer)) !== null;) {
            // An upstream POST (it has a number), not the one that opens the link.
            if (first) {
              post = /x-immortal-seq/i.test(new TextDecoder().decode(buffer.subarray(0, n)));
            }
            first = false;
            await far.write(buffer.subarray(0, n));
          }
        })();
        const buffer = new Uint8Array(65536);
        for (let n; (n = await far.read(buffer)) !== null;) {
          if (post && killed === 0) {
            killed++;
            break; // the answer never reaches the client
          }
          await near.write(buffer.subarray(0, n));
        }
        near.close();
        far.close();
        await up.catch(() => {});
      })().catch(() => {});
    }
  })();
  const client = await httpStreamDialer({ url: `http://127.0.0.1:${front.addr.port}/` })(
    AbortSignal.timeout(10_000),
  );
  try {
    const link = await accepted.promise;
    for (let i = 1; i <= 3; i++) {
      await client.write(new Uint8Array([i]));
      assert.deepEqual([...(await readExactly(link, 1))], [i], `byte ${i}, once`);
    }
    assert.equal(killed, 1, "a POST's connection died under it");
  } finally {
    client.close();
    endpoint.close();
    front.close();
    await server.shutdown();
    await relaying;
  }
});

Deno.test("HTTP-streaming server link: a repeat of a number still waiting for its turn is answered only once the original is taken (its 204 lets the client send further on)", async () => {
  const link = new ServerHttpStreamLink(undefined, () => {});
  const early = link.post(1, new Uint8Array([1]));
  let answered = false;
  const repeat = link.post(1, new Uint8Array([1])).then((r) => {
    answered = true;
    return r;
  });
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(answered, false, "not before its original is taken");
  assert.equal((await link.post(0, new Uint8Array([0]))).status, 204);
  assert.equal((await repeat).status, 204);
  assert.equal((await early).status, 204);
  // The client's window moved on by the repeat's answer: 2..5 are all within it now.
  const later = [2, 3, 4, 5].map((seq) => link.post(seq, new Uint8Array([seq])));
  assert.deepEqual([...(await readExactly(link, 6))], [0, 1, 2, 3, 4, 5]);
  for (const answer of await Promise.all(later)) assert.equal(answer.status, 204);
  link.close();
  await link.response.body?.cancel();
});

Deno.test("HTTP-streaming endpoint: a POST whose body was cut on the way takes no number and ends nothing (its repeat is taken); one too large ends the link", async () => {
  const endpoint = new HttpLinkEndpoint();
  const opened = endpoint.open(
    new Request("http://x/", { method: "POST", headers: { "x-immortal-link": "open" } }),
    undefined,
  );
  if (typeof opened === "string") throw new Error(opened);
  const link = opened.link as ServerHttpStreamLink;
  const post = (seq: number, body: BodyInit) =>
    endpoint.upstream(
      new Request("http://x/", {
        method: "POST",
        headers: { "x-immortal-link": link.id, "x-immortal-seq": String(seq) },
        body,
      }),
    );
  const cut = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new Uint8Array([9]));
      controller.error(new Error("connection reset"));
    },
  });
  assert.equal((await post(0, cut)).status, 400);
  assert.equal((await post(0, new Uint8Array([7]))).status, 204, "the repeat is taken");
  assert.deepEqual([...(await readExactly(link, 1))], [7]);
  assert.equal((await post(1, new Uint8Array(MAX_POST_BYTES + 1))).status, 400);
  assert.equal(await link.read(new Uint8Array(1)), null, "the link ended");
  endpoint.close();
  await opened.response.body?.cancel();
});

Deno.test("HTTP-streaming server link: a POST is judged by its number before its body is read; one whose number another POST is reading waits for it, then is a repeat; closing ends the waits and the reads", async () => {
  const fresh = new ServerHttpStreamLink(undefined, () => {});
  assert.equal(await fresh.admit(0), "read");
  // A second POST numbered 0 (a stranger's copies, or a client's retry) waits.
  let second: string | undefined;
  const waiting = fresh.admit(0).then((verdict) => second = verdict);
  const third = fresh.admit(0);
  await Promise.resolve();
  assert.equal(second, undefined, "read twice at once");
  // The first is posted: its number is taken, the others are repeats.
  const posted = fresh.post(0, new Uint8Array([7]));
  fresh.release(0);
  await waiting;
  assert.equal(second, "repeat");
  assert.equal(await third, "repeat");
  assert.equal((await posted).status, 204);
  // A body cut on the way gives its number back: the retry reads.
  assert.equal(await fresh.admit(1), "read");
  const retry = fresh.admit(1);
  fresh.release(1);
  assert.equal(await retry, "read");
  // Past the POSTs in flight: out of sequence, and the link ends.
  assert.equal(await fresh.admit(1 + MAX_POSTS_IN_FLIGHT), "out-of-sequence");
  assert.ok(fresh.signal.aborted, "the reads of a closed link go on");
  assert.equal(await fresh.admit(2), "closed");
  await fresh.response.body?.cancel().catch(() => {});
});

Deno.test("HTTP-streaming server link: closing wakes a POST waiting on another's number, and stops a body read that stalls", async () => {
  const link = new ServerHttpStreamLink(undefined, () => {});
  assert.equal(await link.admit(0), "read");
  const waiting = link.admit(0);
  // A body whose sender stalls: a piece, then nothing.
  let cancelled = false;
  const stalled = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new Uint8Array(10));
    },
    cancel() {
      cancelled = true;
    },
  });
  const reading = collectBytes(stalled, {
    max: 1 << 20,
    tooLarge: () => new RangeError("too large"),
    signal: link.signal,
  }).then(() => "read", (error: Error) => error.message);
  link.close();
  assert.equal(await waiting, "closed");
  assert.match(await reading, /the link is closed/);
  assert.ok(cancelled, "the stalled body was left open");
  await link.response.body?.cancel().catch(() => {});
});

Deno.test("HTTP-streaming dial: a refusal with an endless body is read only as far as a reason takes, and not past the dial's end", async () => {
  // A body that never ends; `pulled` counts what the client took, and the
  // server learns of the client's cancel when it stops reading.
  const piece = new Uint8Array(64 * 1024).fill(0x41);
  // Bounds the test only if the reading never stops (the bug): then the
  // body ends, so that the server can shut down and the test fail.
  const guard = AbortSignal.timeout(20_000);
  // `stall`: one small piece, then nothing more until cancelled.
  let stall = false;
  const stream = (onPulled: (total: number) => void, cancelled: () => void) => {
    let pulled = 0;
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (guard.aborted) return controller.close();
        if (stall && pulled > 0) {
          await new Promise((resolve) => guard.addEventListener("abort", resolve));
          return controller.close();
        }
        const sent = stall ? piece.subarray(0, 1024) : piece;
        controller.enqueue(sent);
        onPulled(pulled += sent.length);
      },
      cancel: cancelled,
    }, { highWaterMark: 0 });
  };
  let onPulled = (_total: number) => {};
  let cancelled = Promise.withResolvers<void>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () =>
      new Response(stream((total) => onPulled(total), () => cancelled.resolve()), {
        status: 403,
      }),
  );
  const url = `http://127.0.0.1:${server.addr.port}/`;
  const orHang = <T>(promise: Promise<T>, what: string) =>
    Promise.race([
      promise,
      new Promise<never>((_, reject) =>
        guard.addEventListener("abort", () => reject(new Error(`${what}: never`)))
      ),
    ]);
  try {
    // No deadline met: a reason's worth is read, the rest cancelled.
    const refused = await orHang(
      httpStreamDialer({ url })(new AbortController().signal).then(
        () => assert.fail("dialed"),
        (error) => error,
      ),
      "the refusal",
    );
    assert.ok(refused instanceof LinkRefused, String(refused));
    assert.equal(refused.status, 403);
    assert.equal(refused.body.length, MAX_REFUSAL_BYTES);
    await orHang(cancelled.promise, "the body's cancel");

    // A body that stalls: the dial given up (as its first piece is sent: by an
    // event, not a timer) stops the read, whether it had begun or not.
    stall = true;
    cancelled = Promise.withResolvers<void>();
    const dial = new AbortController();
    onPulled = () => dial.abort(new Error("given up"));
    const slow = await orHang(
      httpStreamDialer({ url })(dial.signal).then(() => assert.fail("dialed"), (error) => error),
      "the abandoned dial",
    );
    await orHang(cancelled.promise, "the body's cancel after the dial gave up");
    assert.equal((slow as Error).message, "given up");
  } finally {
    await server.shutdown();
  }
});

Deno.test("HTTP-streaming links: a request that opens a link with a body (ours sends none) is refused 400, its body not taken, no link opened", async () => {
  const endpoint = new HttpLinkEndpoint();
  let opened = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const result = endpoint.open(req, undefined);
    if (typeof result === "string") return new Response(result, { status: 400 });
    opened++;
    return result.response;
  });
  try {
    // A chunked body that goes on (Deno.serve would take it for as long as it came).
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    try {
      const head = "POST / HTTP/1.1\r\nhost: x\r\nx-immortal-link: open\r\n" +
        "transfer-encoding: chunked\r\n\r\n10000\r\n";
      await conn.write(new TextEncoder().encode(head));
      await conn.write(new Uint8Array(4096));
      // The answer's head and body, however the reads split them (bounded).
      const answer = new Uint8Array(4096);
      let text = "";
      const done = () => text.includes("no body") || /^HTTP\/1\.1 (?!400)/.test(text);
      for (let reads = 0; reads < 100 && !done(); reads++) {
        const n = await conn.read(answer);
        if (n === null) break;
        text += new TextDecoder().decode(answer.subarray(0, n));
      }
      assert.match(text, /^HTTP\/1\.1 400 /);
      assert.match(text, /opens an HTTP-streaming link has no body/);
    } finally {
      conn.close();
    }
    assert.equal(opened, 0);
  } finally {
    endpoint.close();
    await server.shutdown();
  }
});

Deno.test("HTTP-streaming links: a body that came without a header saying so (HTTP/2 needs none) ends the link it opened", async () => {
  const endpoint = new HttpLinkEndpoint();
  try {
    const req = new Request("http://127.0.0.1/", {
      method: "POST",
      headers: { "x-immortal-link": "open" },
      body: new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new Uint8Array([1, 2, 3]));
        },
      }),
    });
    assert.equal(req.headers.get("content-length"), null);
    const opened = endpoint.open(req, undefined);
    assert.ok(typeof opened !== "string", String(opened));
    // Bounded: the link would otherwise wait for upstream POSTs for ever.
    const late = new Promise<string>((resolve) => {
      const timer = setTimeout(() => resolve("still open"), 10_000);
      opened.link.read(new Uint8Array(8)).finally(() => clearTimeout(timer)).then(
        () => resolve("ended"),
        () => resolve("ended"),
      );
    });
    assert.equal(await late, "ended");
    await opened.response.body?.cancel();
  } finally {
    endpoint.close();
  }
});
