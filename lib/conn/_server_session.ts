/**
 * The server's side of sessions: the table of live sessions a listener keeps,
 * the handshake of every incoming link (a new session, or the proven resume
 * of a known one), and reaping sessions whose client does not come back.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { LogLimiter } from "../_log_limiter.ts";
import { sourceOf } from "../link/_source.ts";
import { describePeer } from "../link/mod.ts";
import { ImmortalError } from "./errors.ts";
import type { FrameReader } from "./_frame_reader.ts";
import {
  hmacKey,
  resumeAccept,
  sendFrame,
  serverHandshake,
  type SessionSecrets,
} from "./_handshake.ts";
import type { ImmortalConn } from "./immortal_conn.ts";
import type { ResolvedOptions } from "./_options.ts";
import { type SessionSide, StreamEngine } from "./_stream_engine.ts";

const log = getLogger(["immortal", "listener"]);

/** A session earns a credit for a resume past its source's limits at most this often, ms. */
const CREDIT_EVERY_MS = 1000;

/** A verified hello for a new session; the listener decides whether to take it. */
export interface NewSession {
  secrets: SessionSecrets;
  /** Frame to send to accept it. */
  accept: Parameters<typeof sendFrame>[1];
  /** The client's receive window. */
  peerWindow: number;
}

/** One session at the server: resumes from the client, and reaping when it does not come back. */
class ServerSession implements SessionSide {
  readonly engine: StreamEngine;
  readonly secrets: SessionSecrets;
  /** Where its first link came from (see `sourceOf`), for the per-source limit. */
  readonly source: string;
  #options: ResolvedOptions;
  #forget: ((session: ServerSession) => void) | undefined;
  /** Tells its sessions' table this session holds a credit now, or no more. */
  #credits: (session: ServerSession, hold: boolean) => void;
  /** Its link is being replaced by a resume: no loss to earn a credit by. */
  #replacing = false;
  /** This session holds one of its source's credits for a resume past its limits. */
  #credit = false;
  /** When it last earned one (`performance.now()`). */
  #creditAt = -Infinity;
  #reapTimer: ReturnType<typeof setTimeout> | undefined;
  /** Orders overlapping resumes: only the newest may attach its link. */
  #resumeEpoch = 0;
  /** The listener closed: a lost link cannot be replaced. */
  #listenerGone = false;

  constructor(
    options: ResolvedOptions,
    hello: NewSession,
    reader: FrameReader,
    forget: (session: ServerSession) => void,
    credits: (session: ServerSession, hold: boolean) => void,
  ) {
    this.#options = options;
    this.secrets = hello.secrets;
    this.source = sourceOf(reader.link.remoteAddr) ?? "local";
    this.#forget = forget;
    this.#credits = credits;
    this.engine = new StreamEngine({
      role: "server",
      options,
      sessionId: hello.secrets.id,
      side: this,
      peerWindow: hello.peerWindow,
    });
    this.engine.attach(reader, 0, hello.peerWindow);
  }

