/**
 * The client's side of a session: one dial loop, with its backoff, for the
 * first link and every later one.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import type { Dialer } from "../link/mod.ts";
import { errorMessage } from "../_util.ts";
import { dialAndHandshake, DialTimeoutError, serverAnswered } from "./_dial.ts";
import { ImmortalError } from "./errors.ts";
import type { FrameReader } from "./_frame_reader.ts";
import { clientOpen, clientResume, type SessionSecrets } from "./_handshake.ts";
import { SealedLink } from "./_sealed_link.ts";
import type { ResolvedOptions } from "./_options.ts";
import { ReconnectPolicy } from "./_reconnect_policy.ts";
import { type SessionSide, StreamEngine } from "./_stream_engine.ts";

const log = getLogger(["immortal", "conn"]);

/** Errors after which dialing again cannot help. */
function isFatal(error: unknown): boolean {
  return error instanceof ImmortalError &&
    (error.code === "auth" || error.code === "unknown-session" || error.code === "protocol" ||
      error.code === "refused" || error.code === "closed");
}

/**
 * Fatal answers that nothing authenticates: a server's reject (its only word
 * when it no longer knows a session) and a handshake that breaks the rules
 * or fails its proof. Anyone on the path (a relay, a proxy) can forge or
 * change them.
 */
function isUnauthenticated(error: unknown): boolean {
  return error instanceof ImmortalError &&
    (error.code === "auth" || error.code === "unknown-session" || error.code === "protocol");
}

/**
 * A resume believes an unauthenticated fatal answer once it has come this
 * many times (on links dialed one after another, with the backoff between).
 * Believed at once, one changed byte on the path ended a session and lost
 * the bytes in flight; a server that really lost the session says so again.
 */
const RESUME_ANSWERS_BELIEVED = 3;

/**
 * Attempts in flight at once. The oldest unanswered dial yields to a new one;
 * handshakes under way are never cut short.
 */
const MAX_RACING_ATTEMPTS = 4;
/** A handshake under way this long (or 8 round trips) is raced by a fresh dial. */
const STALLED_HANDSHAKE_MS = 500;

/** A handshaken link, and what the handshake resolved to. */
interface Dialed<T> {
  reader: FrameReader;
  value: T;
}

/**
 * Dials, and redials whenever the session's link is lost, until the resume
 * timeout, with the delays of a {@linkcode ReconnectPolicy}. An attempt that
 * stalls (a SYN lost in a black hole) is raced by a fresh one after the
 * policy's `raceAfter`, so a path that comes back is used within that time.
 */
export class ClientSession implements SessionSide {
  #dialer: Dialer;
  #options: ResolvedOptions;
  #engine: StreamEngine | null = null;
  #secrets: SessionSecrets | null = null;
  #policy: ReconnectPolicy;
  /** The current link carried a frame after its handshake. */
  #linkProven = false;
  /** When the current link was attached (`performance.now()`). */
  #attachedAt = 0;

  /** Dials through `dialer` with `options`; nothing happens before {@linkcode ClientSession.open}. */
  constructor(dialer: Dialer, options: ResolvedOptions) {
    // An encrypted session seals every link it dials.
    this.#dialer = options.encrypt
      ? async (signal) => new SealedLink(await dialer(signal))
      : dialer;
    this.#options = options;
    this.#policy = new ReconnectPolicy(options.backoff);
  }

