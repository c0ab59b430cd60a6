/**
 * A node's side of relay pipes (PROTOCOL.md 2.20): dialing another node by
 * nickname, and accepting the pipes others offer. Each pipe is a link (over
 * WebSocket, or HTTP streaming where WebSocket does not pass) for an
 * immortal session, so a pipe that breaks — the relay restarted, a proxy
 * cut it — is simply replaced by the next one.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { errorMessage } from "../_util.ts";
import { ImmortalError } from "../conn/errors.ts";
import { httpDialer } from "../link/http_dialer.ts";
import { LinkRefused } from "../link/http_stream.ts";
import type { Acceptor, Dialer, Link } from "../link/link.ts";
import { LinkQueue } from "../link/_link_queue.ts";
import { parseRefusal, readJson } from "./_parse.ts";
import { PATHS, PIPE_HEADERS, type PipeFrame } from "./_protocol.ts";
import { RelayRefusedError, type RelayTransportKind } from "./_transport.ts";

const log = getLogger(["immortal", "relay", "pipe"]);

/**
 * How long a node may take to notice that its connection died with the pipe
 * that just failed under it (a relay restarting closes both at once).
 */
const STALE_GRACE_MS = 1000;

/**
 * How long a dial whose peer the relay does not know waits for it to join
 * (once a pipe to it went through): a node's reconnect backoff is at most
 * 5 s a step by default.
 */
const PEER_GRACE_MS = 5000;

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

/** Rejects once `signal` aborts (at once if it has), with its reason. */
function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    const fail = () => reject(signal.reason ?? new Error("aborted"));
    if (signal.aborted) fail();
    else signal.addEventListener("abort", fail, { once: true });
  });
}

/** Who a node is, for the relay: what a pipe request proves. */
export interface NodeIdentity {
  session: string;
  nickname: string;
  token: string;
}

/** What pipes need of their node. */
export interface PipeHost {
  /** The relay's base URL. */
  base: URL;
  /** The node's HTTP client (proxy, CAs), if any. */
  client?: Deno.HttpClient;
  /** The node's identity while it is joined; null while it is not. */
  identity(): NodeIdentity | null;
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
  /** The transport the node's own connection uses now, if connected. */
  transport(): RelayTransportKind | null;
  /** Sends a frame to the relay on the node's connection. */
  refuse(id: string, reason: string): void;
}

/** Links from pipes others opened to this node, for `listen({ acceptor })`. */
export class PipeAcceptor extends LinkQueue implements Acceptor<Deno.NetAddr> {
  readonly addr: Deno.NetAddr;
  /** Every pipe comes from the relay's address, whichever node opened it. */
  readonly relayed = true;

  /** `addr` names the relay, for logs. */
  constructor(addr: Deno.NetAddr) {
    super();
    this.addr = addr;
  }
}

/** A node's pipes: dialers by nickname, and the acceptor of offered pipes. */
export class NodePipes {
  #host: PipeHost;
  #url: URL;
  #acceptor: PipeAcceptor | null = null;
  #accepts: (from: string) => boolean = () => true;

  /** Pipes of the node `host`. */
  constructor(host: PipeHost) {
    this.#host = host;
    this.#url = new URL(PATHS.pipe, host.base);
  }

