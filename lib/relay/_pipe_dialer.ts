/**
 * Dialing pipes to one node, for an immortal session that redials: what to
 * do while this node is away from the relay, or just lost it without
 * knowing yet, or while the peer is away.
 *
 * A session races a fresh dial every probe interval while none answers, and
 * aborts the oldest of four; a dial that waited without end would never fail,
 * so the session would never back off. So waits are the dialer's, not the
 * call's: while one is open, new calls join it instead of dialing; when it
 * ends well, the newest waiting call dials (each extra pipe would be offered
 * to the peer only to be thrown away); when it runs out, every waiting call
 * fails with the error that opened it, and the session backs off.
 *
 * @module
 */

import { Changes } from "../_changes.ts";
import { untilAborted } from "../_util.ts";
import { ImmortalError } from "../conn/errors.ts";
import type { Link } from "../link/link.ts";
import { LinkRefused } from "../link/http_stream.ts";
import { RelayRefusedError } from "./_transport.ts";

/**
 * How long a node may take to notice that its connection died with the pipe
 * that just failed under it (a relay restarting closes both at once).
 */
export const STALE_GRACE_MS = 1000;

/**
 * How long a dial whose peer the relay does not know waits for it to join,
 * once a pipe to it went through: a node's reconnect backoff is at most
 * 5 s a step by default.
 */
export const PEER_GRACE_MS = 5000;

/** What a pipe dialer needs of its node. */
export interface DialHost {
  /** Whether the node is joined now. */
  joined(): boolean;
  /** Welcomes so far: which connection to the relay is the node's now. */
  generation(): number;
  /** Whether the node is closed for good. */
  closed(): boolean;
  /** Resolves at the node's next change of state or of members, or after `ms`; rejects if `signal` aborts. */
  nextChange(signal: AbortSignal, ms?: number): Promise<void>;
  /** Whether `nickname` is a member of the node's session, as far as the node knows. */
  hasMember(nickname: string): boolean;
  /** Member lists the node has heard so far (welcomes and joins), a count. */
  memberNews(): number;
}

/** A wait the dialer is in after a failure: over when `ready()`, failed at `until`. */
interface Grace {
  until: number;
  ready(): boolean;
  error: unknown;
  /** Called when it runs out. */
  expired?(): void;
}

/**
 * Whether a failed pipe dial says the node's own connection may be stale:
 * the relay did not answer (not there), or answered that it does not know
 * the node (a fresh relay). Refusals about the pipe itself (no such node,
 * refused, full) say nothing of the node's connection.
 */
function nodeMayBeStale(error: unknown): boolean {
  if (error instanceof RelayRefusedError) return error.code === "unauthorized";
  return !(error instanceof LinkRefused);
}

function nodeClosed(): ImmortalError {
  return new ImmortalError("closed", "the relay node is closed");
}

/** The dials of one `pipeDialer(nickname)`: see the module doc. */
export class PipeDialer {
  #host: DialHost;
  #nickname: string;
  #open: (signal: AbortSignal) => Promise<Link>;
  /** A pipe of this dialer went through: a peer unknown to the relay is then waited for. */
  #reached = false;
  #grace: Grace | null = null;
  /** Waits that ran out so far, and the error of the last. */
  #expiries = 0;
  #lastError: unknown = null;
  /** Tickets of the calls waiting; the highest is the newest. */
  #waiting = new Set<number>();
  /** A call that waited is dialing: the others wait for how it goes. */
  #waitedDialing = false;
  /** Dials that went through after a wait: the calls that waited with them are not needed. */
  #successes = 0;
  #tickets = 0;
  /** The turn or the wait changed: the waiting calls look again. */
  #changes = new Changes();

  /** Dials through `open` for the node `host`, to the peer `nickname`. */
  constructor(host: DialHost, nickname: string, open: (signal: AbortSignal) => Promise<Link>) {
    this.#host = host;
    this.#nickname = nickname;
    this.#open = open;
  }