  /**
   * Opens a new session on one link; the first link must succeed, so a
   * failed dial or a refusal rejects at once.
   */
  async open(psk: CryptoKey | null, signal?: AbortSignal): Promise<StreamEngine> {
    const opened = await this.#dial(
      performance.now() + this.#options.handshakeTimeout,
      1,
      signal,
      (reader) => clientOpen(reader, psk, this.#options.maxUnackedBytes, this.#options.encrypt),
    );
    if (opened === null && signal?.aborted) {
      throw new ImmortalError("aborted", "the connection was abandoned before it opened", {
        cause: signal.reason,
      });
    }
    if (opened === null) {
      // The deadline passed as the one attempt timed out: say so, not "null".
      throw new DialTimeoutError(this.#options.handshakeTimeout, undefined);
    }
    const { secrets, peerWindow } = opened.value;
    this.#secrets = secrets;
    this.#engine = new StreamEngine({
      role: "client",
      options: this.#options,
      sessionId: secrets.id,
      side: this,
      peerWindow,
    });
    this.#attach(opened.reader, 0, peerWindow);
    return this.#engine;
  }

  linkProven(): void {
    this.#linkProven = true;
    this.#policy.linkProven();
  }

  linkLost(): void {
    const lived = performance.now() - this.#attachedAt;
    this.#resume(this.#policy.linkLost(this.#linkProven, lived));
  }

  completed(): void {}

  ended(): void {}

  async #resume(wait: number): Promise<void> {
    const engine = this.#engine!;
    const { resumeTimeout } = this.#options;
    try {
      const resumed = await this.#dial(
        engine.lostAt + resumeTimeout,
        Infinity,
        engine.signal,
        (reader) =>
          clientResume(reader, this.#secrets!, engine.received, this.#options.maxUnackedBytes),
        wait,
        // A server that forgot the session after it had our bye answers
        // "unknown session": that is the answer expected, and nothing of
        // the application's waits on it.
        engine.sayingBye ? 1 : RESUME_ANSWERS_BELIEVED,
      );
      if (!engine.resumable) {
        resumed?.reader.link.close();
        return;
      }
      if (resumed !== null) {
        this.#attach(resumed.reader, resumed.value.received, resumed.value.peerWindow);
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
      if (!engine.resumable) return;
      if (engine.sayingBye) {
        // Everything was delivered both ways: the end is clean, whatever the server said.
        log.debug("Session {id}: no resume for its bye: {reason}", {
          id: this.#secrets?.id,
          reason: errorMessage(error),
        });
        engine.fail(null, null);
      } else {
        engine.fail(error as Error, null);
      }
    }
  }

  #attach(reader: FrameReader, peerReceived: number, peerWindow: number): void {
    this.#linkProven = false;
    this.#attachedAt = performance.now();
    this.#engine!.attach(reader, peerReceived, peerWindow);
  }

  /**
   * The one dial loop (see the class doc for its policy). Starts at most
   * `maxAttempts` attempts until `deadline`, the first after `wait` ms. Resolves to the first link whose
   * handshake completes, or `null` when the deadline passed or `signal`
   * aborted; rejects with a fatal error (a refused key, say; one that
   * nothing authenticates only once it came `believeAfter` times), or with
   * the last error once the attempts are used up. Attempts still racing when it
   * settles are aborted, their links closed.
   */
  async #dial<T>(
    deadline: number,
    maxAttempts: number,
    signal: AbortSignal | undefined,
    handshake: (reader: FrameReader) => Promise<T>,
    wait = 0,
    believeAfter = 1,
  ): Promise<Dialed<T> | null> {
    const { handshakeTimeout } = this.#options;
    const rtt = this.#engine?.stats.rttMs ?? 0;
    // When dialing begins: the races slow down with its length, not with the wait before it.
    const since = performance.now() + wait;
    // Attempts in flight, by start time, and whether the server answered
    // (the link is up and the handshake under way).
    const racing = new Map<AbortController, { startedAt: number; linked: boolean }>();
    let winner: Dialed<T> | null = null;
    let fatal: unknown = null;
    let lastError: unknown = null;
    let unbelieved = 0;
    let started = 0;
    let nextStart = performance.now() + wait;
    let wake: (() => void) | null = null;
    let done = false;
    const settle = () => {
      const resolve = wake;
      wake = null;
      resolve?.();
    };
    const launch = () => {
      started++;
      const controller = new AbortController();
      const onAbort = () => controller.abort();
      signal?.addEventListener("abort", onAbort, { once: true });
      const attempt = { startedAt: performance.now(), linked: false };
      racing.set(controller, attempt);
      const budget = Math.max(1, Math.min(handshakeTimeout, deadline - performance.now()));
      dialAndHandshake(this.#dialer, budget, controller.signal, handshake, () => {
        attempt.linked = true;
        // The path answered: the dials still waiting probe the same path, and a
        // second handshake would only race this one (the server keeps the
        // last). Handshakes already under way go on: this one may stall too.
        for (const [other, state] of racing) if (!state.linked) other.abort();
        settle();
      }).then(
        (dialed) => {
          if (done || winner !== null || fatal !== null || controller.signal.aborted) {
            dialed.reader.link.close(); // too late: the loop has moved on
          } else {
            winner = dialed;
          }
        },
        (error) => {
          if (controller.signal.aborted) return; // raced out, or the session ended
          lastError = error;
          const final = isFatal(error);
          if (final && !(isUnauthenticated(error) && ++unbelieved < believeAfter)) {
            fatal = error;
          } else {
            if (final) {
              log.warn(
                "Session {id}: {reason}; not believed yet (answer {n} of {of}: it may have " +
                  "been changed on the way), trying again",
                {
                  id: this.#secrets?.id ?? "(new)",
                  reason: errorMessage(error),
                  n: unbelieved,
                  of: believeAfter,
                },
              );
            }
            const answered = serverAnswered(error);
            nextStart = performance.now() + this.#policy.attemptFailed(answered, rtt);
          }
          log.debug("Session {id}: dial attempt {n} failed: {reason}", {
            id: this.#secrets?.id ?? "(new)",
            n: started,
            reason: errorMessage(error),
          });
        },
      ).finally(() => {
        signal?.removeEventListener("abort", onAbort);
        racing.delete(controller);
        settle();
      });
    };
    /**
     * When the next attempt may start: after the last failure's delay, and,
     * while attempts are in flight, once the newest is stalled enough to race.
     */
    const nextLaunchAt = (): number => {
      if (started >= maxAttempts) return Infinity;
      if (racing.size === 0) return nextStart;
      let latest = -Infinity, linked = 0;
      for (const attempt of racing.values()) {
        latest = Math.max(latest, attempt.startedAt);
        if (attempt.linked) linked++;
      }
      if (linked >= MAX_RACING_ATTEMPTS) return Infinity;
      // A dial nobody answered is raced after the probe interval. A handshake
      // under way is raced only once it is clearly stuck (its link died
      // silently, say, as the local address changed), and it is never aborted
      // for that: under load handshakes are slow, and cutting them all short
      // would never let one finish. A race still waits out the delay of the
      // last failure: beside a stuck handshake, a dialer that fails at once
      // (without I/O) would otherwise be relaunched as each attempt fails,
      // without ever yielding to a timer, until the deadline.
      const probe = this.#policy.raceAfter(rtt, performance.now() - since);
      return Math.max(
        nextStart,
        latest + (linked > 0 ? Math.max(STALLED_HANDSHAKE_MS, 8 * rtt) : probe),
      );
    };
    signal?.addEventListener("abort", settle);
    try {
      for (;;) {
        if (winner !== null) return winner;
        if (fatal !== null) throw fatal;
        const now = performance.now();
        if (signal?.aborted || now >= deadline) return null;
        if (started >= maxAttempts && racing.size === 0) throw lastError;
        const launchAt = nextLaunchAt();
        if (now >= launchAt) {
          // The oldest stalled dial gives way, so a black hole holds at most a few sockets.
          if (racing.size >= MAX_RACING_ATTEMPTS) {
            for (const [controller, attempt] of racing) {
              if (!attempt.linked) {
                controller.abort();
                break;
              }
            }
          }
          launch();
          continue;
        }
        const waiting = new Promise<void>((resolve) => wake = resolve);
        // Capped: a timer past 2^31 ms would fire at once.
        const timer = setTimeout(
          settle,
          Math.min(3_600_000, Math.max(0, Math.min(launchAt, deadline) - now)),
        );
        await waiting;
        clearTimeout(timer);
      }
    } finally {
      done = true;
      signal?.removeEventListener("abort", settle);
      for (const controller of racing.keys()) controller.abort();
    }
  }
}
