/**
 * One attempt to get a handshaken link: dial, then run a handshake, all
 * within one deadline. Whatever goes wrong, the link is closed.
 *
 * @module
 */

import type { Dialer } from "../link/mod.ts";
import { FrameReader } from "./_frame_reader.ts";

/** Dials one link and runs `handshake` on it within `timeoutMs`; the link is closed on any failure. */
export async function dialAndHandshake<T>(
  dialer: Dialer,
  timeoutMs: number,
  parent: AbortSignal | undefined,
  handshake: (reader: FrameReader) => Promise<T>,
): Promise<{ reader: FrameReader; value: T }> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  const onParentAbort = () => controller.abort();
  parent?.addEventListener("abort", onParentAbort, { once: true });
  let reader: FrameReader | undefined;
  // A handshake stuck on a silent link ends when the deadline closes the link.
  const closeLink = () => reader?.link.close();
  controller.signal.addEventListener("abort", closeLink, { once: true });
  try {
    reader = new FrameReader(await dialer(controller.signal));
    if (controller.signal.aborted) throw new Error("aborted");
    const value = await handshake(reader);
    if (controller.signal.aborted) throw new Error("aborted");
    return { reader, value };
  } catch (error) {
    reader?.link.close();
    if (timedOut) throw new Error(`no answer within ${timeoutMs} ms`, { cause: error });
    throw error;
  } finally {
    clearTimeout(timer);
    parent?.removeEventListener("abort", onParentAbort);
    controller.signal.removeEventListener("abort", closeLink);
  }
}
