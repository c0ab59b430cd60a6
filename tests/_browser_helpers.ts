/**
 * The browser side of the chat page tests: Debian's chromium driven by
 * playwright-core (no browser download), and the page's controls. Imported
 * only by the `_browser_*.ts` scripts, which run with --allow-all in their
 * own process (`_browser_run.ts`).
 *
 * Every wait is on page state, with a generous upper bound, never a sleep.
 */

import assert from "node:assert/strict";
import { type Browser, chromium, type Locator, type Page } from "playwright-core";

/** Upper bound of every wait on the page: generous, so a loaded machine is only slower. */
export const WAIT = { timeout: 15_000 };

/** Where screenshots go, to be looked at. */
export const SHOTS = "/tmp/chat-shots";

/** Launches the system chromium, headless, with `args` added. */
export function launch(args: string[] = []): Promise<Browser> {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    // Chromium must not try to reach Google services: this machine's network is closed.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      ...args,
    ],
  });
}

/** Fills in the join form at `base`/chat and submits it (does not wait for the welcome). */
export async function submitJoin(
  page: Page,
  base: string,
  fields: { session: string; nickname: string; secret?: string },
): Promise<void> {
  if (!/\/chat(\?[^/]*)?$/.test(page.url())) await page.goto(`${base}/chat`);
  await page.fill("#session", fields.session);
  await page.fill("#nickname", fields.nickname);
  await page.fill("#secret", fields.secret ?? "");
  await page.click("#join button");
}

/** Waits until the page is connected (over `transport`, if given). */
export async function connected(page: Page, transport?: "websocket" | "http"): Promise<void> {
  const kind = transport ? `[data-transport="${transport}"]` : "";
  await page.waitForSelector(`#state[data-state="connected"]${kind}`, WAIT);
}

/** Joins and waits for the welcome. */
export async function join(
  page: Page,
  base: string,
  fields: { session: string; nickname: string; secret?: string },
  transport?: "websocket" | "http",
): Promise<void> {
  await submitJoin(page, base, fields);
  await connected(page, transport);
}

/** Types `text` into the message box and sends it with Enter. */
export async function say(page: Page, text: string): Promise<void> {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** The page's own line holding `text`. */
export function mine(page: Page, text: string): Locator {
  return page.locator("#log li.msg.mine", { hasText: text }).last();
}

/** Waits until the page's own line holding `text` has `status` (data-status). */
export async function status(page: Page, text: string, value: string): Promise<void> {
  await page.locator(`#log li.msg.mine[data-status="${value}"]`, { hasText: text }).last()
    .waitFor(WAIT);
}

/** The texts of the messages the page received, in log order. */
export function received(page: Page): Promise<string[]> {
  return page.locator("#log li.msg:not(.mine) .text").allTextContents();
}

/** Waits for a received message holding exactly `text`. */
export async function shows(page: Page, text: string): Promise<Locator> {
  const line = page.locator("#log li.msg:not(.mine)").filter({
    has: page.locator(".text", { hasText: new RegExp(`^${escape(text)}$`) }),
  }).last();
  await line.waitFor(WAIT);
  return line;
}

/** Waits for a note (status line) whose text matches `text`. */
export async function noted(page: Page, text: RegExp): Promise<Locator> {
  const line = page.locator("#log li.note", { has: page.locator(".what", { hasText: text }) })
    .last();
  await line.waitFor(WAIT);
  return line;
}

/** Every log line as `kind: text` (kind: msg, mine, note or gap), time stamps left out. */
export function logLines(page: Page): Promise<string[]> {
  return page.evaluate<string[]>(`[...document.querySelectorAll("#log > li")].map((li) => {
    const kind = li.classList.contains("gap") ? "gap" : li.classList.contains("note") ? "note"
      : li.classList.contains("mine") ? "mine" : "msg";
    const what = li.querySelector(".what");
    return kind + ": " + (what ? what.textContent : li.querySelector(".text").textContent);
  })`);
}

/** Every line's time stamp is a local HH:MM. */
export async function assertTimeStamps(page: Page): Promise<void> {
  const stamps = await page.locator("#log > li > time").allTextContents();
  const lines = await page.locator("#log > li").count();
  assert.equal(stamps.length, lines, "a log line without a time stamp");
  for (const stamp of stamps) assert.match(stamp, /^\d\d:\d\d$/);
}

/** Saves a screenshot under {@linkcode SHOTS}. */
export async function screenshot(page: Page, name: string): Promise<void> {
  await Deno.mkdir(SHOTS, { recursive: true });
  await page.screenshot({ path: `${SHOTS}/${name}.png` });
  console.log(`screenshot ${SHOTS}/${name}.png`);
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
