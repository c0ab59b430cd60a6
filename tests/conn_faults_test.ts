import assert from "node:assert/strict";
import {
  type ClosedEvent,
  connect,
  ImmortalError,
  listen,
  type ReconnectingEvent,
  type ResumedEvent,
} from "../mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import {
  eventsLogged,
  nextEvent,
  patternHash,
  receiveAll,
  renderRecord,
  sendPattern,
  watchTimerLateness,
  within,
  withLogs,
} from "./_helpers.ts";

const FAST_BACKOFF = { initial: 5, max: 50 };

/** The host of a TCP address (a link's address is any transport's, so check it is TCP). */
function hostOf(addr: Deno.Addr | undefined): string {
  assert.ok(addr?.transport === "tcp", `not a TCP address: ${JSON.stringify(addr)}`);
  return addr.hostname;
}

async function setup(
  options: { heartbeatInterval?: number; deadLinkTimeout?: number; resumeTimeout?: number } = {},
) {
  const listener = listen({ hostname: "127.0.0.1", port: 0, ...options });
  const proxy = await FaultProxy.start({ targetPort: listener.addr.port });
  const client = await connect({ port: proxy.port, backoff: FAST_BACKOFF, ...options });
  const server = await listener.accept();
  return {
    listener,
    proxy,
    client,
    server,
    async [Symbol.asyncDispose]() {
      client.close();
      server.close();
      await Promise.allSettled([client.closed, server.closed]);
      listener.close();
      await proxy.close();
    },
  };
}

Deno.test("256 MiB each way at once, link reset (RST) every 10 MiB each way, 24 times: both SHA-256 match", async () => {
  await using t = await setup();
  const SIZE = 256 << 20;
  // A cut is due each time another 10 MiB have been forwarded one way; it waits
  // until the client is connected, so it never lands in a resume handshake and
  // each one costs the client a resume. The 12th each way is due at 120 MiB (plus
  // at most a window deferred), well within the 256 MiB each way must carry.
  const connected = () => t.client.state === "connected";
  using up = t.proxy.cutEvery({ bytes: 10 << 20, max: 12, direction: "up", when: connected });
  using down = t.proxy.cutEvery({ bytes: 10 << 20, max: 12, direction: "down", when: connected });
  const [upSent, downSent, upGot, downGot] = await within(
    240_000,
    "bidirectional transfer",
    Promise.all([
      sendPattern(t.client, 1, SIZE),
      sendPattern(t.server, 2, SIZE),
      receiveAll(t.server),
      receiveAll(t.client),
    ]),
  );
  // Stopped as the transfer ends: every cut counted landed during it.
  assert.equal(up.stop(), 12, `cuts upstream at ${up.at}`);
  assert.equal(down.stop(), 12, `cuts downstream at ${down.at}`);
  assert.equal(upGot.bytes, SIZE);
  assert.equal(downGot.bytes, SIZE);
  assert.equal(upGot.sha256, upSent);
  assert.equal(downGot.sha256, downSent);
  assert.ok(t.proxy.resets >= 24, `only ${t.proxy.resets} resets happened`);
  assert.ok(t.client.stats.reconnects >= 24, `client resumed ${t.client.stats.reconnects} times`);
  assert.ok(
    t.client.stats.replayedBytes + t.server.stats.replayedBytes > 0,
    "something was replayed",
  );
  await Promise.all([t.client.closed, t.server.closed]);
});

