/** A relay hub's sink for tests: it keeps the frames the hub sends, and tells when one came. */

import assert from "node:assert/strict";
import { parseRelayFrame, readJson } from "../lib/relay/_parse.ts";
import type { RelayFrame } from "../lib/relay/_protocol.ts";
import type { Sink } from "../lib/relay/_room.ts";

/** A sink that keeps what the hub sends; `full` makes it refuse frames like a full queue. */
export class FakeSink implements Sink {
  frames: RelayFrame[] = [];
  closed: { code: number; reason: string } | null = null;
  full = false;
  #onClose = Promise.withResolvers<void>();

  #changed = () => {};

  push(data: string): boolean {
    if (this.full) return false;
    const parsed = parseRelayFrame(readJson(data));
    assert.ok(parsed.ok, `the hub sent a frame its own parser refuses: ${data}`);
    this.frames.push(parsed.frame);
    this.#changed();
    return true;
  }

  close(code: number, reason: string): void {
    this.closed = { code, reason };
    this.#onClose.resolve();
    this.#changed();
  }

  /**
   * Resolves once `done` holds (checked at every frame and at the close);
   * fails after 20 s, so that a test never hangs.
   */
  async until(done: () => boolean, what: string): Promise<void> {
    if (done()) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`no ${what} within 20 s`)), 20_000);
        this.#changed = () => done() && resolve();
      });
    } finally {
      clearTimeout(timer);
      this.#changed = () => {};
    }
  }

  /** Resolves once the hub closed this sink. */
  get whenClosed(): Promise<void> {
    return this.#onClose.promise;
  }

  /** Frames of type `t` received so far, and forgets every frame. */
  take<T extends RelayFrame["t"]>(t: T): Extract<RelayFrame, { t: T }>[] {
    const out = this.frames.filter((f) => f.t === t) as Extract<RelayFrame, { t: T }>[];
    this.frames = [];
    return out;
  }
}
