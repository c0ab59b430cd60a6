/**
 * The client's side of a session: one dial loop, with its backoff, for the
 * first link and every later one.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import type { Dialer } from "../link/mod.ts";
import { backoffDelay, delay, errorMessage } from "../_util.ts";
import { dialAndHandshake } from "./_dial.ts";
import { ImmortalError } from "./errors.ts";
import type { FrameReader } from "./_frame_reader.ts";
import { clientOpen, clientResume, type SessionSecrets } from "./_handshake.ts";
import type { ResolvedOptions } from "./_options.ts";
import { type SessionSide, StreamEngine } from "./_stream_engine.ts";

const log = getLogger(["immortal", "conn"]);

/** Errors after which dialing again cannot help. */
function isFatal(error: unknown): boolean {
  return error instanceof ImmortalError &&
    (error.code === "auth" || error.code === "unknown-session" || error.code === "protocol" ||
      error.code === "closed");
}

/** Dials, and redials whenever the session's link is lost, until the resume timeout. */
export class ClientSession implements SessionSide {
  #dialer: Dialer;
  #options: ResolvedOptions;
  #engine: StreamEngine | null = null;
  #secrets: SessionSecrets | null = null;
  /** Failed dials since the backoff was last reset. */
  #attempt = 0;
  #linkUpAt = 0;

  /** Dials through `dialer` with `options`; nothing happens before {@linkcode ClientSession.open}. */
  constructor(dialer: Dialer, options: ResolvedOptions) {
    this.#dialer = dialer;
    this.#options = options;
  }

  /**
   * Opens a new session on one link; the first link must succeed, so a
   * failed dial or a refusal rejects at once.
   */
  async open(psk: CryptoKey | null): Promise<StreamEngine> {
    const opened = await this.#dial(
      performance.now() + this.#options.handshakeTimeout,
      1,
      undefined,
      (reader) => clientOpen(reader, psk),
    );
    // The first link is not a failure: the first redial after it is immediate.
    this.#attempt = 0;
    this.#secrets = opened!.value;
    this.#engine = new StreamEngine({
      role: "client",
      options: this.#options,
      sessionId: this.#secrets.id,
      side: this,
    });
    this.#attach(opened!.reader, 0);
    return this.#engine;
  }

  linkLost(): void {
    if (performance.now() - this.#linkUpAt >= this.#options.backoff.stableAfter) this.#attempt = 0;
    this.#resume();
  }

  completed(): void {}

  ended(): void {}

  async #resume(): Promise<void> {
    const engine = this.#engine!;
    const { resumeTimeout } = this.#options;
    try {
      const resumed = await this.#dial(
        engine.lostAt + resumeTimeout,
        Infinity,
        engine.signal,
        (reader) => clientResume(reader, this.#secrets!, engine.received),
      );
      if (!engine.resumable) {
        resumed?.reader.link.close();
        return;
      }
      if (resumed !== null) {
        this.#attach(resumed.reader, resumed.value);
        return;
      }
      engine.fail(
        new ImmortalError(
          "timeout",
          `could not resume the session within the resume timeout of ${resumeTimeout} ms`,
        ),
        null,
      );
    } catch (error) {
      if (engine.resumable) engine.fail(error as Error, null);
    }
  }

  #attach(reader: FrameReader, peerReceived: number): void {
    this.#linkUpAt = performance.now();
    this.#engine!.attach(reader, peerReceived);
  }

  /**
   * The one dial loop. Tries at most `maxAttempts` times until `deadline`,
   * backing off between failed attempts. Resolves to the handshaken link, or
   * `null` when the deadline passed or `signal` aborted; rejects with a fatal
   * error (a refused key, say), or with the last error once the attempts are
   * used up.
   */
  async #dial<T>(
    deadline: number,
    maxAttempts: number,
    signal: AbortSignal | undefined,
    handshake: (reader: FrameReader) => Promise<T>,
  ): Promise<{ reader: FrameReader; value: T } | null> {
    const { handshakeTimeout, backoff } = this.#options;
    for (let tries = 1;; tries++) {
      const remaining = deadline - performance.now();
      if (remaining <= 0) return null;
      const wait = Math.min(backoffDelay(this.#attempt++, backoff.initial, backoff.max), remaining);
      if (wait > 0 && !(await delay(wait, signal))) return null;
      try {
        const budget = Math.max(1, Math.min(handshakeTimeout, deadline - performance.now()));
        return await dialAndHandshake(this.#dialer, budget, signal, handshake);
      } catch (error) {
        if (signal?.aborted) return null;
        if (isFatal(error) || tries >= maxAttempts) throw error;
        log.debug("Session {id}: dial attempt {n} failed: {reason}", {
          id: this.#secrets?.id ?? "(new)",
          n: this.#attempt,
          reason: errorMessage(error),
        });
      }
    }
  }
}