Deno.test("a black-holed link is detected by heartbeats within the dead-link time and replaced; data intact", async () => {
  const heartbeatInterval = 100;
  const deadLinkTimeout = 600;
  await using t = await setup({ heartbeatInterval, deadLinkTimeout });
  const first = new Uint8Array(1 << 20).fill(7);
  await t.client.write(first);
  const buf = new Uint8Array(1 << 20);
  let got = 0;
  while (got < first.length) got += (await t.server.read(buf.subarray(got)))!;

  const lost = nextEvent<ReconnectingEvent>(t.client, "reconnecting");
  const resumed = nextEvent<ResumedEvent>(t.client, "resumed");
  // Detection is driven by the session's timer: on a loaded machine it runs late.
  using lateness = watchTimerLateness();
  const holedAt = performance.now();
  assert.equal(t.proxy.blackhole(), 1);
  // Written into the black hole: must arrive after the resume.
  const second = new Uint8Array(300_000).fill(9);
  await t.client.write(second);
  const lostEvent = await lost;
  const detectedAfter = performance.now() - holedAt;
  const lateAtDetection = lateness.max;
  await resumed;
  const resumedAfter = performance.now() - holedAt;
  const late = `timers ran up to ${lateAtDetection.toFixed(0)} ms late before, ${
    lateness.max.toFixed(0)
  } ms by the resume`;
  assert.match(lostEvent.reason!, /nothing received/);
  // Detection needs the full dead-link time, plus at most one check period (deadLink / 4 ... heartbeat / 4).
  assert.ok(
    detectedAfter >= deadLinkTimeout * 0.95,
    `detected after ${detectedAfter} ms, before the dead-link time`,
  );
  // (Plus as late as timers ran meanwhile: 0 on an idle machine.)
  assert.ok(
    detectedAfter <= deadLinkTimeout + heartbeatInterval / 4 + 150 + lateAtDetection,
    `detected after ${detectedAfter} ms; ${late}`,
  );
  // The first reconnect attempt is immediate; allow one backoff step plus handshake time.
  assert.ok(
    resumedAfter <= detectedAfter + FAST_BACKOFF.max + 300 + lateness.max,
    `resumed after ${resumedAfter} ms; ${late}`,
  );

  got = 0;
  const rest = new Uint8Array(second.length);
  while (got < second.length) got += (await t.server.read(rest.subarray(got)))!;
  assert.deepEqual(rest, second);
  assert.equal(t.server.stats.bytesRead, first.length + second.length);
});

Deno.test("the client's address changes (reconnects from 127.0.0.2) and the session resumes", async () => {
  await using t = await setup();
  assert.equal(hostOf(t.server.remoteAddr), "127.0.0.1");
  const resumed = nextEvent(t.server, "resumed");
  // Half-way through the upload, the client moves: its link is cut and it comes back from 127.0.0.2.
  using move = t.proxy.cutEvery({
    bytes: 2 << 20,
    max: 1,
    fault: () => {
      t.proxy.upstreamLocalAddress = "127.0.0.2";
      return t.proxy.reset();
    },
  });
  const sending = sendPattern(t.client, 5, 4 << 20);
  await resumed;
  assert.equal(move.stop(), 1, "one link cut");
  assert.equal(hostOf(t.server.remoteAddr), "127.0.0.2");
  const got = await receiveAll(t.server);
  assert.equal(got.sha256, await sending);
  assert.equal(got.sha256, patternHash(5, 4 << 20));
});

Deno.test("resume timeout: both streams error naming the timeout; the server reaps the session", async () => {
  const resumeTimeout = 800;
  await using t = await setup({ resumeTimeout });
  const serverClosed = nextEvent<ClosedEvent>(t.server, "closed", 5000);
  t.proxy.refuseNew(true);
  const cutAt = performance.now();
  assert.equal(t.proxy.reset(), 1, "one link cut");
  // Reads wait through the outage; then they fail with the reason.
  const reader = t.client.readable.getReader();
  const writer = t.client.writable.getWriter();
  await assert.rejects(reader.read(), /resume timeout of 800 ms/);
  const failedAfter = performance.now() - cutAt;
  assert.ok(failedAfter >= resumeTimeout * 0.95, `gave up after ${failedAfter} ms`);
  await assert.rejects(writer.write(new Uint8Array(1)), /resume timeout of 800 ms/);
  await assert.rejects(
    t.client.closed,
    (e: unknown) => e instanceof ImmortalError && e.code === "timeout",
  );
  // The server side of the session is dropped too, with the same reason.
  const event = await serverClosed;
  assert.match(String(event.error?.message), /did not resume within the resume timeout of 800 ms/);
  await assert.rejects(
    t.server.closed,
    (e: unknown) => e instanceof ImmortalError && e.code === "timeout",
  );
  assert.equal(t.listener.sessionCount, 0);
  reader.releaseLock();
  writer.releaseLock();
});