  /**
   * A dialer of pipes to the node `nickname`: each call opens a new pipe.
   *
   * A call while the node is not joined waits for it (within `signal`), and
   * so does one that failed as if the node's own connection were as dead as
   * the pipe (the relay did not answer, or did not know the node: it
   * restarted, and the node has not noticed yet). Either goes the moment
   * the node is back, not a session's backoff later. Of the calls that
   * waited, only the newest goes: a session races a fresh dial every probe
   * interval while none answers, and each extra pipe would be offered to
   * the peer only to be thrown away. The others wait on until their signal
   * ends (the session aborts them once it has its link). A node that closes
   * fails them with an `ImmortalError` `closed`, so a session over its
   * pipes ends at once.
   *
   * Once a pipe of this dialer went through, a peer the relay does not know
   * (`no-such-node`) is waited for too, for {@linkcode PEER_GRACE_MS}: after
   * a relay restart the two nodes come back one after the other.
   */
  dialer(nickname: string): Dialer {
    let newest = 0;
    let reached = false;
    return async (signal) => {
      let ticket = 0;
      for (;;) {
        if (this.#host.identity() === null) {
          ticket = ++newest;
          await this.#joined(signal);
        }
        if (ticket !== 0 && ticket !== newest) await aborted(signal);
        const generation = this.#host.generation();
        const memberNews = this.#host.memberNews();
        try {
          const link = await this.#open({ [PIPE_HEADERS.to]: nickname }, signal);
          reached = true;
          return link;
        } catch (error) {
          if (signal.aborted) throw error;
          ticket = ++newest;
          if (reached && error instanceof RelayRefusedError && error.code === "no-such-node") {
            if (!(await this.#peerBack(nickname, memberNews, signal))) throw error;
            continue;
          }
          if (!nodeMayBeStale(error)) throw error;
          // Still on the same connection after the grace: the failure was the pipe's own.
          if (!(await this.#rejoined(generation, signal))) throw error;
        }
      }
    };
  }

  /**
   * After the relay did not know the peer `nickname` for a dial that started
   * when the node had heard `memberNews` member lists: true once the node
   * has heard a newer one that has the peer (it may have come while the
   * refusal was on its way); false if none did within
   * {@linkcode PEER_GRACE_MS}. Only news counts: trusting the list as it
   * was would redial into the same refusal, again and again.
   */
  async #peerBack(nickname: string, memberNews: number, signal: AbortSignal): Promise<boolean> {
    const until = performance.now() + PEER_GRACE_MS;
    for (;;) {
      if (this.#host.closed()) throw new ImmortalError("closed", "the relay node is closed");
      if (this.#host.memberNews() > memberNews && this.#host.hasMember(nickname)) return true;
      const left = until - performance.now();
      if (left <= 0) return false;
      await this.#host.nextChange(signal, left);
    }
  }

  /** Resolves once the node is joined; rejects if `signal` aborts or the node closes. */
  async #joined(signal: AbortSignal): Promise<void> {
    while (this.#host.identity() === null) {
      if (this.#host.closed()) throw new ImmortalError("closed", "the relay node is closed");
      await this.#host.nextChange(signal);
    }
  }

  /**
   * After a pipe failed under the node's connection number `generation`:
   * true once the node is joined on a newer one; false if it is still on
   * that one after {@linkcode STALE_GRACE_MS}.
   */
  async #rejoined(generation: number, signal: AbortSignal): Promise<boolean> {
    const until = performance.now() + STALE_GRACE_MS;
    for (;;) {
      if (this.#host.closed()) throw new ImmortalError("closed", "the relay node is closed");
      const joined = this.#host.identity() !== null;
      if (joined && this.#host.generation() > generation) return true;
      const left = until - performance.now();
      // Lost, the node is waited for as long as the dial may take.
      if (!joined) await this.#host.nextChange(signal);
      else if (left <= 0) return false;
      else await this.#host.nextChange(signal, left);
    }
  }

  /**
   * Starts accepting pipes offered by nodes for which `accepts(nickname)`
   * holds; others are refused. Returns the acceptor their links go to.
   */
  listen(accepts: (from: string) => boolean): PipeAcceptor {
    if (this.#acceptor && !this.#acceptor.closed) {
      throw new Error("this node accepts pipes already (close that listener first)");
    }
    const base = this.#host.base;
    this.#acceptor = new PipeAcceptor({
      transport: "tcp",
      hostname: base.hostname,
      port: Number(base.port) || (base.protocol === "https:" ? 443 : 80),
    });
    this.#accepts = accepts;
    return this.#acceptor;
  }

  /** The relay offers a pipe from another node: accept it, or refuse. */
  async offered(frame: PipeFrame): Promise<void> {
    const acceptor = this.#acceptor;
    if (!acceptor || acceptor.closed) return this.#host.refuse(frame.id, "it accepts no pipes");
    if (!this.#accepts(frame.from)) return this.#host.refuse(frame.id, "not accepted");
    try {
      const link = await this.#open({}, AbortSignal.timeout(10_000), frame.id);
      acceptor.push(link);
    } catch (error) {
      log.warn("Could not accept the pipe from {from}: {reason}", {
        from: frame.from,
        reason: errorMessage(error),
      });
    }
  }

  /** Stops accepting pipes. */
  close(): void {
    this.#acceptor?.close();
  }

  /** Opens this end of a pipe; a refusal by the relay is a {@linkcode RelayRefusedError}. */
  async #open(
    extra: Record<string, string>,
    signal: AbortSignal,
    id: string = crypto.randomUUID(),
  ): Promise<Link> {
    const identity = this.#host.identity();
    if (identity === null) throw new Error("not joined to the relay right now");
    const headers = {
      [PIPE_HEADERS.session]: identity.session,
      [PIPE_HEADERS.nickname]: identity.nickname,
      [PIPE_HEADERS.token]: identity.token,
      [PIPE_HEADERS.pipe]: id,
      ...extra,
    };
    // Over WebSocket a refusal shows no reason; the HTTP request that
    // follows it in "auto" does, so "auto" unless only HTTP gets through.
    const transport = this.#host.transport() === "http" ? "http" : "auto";
    const dial = httpDialer({ url: this.#url, client: this.#host.client, transport, headers });
    try {
      return await dial(signal);
    } catch (error) {
      if (!(error instanceof LinkRefused)) throw error;
      const refusal = parseRefusal(readJson(error.body));
      if (refusal === null) throw error;
      throw new RelayRefusedError(refusal.error, refusal.message);
    }
  }
}
