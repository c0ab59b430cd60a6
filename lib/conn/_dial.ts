/**
 * One attempt to get a handshaken link: dial, then run a handshake, all
 * within one deadline. Whatever goes wrong, the link is closed.
 *
 * @module
 */

import type { Dialer } from "../link/mod.ts";
import { untilAborted } from "../_util.ts";
import { FrameReader } from "./_frame_reader.ts";

/** A dial, or the handshake after it, got no answer in time. */
export class DialTimeoutError extends Error {
  /** `timeoutMs` is the time the attempt had; `cause` what it was doing when it ran out. */
  constructor(timeoutMs: number, cause: unknown) {
    super(`no answer within ${timeoutMs} ms`, { cause });
    this.name = "DialTimeoutError";
  }
}

// Errors that say nothing reached the server (our side has no route or no
// address, or nothing came back): retrying costs the server nothing.
const NO_ANSWER_CODES = new Set([
  "ENETUNREACH",
  "EHOSTUNREACH",
  "ENETDOWN",
  "EADDRNOTAVAIL",
  "ETIMEDOUT",
]);

/**
 * Did the server (or a host on the way) answer this failed attempt? A
 * refusal, a reset or a handshake reject did; no route, no local address or
 * a timeout did not. Wrapped errors (a TLS dial wraps the TCP error) are
 * looked through.
 */
export function serverAnswered(error: unknown): boolean {
  let current = error;
  for (let depth = 0; current instanceof Error && depth < 4; depth++) {
    if (current instanceof DialTimeoutError) return false;
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string" && NO_ANSWER_CODES.has(code)) return false;
    current = current.cause;
  }
  return true;
}

/**
 * Dials one link and runs `handshake` on it within `timeoutMs`; the link is
 * closed on any failure. `onLinked` is called once the link exists (the
 * server answered), before the handshake.
 */
export async function dialAndHandshake<T>(
  dialer: Dialer,
  timeoutMs: number,
  parent: AbortSignal | undefined,
  handshake: (reader: FrameReader) => Promise<T>,
  onLinked?: () => void,
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
    // The deadline holds even over a dialer that ignores its signal.
    const link = await untilAborted(
      dialer(controller.signal),
      controller.signal,
      (late) => late.close(),
    );
    reader = new FrameReader(link);
    // An abort between the dial's end and this line found no link to close.
    controller.signal.throwIfAborted();
    onLinked?.();
    const value = await handshake(reader);
    if (controller.signal.aborted) throw new Error("aborted");
    return { reader, value };
  } catch (error) {
    reader?.link.close();
    if (timedOut) throw new DialTimeoutError(timeoutMs, error);
    throw error;
  } finally {
    clearTimeout(timer);
    parent?.removeEventListener("abort", onParentAbort);
    controller.signal.removeEventListener("abort", closeLink);
  }
}