Deno.test("a client that resumes on a new link while the server still holds the old one: the server says so as info (the client warned of the fault), not as a lost link of its own", async () => {
  await withLogs(async (records) => {
    // The server would wait a minute to notice: the client's resume comes first, always.
    const listener = listen({ hostname: "127.0.0.1", port: 0, deadLinkTimeout: 60_000 });
    const proxy = await FaultProxy.start({ targetPort: listener.addr.port });
    const client = await connect({
      port: proxy.port,
      backoff: FAST_BACKOFF,
      heartbeatInterval: 200,
      deadLinkTimeout: 1000,
    });
    const server = await listener.accept();
    try {
      const resumed = nextEvent<ResumedEvent>(client, "resumed");
      const serverResumed = nextEvent<ResumedEvent>(server, "resumed");
      proxy.blackhole();
      await within(30_000, "the resume", Promise.all([resumed, serverResumed]));
      const swap = records.find((r) =>
        renderRecord(r).endsWith("lost its link: the client resumed on a new link")
      );
      assert.equal(swap?.level, "info", records.map(renderRecord).join("\n"));
      // The client, which saw the fault, warns of it.
      assert.ok(
        records.some((r) =>
          r.level === "warning" && /lost its link: nothing received/.test(renderRecord(r))
        ),
      );
    } finally {
      client.close();
      server.close();
      listener.close();
      await proxy.close();
      await Promise.allSettled([client.closed, server.closed]);
    }
  });
});

Deno.test("a link that breaks again and again is news once per interval at each end, with counts: every loss and resume accounted for, not two lines each", async () => {
  const CUTS = 8;
  const started = performance.now();
  let ids: string[] = [];
  const records = await withLogs(async (records) => {
    await using s = await setup();
    ids = [s.client.sessionId, s.server.sessionId];
    for (let i = 0; i < CUTS; i++) {
      const resumed = Promise.all([
        nextEvent<ResumedEvent>(s.client, "resumed"),
        nextEvent<ResumedEvent>(s.server, "resumed"),
      ]);
      s.proxy.reset();
      await within(30_000, `resume ${i + 1}`, resumed);
    }
    return records; // read once the sessions closed: their counts are said then
  });
  const lines = records.map(renderRecord);
  // Each session's lines: one per kind per 10 s said at once, the rest counted.
  const resumed = eventsLogged(lines, /resumed after \d+ ms via/);
  // Two sessions' ends (client and server) resumed CUTS times each.
  assert.equal(resumed.total, 2 * CUTS, lines.join("\n"));
  // Said at once: one per kind per end per 10 s (however slow this machine).
  const intervals = 1 + Math.floor((performance.now() - started) / 10_000);
  assert.ok(resumed.said <= 2 * intervals, lines.join("\n"));
  // Every loss said or counted (the server's may be the client's resume, at info).
  const lost = eventsLogged(lines, /lost its link/);
  assert.ok(lost.total >= 2 * CUTS, lines.join("\n"));
  assert.ok(lost.said <= 3 * intervals, lines.join("\n")); // the server's at two levels
  // Lines said and summaries alike keep their properties for structured sinks.
  const news = records.filter((r) => /lost its link|resumed after/.test(renderRecord(r)));
  assert.ok(news.length > 0);
  for (const record of news) {
    assert.ok(ids.includes(record.properties.id as string), renderRecord(record));
  }
});
