// The browser half of relay_browser_gap_test.ts, in its own process (see
// _browser_run.ts). Usage: _browser_gap.ts RELAY_URL; the relay keeps 12
// messages of history and a long grace. The page reaches the relay through a
// fault proxy, which cuts its link when the page shows a message (an event,
// not a timer) and keeps it down while a Deno node goes on sending. Once over
// WebSocket, once over HTTP streaming (behind tinyproxy, in front of the
// fault proxy).
import assert from "node:assert/strict";
import type { Browser, Page } from "playwright-core";
import { RelayNode } from "../mod.ts";
import {
  assertTimeStamps,
  connected,
  join,
  launch,
  logLines,
  noted,
  received,
  screenshot,
  shows,
  status,
  WAIT,
} from "./_browser_helpers.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { startTinyproxy } from "./_proxies.ts";
import { recordEvents } from "./_relay.ts";

const [relayUrl] = Deno.args;
const relayPort = Number(new URL(relayUrl).port);
/**
 * How the page may come back. Each reconnect tries WebSocket, then HTTP
 * streaming: which one the fault proxy lets through first depends on when it
 * opens, so over plain WebSocket either may carry the page back (both are
 * right); behind tinyproxy only HTTP streaming can.
 */
const BACK_VIA = { websocket: "(?:WebSocket|HTTP streaming)", http: "HTTP streaming" };
const BACK_ON = { websocket: undefined, http: "http" } as const;
const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => `m${from + i}`);

/** Cuts every link through `proxy` and keeps new ones out until the page shows it is disconnected. */
async function cut(proxy: FaultProxy, page: Page, gaps: number): Promise<void> {
  proxy.refuseNew(true);
  assert.ok(proxy.reset() > 0, "no link to cut");
  await page.locator("#log li.gap .what", { hasText: /^disconnected/ }).nth(gaps - 1).waitFor(WAIT);
  await page.waitForSelector(`#state:not([data-state="connected"])`, WAIT);
}

async function gap(
  browser: Browser,
  transport: "websocket" | "http",
  proxyServer?: string,
): Promise<void> {
  const session = `gap-${transport}`;
  const proxy = await FaultProxy.start({ targetPort: relayPort });
  const context = await browser.newContext({
    viewport: { width: 1000, height: 760 },
    ...(proxyServer ? { proxy: { server: proxyServer, bypass: "<-loopback>" } } : {}),
  });
  try {
    const page = await context.newPage();
    await join(page, `http://127.0.0.1:${proxy.port}`, { session, nickname: "pat" }, transport);
    await using deno = await RelayNode.connect(relayUrl, { session, nickname: "deno" });
    const atDeno = recordEvents(deno);
    await noted(page, /^deno joined$/);
    for (const text of range(1, 5)) deno.send(text);
    await shows(page, "m5");

    // The cut, once the page shows m5; while it is down the page queues what is typed,
    // deno sends m6..m15, and third joins.
    await cut(proxy, page, 1);
    await page.fill("#text", "typed while away");
    await page.press("#text", "Enter");
    await status(page, "typed while away", "waiting");
    await using _third = await RelayNode.connect(relayUrl, { session, nickname: "third" });
    for (const text of range(6, 15)) deno.send(text);
    await deno.flush(); // the relay has them all (held for the page, within its grace)
    await screenshot(page, `gap-${transport}-disconnected`);
    proxy.refuseNew(false);

    await noted(
      page,
      new RegExp(`^reconnected via ${BACK_VIA[transport]} · recovered 10 missed messages$`),
    );
    await connected(page, BACK_ON[transport]);
    await shows(page, "m15");
    await status(page, "typed while away", "sent");
    await atDeno.until(
      () => atDeno.texts.includes("typed while away"),
      "deno hearing the queued one",
    );
    deno.send("m16");
    await shows(page, "m16");
    assert.deepEqual(await received(page), range(1, 16), "not each once, in order");
    assert.equal(await page.locator("#log li.msg.recovered").count(), 10);
    await noted(page, /^third joined while you were away$/);
    const lines = await logLines(page);
    // Nobody was announced again: deno was there all along.
    assert.equal(lines.filter((l) => / joined/.test(l)).length, 2, lines.join("\n"));
    const at = (prefix: string) => lines.findIndex((l) => l.startsWith(prefix));
    assert.ok(at("msg: m5") < at("gap: disconnected"), lines.join("\n"));
    assert.ok(at("gap: disconnected") < at("gap: reconnected"), lines.join("\n"));
    assert.ok(at("gap: reconnected") < at("msg: m6"), lines.join("\n"));
    await assertTimeStamps(page);
    await screenshot(page, `gap-${transport}-recovered`);
    console.log(lines.join("\n"));
    console.log(
      `${transport}: the gap is marked, the 10 missed messages shown once each, in order`,
    );

    // A blip with nothing sent meanwhile says so, and replays nothing.
    await cut(proxy, page, 2);
    proxy.refuseNew(false);
    await noted(page, new RegExp(`^reconnected via ${BACK_VIA[transport]} · nothing missed$`));
    await connected(page, BACK_ON[transport]);

    // Away for longer than the history holds (12): the relay says some are lost, the page too,
    // and gives what it still holds (m20-m31).
    await cut(proxy, page, 3);
    for (const text of range(17, 31)) deno.send(text);
    await deno.flush();
    proxy.refuseNew(false);
    await noted(page, /^some messages sent while you were away are lost/);
    await connected(page, BACK_ON[transport]);
    deno.send("m32");
    await shows(page, "m32");
    assert.deepEqual(await received(page), [...range(1, 16), ...range(20, 31), "m32"]);
    await screenshot(page, `gap-${transport}-missed`);
    console.log(`${transport}: a gap longer than the history is marked as lost`);
  } finally {
    await context.close();
    await proxy.close();
  }
}

const browser = await launch();
try {
  await gap(browser, "websocket");
  // tinyproxy refuses the WebSocket tunnel: the page streams over HTTP, through the fault proxy.
  await using tinyproxy = await startTinyproxy();
  await gap(browser, "http", `http://127.0.0.1:${tinyproxy.port}`);
} finally {
  await browser.close();
}
