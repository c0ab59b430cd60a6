// The browser half of relay_browser_layout_test.ts, in its own process (see
// _browser_run.ts). Usage: _browser_layout.ts RELAY_URL. At desktop and phone
// width, after a 300-character word each way and with a 31-character
// nickname in the member list, the message box, the Send button and the
// member list are within the viewport and nothing scrolls sideways.
import assert from "node:assert/strict";
import type { BrowserContextOptions, Locator, Page } from "playwright-core";
import { RelayNode } from "../mod.ts";
import {
  assertTimeStamps,
  join,
  launch,
  screenshot,
  shows,
  status,
  WAIT,
} from "./_browser_helpers.ts";

const [relayUrl] = Deno.args;
/** 300 characters, no space anywhere to break at. */
const WORD = "Pneumonoultramicroscopicsilicovolcanoconiosis".repeat(7).slice(0, 300);
/** A long real-looking nickname without a space (the limit is 32). */
const LONG_NAME = "Wolfeschlegelsteinhausenbergerd";

const VIEWPORTS: Record<string, BrowserContextOptions> = {
  desktop: { viewport: { width: 1280, height: 800 } },
  // A phone: the page's meta viewport applies (isMobile), as on a real one.
  phone: {
    viewport: { width: 375, height: 667 },
    isMobile: true,
    hasTouch: true,
    deviceScaleFactor: 2,
  },
};

/** `locator`'s box lies within the viewport's width (and its height, if `whole`). */
async function inView(page: Page, locator: Locator, what: string, whole: boolean): Promise<string> {
  const { width, height } = page.viewportSize()!;
  const box = await locator.boundingBox();
  assert.ok(box, `${what} is not shown`);
  assert.ok(box.width > 0 && box.height > 0, `${what} has no size: ${JSON.stringify(box)}`);
  // Half a pixel for subpixel layout.
  assert.ok(
    box.x >= -0.5 && box.x + box.width <= width + 0.5,
    `${what} is outside the ${width}px viewport: x ${box.x}, width ${box.width}`,
  );
  if (whole) {
    assert.ok(
      box.y >= -0.5 && box.y + box.height <= height + 0.5,
      `${what} is outside the ${height}px viewport height: y ${box.y}, height ${box.height}`,
    );
  }
  return `${what} x ${box.x.toFixed(0)}..${(box.x + box.width).toFixed(0)} y ${box.y.toFixed(0)}..${
    (box.y + box.height).toFixed(0)
  }`;
}

/** Nothing scrolls sideways: the page, and the log within it. */
async function noSidewaysScroll(page: Page): Promise<void> {
  const [scrollWidth, clientWidth, logScroll, logClient] = await page.evaluate<number[]>(
    `[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth,
      document.getElementById("log").scrollWidth, document.getElementById("log").clientWidth]`,
  );
  assert.ok(
    scrollWidth <= clientWidth,
    `the page scrolls sideways: ${scrollWidth} > ${clientWidth}`,
  );
  assert.ok(logScroll <= logClient, `the log scrolls sideways: ${logScroll} > ${logClient}`);
}

const browser = await launch();
try {
  for (const [name, options] of Object.entries(VIEWPORTS)) {
    const context = await browser.newContext(options);
    const page = await context.newPage();
    await page.goto(`${relayUrl}/chat`);
    for (const field of ["#session", "#nickname", "#secret", "#join button"]) {
      await inView(page, page.locator(field), `${name} join form ${field}`, true);
    }
    await screenshot(page, `${name}-join`);

    const session = `wide-${name}`;
    await join(page, relayUrl, { session, nickname: "pat" });
    await using other = await RelayNode.connect(relayUrl, { session, nickname: LONG_NAME });
    await page.locator("#members .member", { hasText: LONG_NAME }).waitFor(WAIT);
    other.send(WORD);
    await shows(page, WORD);
    await page.fill("#text", WORD);
    await page.press("#text", "Enter");
    await status(page, WORD.slice(0, 40), "sent");
    // And a directed one, whose line carries the most parts.
    other.sendTo("pat", WORD);
    await page.locator("#log li.msg.directed:not(.mine)").waitFor(WAIT);
    await page.fill("#text", "the word is in the log above");

    const boxes = [
      await inView(page, page.locator("#text"), `${name} message box`, true),
      await inView(page, page.locator("#send-button"), `${name} Send button`, true),
      await inView(page, page.locator("#side"), `${name} member list`, false),
      await inView(page, page.locator("#members .member"), `${name} ${LONG_NAME}`, true),
      await inView(page, page.locator("#members .self"), `${name} own name`, true),
      await inView(page, page.locator("#state"), `${name} connection state`, true),
    ];
    for (const [i, line] of (await page.locator("#log li.msg").all()).entries()) {
      boxes.push(await inView(page, line, `${name} log line ${i}`, false));
    }
    await noSidewaysScroll(page);
    await assertTimeStamps(page);
    console.log(boxes.join("\n"));
    await screenshot(page, `${name}-long-word`);
    console.log(`${name}: the input, Send and the member list stay in view`);
    await context.close();
  }
} finally {
  await browser.close();
}
