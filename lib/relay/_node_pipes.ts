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
import { LogLimiter } from "../_log_limiter.ts";
import { errorMessage, peerText } from "../_util.ts";
import { ImmortalError } from "../conn/errors.ts";
import { httpDialer } from "../link/http_dialer.ts";
import { LinkRefused } from "../link/http_stream.ts";
import { type Acceptor, type Dialer, formatAddr, type Link } from "../link/link.ts";
import { LinkQueue } from "../link/_link_queue.ts";
import { parseRefusal, readJson } from "./_parse.ts";
import { type DialHost, PipeDialer } from "./_pipe_dialer.ts";
import { PATHS, PIPE_HEADERS, type PipeFrame, type RelayErrorCode, relayUrl } from "./_protocol.ts";
import { RelayRefusedError, type RelayTransportKind } from "./_transport.ts";

const log = getLogger(["immortal", "relay", "pipe"]);

/**
 * Refusals of a pipe that stand as the nodes and the relay are set up. Not
 * `no-such-node` (the peer may be starting), nor a full relay or a peer
 * that did not answer in time.
 */
const STANDING_REFUSALS: ReadonlySet<RelayErrorCode> = new Set(["pipe-refused", "not-allowed"]);

/**
 * Offered pipes a node takes at once (each an outgoing connection to the
 * relay until it links): as many as the relay lets one node be an end of
 * (`MAX_PIPES_PER_NODE`), so a relay that keeps its rules never meets it. A
 * relay that flooded offers had the node open a connection per offer,
 * thousands. The rest are refused, `busy`.
 */
export const MAX_ACCEPTS_IN_FLIGHT = 64;
/** How long taking an offered pipe may take. */
const ACCEPT_TIMEOUT_MS = 10_000;

/** Who a node is, for the relay: what a pipe request proves. */
export interface NodeIdentity {
  session: string;
  nickname: string;
  token: string;
}

/** What pipes need of their node. */
export interface PipeHost extends Omit<DialHost, "joined"> {
  /** The relay's base URL. */
  base: URL;
  /** The node's HTTP client (proxy, CAs), if any. */
  client?: Deno.HttpClient;
  /** The node's identity while it is joined; null while it is not. */
  identity(): NodeIdentity | null;
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

/**
 * `link`, named by the node at its other end: its socket's peer is the relay,
 * and a log line that named the relay ("Refused 10.0.0.5:443: wrong key")
 * would blame the wrong host. Named in place: a wrapper would add a call to
 * every read and write of the pipe.
 */
function throughRelay(link: Link, nickname: string): Link {
  const peer = `${nickname} (through the relay at ${formatAddr(link.remoteAddr)})`;
  return Object.defineProperty(link, "peer", { value: peer, enumerable: true });
}

/** A node's pipes: dialers by nickname, and the acceptor of offered pipes. */
export class NodePipes {
  #host: PipeHost;
  #url: URL;
  #acceptor: PipeAcceptor | null = null;
  #accepts: (from: string) => boolean = () => true;
  /** Pipes that could not be taken: a line per node and interval, however many. */
  #logs = new LogLimiter((template, properties) => log.warn(template, properties));
  /** Offered pipes being taken now: {@linkcode MAX_ACCEPTS_IN_FLIGHT} at most. */
  #accepting = 0;
  /** Aborted by close: the pipes being taken are given up with the node. */
  #closing = new AbortController();

  /** Pipes of the node `host`. */
  constructor(host: PipeHost) {
    this.#host = host;
    this.#url = relayUrl(host.base, PATHS.pipe);
  }

  /**
   * A dialer of pipes to the node `nickname`: each call opens a new pipe.
   * While the node is away from the relay (or has just lost it without
   * knowing yet), or the peer it reached before is away, calls wait for them
   * and go the moment they are back, not a session's backoff later; see
   * {@linkcode PipeDialer}. A node that closes fails them with an
   * `ImmortalError` `closed`, so a session over its pipes ends at once.
   *
   * Until one of its pipes has linked, a refusal that stands (the node
   * accepts no pipes, or not ours; the relay's rules) fails as an
   * `ImmortalError` `refused`: a session or a tunnel being opened fails on
   * it at once, where it waited out its connect deadline on an `unreachable`
   * server. After that, a refusal may pass (the name held by another node
   * for a moment: the peer restarting) and is a session's to retry.
   */
  dialer(nickname: string): Dialer {
    const host = this.#host;
    const dialer = new PipeDialer(
      { ...host, joined: () => host.identity() !== null },
      nickname,
      async (signal) =>
        throughRelay(await this.#open({ [PIPE_HEADERS.to]: nickname }, signal), nickname),
    );
    let linked = false;
    return async (signal) => {
      try {
        const link = await dialer.dial(signal);
        linked = true;
        return link;
      } catch (error) {
        if (!linked && error instanceof RelayRefusedError && STANDING_REFUSALS.has(error.code)) {
          throw new ImmortalError("refused", error.message, { cause: error });
        }
        throw error;
      }
    };
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
    if (this.#accepting >= MAX_ACCEPTS_IN_FLIGHT) {
      this.#logs.event(
        "busy",
        "Refused a pipe from {from}: {count} offered pipes are being taken already, more " +
          "than the relay lets a node have (is it broken?)",
        { from: frame.from, count: MAX_ACCEPTS_IN_FLIGHT },
      );
      return this.#host.refuse(frame.id, "busy");
    }
    this.#accepting++;
    try {
      const signal = AbortSignal.any([
        this.#closing.signal,
        AbortSignal.timeout(ACCEPT_TIMEOUT_MS),
      ]);
      const link = await this.#open({}, signal, frame.id);
      acceptor.push(throughRelay(link, frame.from));
    } catch (error) {
      if (this.#closing.signal.aborted) return;
      // Gone from the relay before we took it: its dialer gave up on it (this
      // node was slow: stopped, say, or busy), and dials again if it still
      // wants one. No news; and a node woken up may find dozens at once.
      if (error instanceof RelayRefusedError && error.code === "no-such-stream") {
        log.debug("The pipe from {from} was given up before this node took it", {
          from: frame.from,
        });
        return;
      }
      this.#logs.event(`accept ${frame.from}`, "Could not accept the pipe from {from}: {reason}", {
        from: frame.from,
        reason: errorMessage(error),
      });
    } finally {
      this.#accepting--;
    }
  }

  /** Stops accepting pipes. */
  close(): void {
    this.#closing.abort();
    this.#acceptor?.close();
    this.#logs.flush();
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
      throw new RelayRefusedError(refusal.error, peerText(refusal.message));
    }
  }
}