  /** A client proved it owns this session on a new link. */
  async resumeFrom(
    reader: FrameReader,
    clientReceived: number,
    transcript: Uint8Array,
    peerWindow: number,
  ): Promise<void> {
    if (!this.engine.resumable) {
      reader.link.close();
      return;
    }
    const wrong = this.engine.resumePositionError(clientReceived);
    if (wrong !== null) {
      // Refused before the accept (and before the link in use is dropped), so
      // the client learns why instead of seeing a resume that worked and a
      // link that died after it.
      await sendFrame(reader.link, {
        type: "reject",
        code: "protocol",
        reason: "resume position out of range",
      }).catch(() => {});
      reader.link.close();
      // Less than the client has acknowledged since: an attempt it gave up
      // on whose proof came late, overtaken by one that took. The session,
      // and the link it is on, go on. More than we ever sent: no client of
      // this session says that.
      if (!this.engine.resumeBehind(clientReceived)) this.engine.fail(wrong, null);
      return;
    }
    // Counted only for an attempt that may take: a stale one refused above
    // must not make the attempt in progress look overtaken.
    const epoch = ++this.#resumeEpoch;
    // The client gave up on the old link before we noticed it was dead: news,
    // no fault of ours (the client warned of it); and a server stopped for a
    // while meets each of the client's attempts in turn.
    this.#replacing = true;
    this.engine.dropLink("the client resumed on a new link", "info");
    this.#replacing = false;
    // No link is attached now, so nothing moves `received` until we attach.
    const accept = await resumeAccept(
      this.secrets.resumeKey,
      transcript,
      this.engine.received,
      this.#options.maxUnackedBytes,
    );
    if (epoch !== this.#resumeEpoch || !this.engine.resumable) {
      reader.link.close();
      return;
    }
    await sendFrame(reader.link, accept);
    if (epoch !== this.#resumeEpoch || !this.engine.resumable) {
      reader.link.close();
      return;
    }
    // A completed session keeps its reaper: it is forgotten after the resume
    // timeout even if the client's bye never comes.
    if (!this.engine.complete) {
      clearTimeout(this.#reapTimer);
      this.#reapTimer = undefined;
    }
    this.#holdCredit(false);
    this.engine.attach(reader, clientReceived, peerWindow);
  }

  /**
   * Takes this session's credit for a resume past its source's limits, if
   * it holds one (see `ServerSessions.creditsFrom`).
   */
  takeCredit(): boolean {
    if (!this.#credit) return false;
    this.#holdCredit(false);
    return true;
  }

  /**
   * The resume that took the credit did not take (its proof never came,
   * or failed; its link went): a session still waiting for a link holds it
   * again, or it had none for good (it earns one only by losing a link).
   */
  giveCreditBack(): void {
    if (!this.engine.linked && this.engine.resumable) this.#holdCredit(true);
  }

  #holdCredit(hold: boolean): void {
    if (this.#credit === hold) return;
    this.#credit = hold;
    this.#credits(this, hold);
  }

  /** The listener closed: the session lives on its current link only. */
  listenerClosed(): void {
    if (this.engine.complete || !this.engine.linked) {
      this.engine.fail(new ImmortalError("closed", "the listener was closed"), null);
    } else {
      this.#forget = undefined;
      this.#listenerGone = true;
    }
  }

  linkLost(reason: string): void {
    if (this.#listenerGone) {
      this.engine.fail(
        new ImmortalError("closed", `the link was lost (${reason}) and the listener is closed`),
        null,
      );
    } else {
      // A credit for the resume, at most one a second: a client that breaks
      // its own links on and on gets no more handshakes past its limits.
      const now = performance.now();
      if (!this.#replacing && now - this.#creditAt >= CREDIT_EVERY_MS) {
        this.#creditAt = now;
        this.#holdCredit(true);
      }
      this.#reapAfterTimeout(() => {
        // The end that follows says it (a line each was two for one event).
        log.debug("Session {id} reaped: the client did not come back within {ms} ms", {
          id: this.secrets.id,
          ms: this.#options.resumeTimeout,
        });
        this.engine.fail(
          new ImmortalError(
            "timeout",
            `the client did not resume within the resume timeout of ${this.#options.resumeTimeout} ms`,
          ),
          null,
        );
      });
    }
  }

  linkProven(): void {}

  completed(): void {
    // Keep the session resumable until the client's bye, in case our last
    // ack was lost with the link; forget it after the resume timeout anyway.
    this.#reapAfterTimeout(() => this.engine.fail(null, null), true);
  }

  ended(): void {
    this.#holdCredit(false);
    clearTimeout(this.#reapTimer);
    this.#reapTimer = undefined;
    this.#forget?.(this);
    this.#forget = undefined;
  }

  /** Reaps after the resume timeout, unless a link came back meanwhile (or `always`). */
  #reapAfterTimeout(reap: () => void, always = false): void {
    if (this.#reapTimer !== undefined) return;
    this.#reapTimer = setTimeout(() => {
      this.#reapTimer = undefined;
      if (always || !this.engine.linked) reap();
    }, this.#options.resumeTimeout);
  }
}

/** The live sessions of one listener, by id, and the handshake of each new link. */
export class ServerSessions {
  #options: ResolvedOptions;
  #psk: Promise<CryptoKey | null>;
  #sessions = new Map<string, ServerSession>();
  /** Sessions holding a credit for a resume past the limits, by source (see `creditsFrom`). */
  #holders = new Map<string, Set<ServerSession>>();
  /** Sessions ended by {@linkcode ServerSessions.makeRoom} so far. */
  evicted = 0;
  #evictions = new LogLimiter((template, properties) => log.info(template, properties));

  /** Sessions with `options` (its `key`, when set, admits only clients that prove it). */
  constructor(options: ResolvedOptions) {
    this.#options = options;
    this.#psk = options.key ? hmacKey(options.key) : Promise.resolve(null);
  }

  /** Sessions kept alive (accepted or waiting to be). */
  get size(): number {
    return this.#sessions.size;
  }