  /** One dial (see the module doc); rejects with `ImmortalError` `closed` once the node is. */
  async dial(signal: AbortSignal): Promise<Link> {
    for (;;) {
      const waited = await this.#turn(signal);
      const generation = this.#host.generation();
      const memberNews = this.#host.memberNews();
      try {
        // A dial that ignored its abort would hold every later call's turn.
        const link = await untilAborted(this.#open(signal), signal, (late) => late.close());
        this.#reached = true;
        // A pipe went through: neither the node's connection nor the peer is away.
        this.#grace = null;
        if (waited && !signal.aborted) this.#successes++;
        return link;
      } catch (error) {
        if (signal.aborted) throw error;
        const host = this.#host;
        const nickname = this.#nickname;
        const peerAway = this.#reached && error instanceof RelayRefusedError &&
          error.code === "no-such-node";
        if (!peerAway && !nodeMayBeStale(error)) throw error;
        if (this.#grace !== null) continue; // another call's failure opened a wait: join it
        if (peerAway) {
          // After a relay restart the two nodes come back one after the other.
          // Only news counts: trusting the list as it was would redial into
          // the same refusal (and the peer's join may have come before it).
          this.#grace = {
            until: performance.now() + PEER_GRACE_MS,
            ready: () => host.memberNews() > memberNews && host.hasMember(nickname),
            error,
            // Gone for good, it seems: the next dial says so at once.
            expired: () => this.#reached = false,
          };
        } else {
          // Lost with the node's connection, which the node may not know yet:
          // once it is back on a newer one, dial again. Still on the same one
          // after the grace: the failure was the pipe's own.
          this.#grace = {
            until: performance.now() + STALE_GRACE_MS,
            ready: () => host.generation() > generation,
            error,
          };
        }
      } finally {
        if (waited) {
          this.#waitedDialing = false;
          this.#notify();
        }
      }
    }
  }

  /**
   * Returns when this call may dial: at once while the node is joined and no
   * wait is open (false); else once the wait ends well, it is the newest
   * waiting call and no other that waited is dialing (true). Throws the
   * wait's error when it runs out.
   */
  async #turn(signal: AbortSignal): Promise<boolean> {
    if (this.#host.closed()) throw nodeClosed();
    const open = this.#grace;
    if (open !== null && this.#waiting.size === 0 && !this.#waitedDialing) {
      // A wait everyone left (their sessions aborted them) may be over: this
      // call, which did not wait in it, does not fail with its error.
      if (open.ready()) this.#grace = null;
      else if (performance.now() >= open.until) this.#runOut(open);
    }
    if (this.#host.joined() && this.#grace === null && !this.#waitedDialing) return false;
    const ticket = ++this.#tickets;
    const expiries = this.#expiries;
    let successes = this.#successes;
    this.#waiting.add(ticket);
    this.#notify();
    try {
      for (;;) {
        if (this.#host.closed()) throw nodeClosed();
        if (this.#expiries > expiries) throw this.#lastError;
        if (this.#successes > successes) {
          // Another call that waited got its pipe. Of its session, this one
          // is aborted by now (a session aborts its other attempts as soon as
          // one links, in the same turn); of another session (a tunnel client
          // shares its dialer), it goes on after that turn.
          await new Promise((resolve) => setTimeout(resolve, 0));
          signal.throwIfAborted();
          successes = this.#successes;
          continue;
        }
        // Away, the node is waited for as long as the dial may take.
        const newest = ticket === Math.max(...this.#waiting);
        if (!this.#host.joined() || !newest || this.#waitedDialing) {
          await this.#wait(signal);
          continue;
        }
        const grace = this.#grace;
        if (grace === null || grace.ready()) {
          this.#grace = null;
          this.#waitedDialing = true;
          return true;
        }
        const left = grace.until - performance.now();
        if (left <= 0) {
          this.#runOut(grace);
          throw grace.error;
        }
        await this.#wait(signal, left);
      }
    } finally {
      this.#waiting.delete(ticket);
      this.#notify();
    }
  }

  /** The wait `grace` ran out: the calls that waited in it fail with its error. */
  #runOut(grace: Grace): void {
    this.#grace = null;
    this.#expiries++;
    this.#lastError = grace.error;
    grace.expired?.();
  }

  /** Until the node or this dialer changes, or `ms` passed; rejects if `signal` aborts. */
  async #wait(signal: AbortSignal, ms?: number): Promise<void> {
    const stop = new AbortController();
    const either = AbortSignal.any([signal, stop.signal]);
    try {
      await Promise.race([this.#host.nextChange(either, ms), this.#changes.next(either)]);
    } catch (error) {
      if (!stop.signal.aborted) throw error;
    } finally {
      stop.abort();
    }
    signal.throwIfAborted();
  }

  /** Wakes the waiting calls: the turn or the wait changed. */
  #notify(): void {
    this.#changes.notify();
  }
}