  /**
   * Sessions from `source` that lost their link and may resume past its
   * limits: one credit each, earned at most once a second, held until a
   * resume takes it (or the session resumes, or ends).
   */
  creditsFrom(source: string): number {
    return this.#holders.get(source)?.size ?? 0;
  }

  /**
   * Runs the server handshake on a fresh link. A proven resume of a known
   * session is carried out here and resolves to `null`; a verified new
   * session resolves to its hello, for {@linkcode ServerSessions.open} once
   * the listener has accepted it. Refusals reject with an ImmortalError (the
   * client has been told). `resumesFrom`: the link came in past its source's
   * limits, and may only resume one of that source's sessions holding a
   * credit (which it takes, and says so by `claimed`, with what gives it
   * back if the resume does not take).
   */
  async handshake(
    reader: FrameReader,
    resumesFrom?: string,
    claimed?: (giveBack: () => void) => void,
  ): Promise<NewSession | null> {
    const hello = await serverHandshake(
      reader,
      await this.#psk,
      (id) => {
        const session = this.#sessions.get(id);
        return session?.engine.resumable ? session.secrets : undefined;
      },
      this.#options.maxUnackedBytes,
      this.#options.encrypt,
      resumesFrom === undefined ? undefined : (id) => {
        const session = this.#sessions.get(id);
        if (session?.source !== resumesFrom || !session.takeCredit()) return false;
        claimed?.(() => session.giveCreditBack());
        return true;
      },
    );
    if (hello.kind === "new") {
      return { secrets: hello.secrets, accept: hello.accept, peerWindow: hello.peerWindow };
    }
    const session = this.#sessions.get(hello.sessionId);
    if (!session) {
      throw new ImmortalError("unknown-session", "the session ended during the handshake");
    }
    // Debug only: racing redials may each get this far; the one that wins
    // says "resumed" (with its downtime), the others are noise.
    log.debug("Session {id}: client resuming from {remote}", {
      id: hello.sessionId,
      remote: describePeer(reader.link),
    });
    await session.resumeFrom(reader, hello.received, hello.transcript, hello.peerWindow);
    return null;
  }

  /**
   * Makes room for a new session from `source` within `maxSessions` in all
   * and `maxPerSource` from one source: the oldest session that waits for
   * its client to come back (no link) is ended to make room, from the same
   * source first. False when there is no room: every session in the way is
   * live. Sessions of clients that left hold memory and target connections
   * until reaped; this bounds them, whatever a stranger does.
   */
  makeRoom(source: string, maxSessions: number, maxPerSource: number): boolean {
    const ofSource = () => [...this.#sessions.values()].filter((s) => s.source === source);
    const evictOldestParked = (among: ServerSession[], why: string): boolean => {
      const parked = among.find((s) => !s.engine.linked);
      if (!parked) return false;
      // Once per reason per interval: a stranger opening and dropping
      // sessions made two lines each (177 a second from one address).
      this.#evictions.event(why, "Session {id} ended to make room: {why}", {
        id: parked.secrets.id,
        why,
      });
      const error = new ImmortalError("closed", `ended to make room: ${why}`);
      parked.engine.fail(error, null, { said: true });
      // Forgotten now, whenever its ending completes: the loops below count on it.
      this.#sessions.delete(parked.secrets.id);
      this.evicted++;
      return true;
    };
    while (ofSource().length >= maxPerSource) {
      const why = `${maxPerSource} sessions from ${source} is the limit`;
      if (!evictOldestParked(ofSource(), why)) return false;
    }
    while (this.#sessions.size >= maxSessions) {
      const why = `${maxSessions} sessions is the limit`;
      if (!evictOldestParked([...this.#sessions.values()], why)) return false;
    }
    return true;
  }

  /** Starts an accepted new session on the link its handshake ran on. */
  open(reader: FrameReader, hello: NewSession): ImmortalConn {
    const session = new ServerSession(
      this.#options,
      hello,
      reader,
      (s) => this.#sessions.delete(s.secrets.id),
      (holder, hold) => {
        const holders = this.#holders.get(holder.source) ?? new Set();
        if (hold) holders.add(holder);
        else holders.delete(holder);
        if (holders.size > 0) this.#holders.set(holder.source, holders);
        else this.#holders.delete(holder.source);
      },
    );
    this.#sessions.set(hello.secrets.id, session);
    return session.engine;
  }

  /** The listener closed: sessions on a live link go on, the others end. */
  closeAll(): void {
    for (const session of [...this.#sessions.values()]) session.listenerClosed();
    this.#sessions.clear();
    this.#evictions.flush();
  }
}
