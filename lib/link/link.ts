/**
 * The transport abstraction. A Link is one disposable byte pipe that may die
 * at any moment; everything above treats any failure of it as "reconnect".
 *
 * Links expose `read`/`write` (the shape of `Deno.Reader`/`Deno.Writer`)
 * rather than Web Streams: on loopback TCP, `Deno.Conn` moves ~4.5 GB/s with
 * `read`/`write` but ~1.5 GB/s through `readable`/`writable`, and the link
 * sits on every byte's path. Web Streams are offered where applications meet
 * the library (`ImmortalConn.readable`/`writable`).
 *
 * @module
 */

import { hostPort } from "../_util.ts";

/** One byte pipe between two peers (TCP, TLS, WebSocket, relay pipe, ...). */
export interface Link {
  /**
   * Reads into `buffer`; resolves to the count of bytes read, or `null` at
   * end of stream. Rejects when the link fails or is closed. A non-empty
   * `buffer` gets at least one byte, unless what arrived was a message with
   * none: readers loop on 0, so a link that returned 0 without waiting for
   * anything would keep them (and every timer) spinning.
   */
  read(buffer: Uint8Array): Promise<number | null>;
  /**
   * Writes all of `data`; rejects when the link fails or is closed. As with
   * `Deno.Conn.write`, `data` must not change until the promise settles: a
   * link may read it only when its turn to be written comes.
   */
  write(data: Uint8Array): Promise<void>;
  /**
   * Closes the link; idempotent. Pending reads settle; a pending write may
   * still complete afterwards (closing a Deno socket does not cancel its
   * writes), so a writer must not assume it was cut short.
   */
  close(): void;
  /**
   * Ends this side's sending while reads go on: TCP's FIN (after TLS's
   * close_notify), or, where the transport has no such thing, resolves once
   * what was written has reached the peer (an HTTP link's POSTs answered).
   * Nothing may be written after it. A link closed whole with input unread
   * is reset, and a reset can destroy the last frames sent before the peer
   * reads them (a session's `close`). Optional.
   */
  closeWrite?(): Promise<void>;
  /** Local address, when the transport has one. */
  readonly localAddr?: Deno.Addr;
  /** Remote address, when the transport has one. */
  readonly remoteAddr?: Deno.Addr;
  /**
   * Who is at the other end, in words, where the remote address does not
   * say it: a node whose pipe comes through a relay (the socket's peer is
   * the relay). Logs name the peer by it.
   */
  readonly peer?: string;
}

/**
 * Makes a new Link to the server (client side). The signal aborts a dial that
 * takes too long or is no longer wanted.
 */
export type Dialer = (signal: AbortSignal) => Promise<Link>;

/**
 * Yields Links as peers connect (server side). `A` is the type of the
 * address peers dial: `Deno.NetAddr` for TCP and TLS acceptors.
 */
export interface Acceptor<A extends Deno.Addr = Deno.Addr> {
  /**
   * Waits for the next Link; rejects once the acceptor is closed, with
   * `Deno.errors.BadResource`: a listener over it then ends. Any other
   * rejection is taken as passing (out of descriptors) and retried.
   */
  accept(): Promise<Link>;
  /** Stops accepting; idempotent. */
  close(): void;
  /** The address peers dial. */
  readonly addr: A;
  /**
   * Every link comes through one peer that carries many others' (a relay):
   * the links' address is that peer's, so a listener limits no "source";
   * and that peer could read, change or stand in the middle of what they
   * carry, so `listen` over it needs a `key` and takes encrypted sessions
   * unless given `encrypt: false`.
   */
  readonly relayed?: boolean;
}

/**
 * The address of the server at `url` (http, https, ws or wss), as a link to
 * it names its peer where no socket of ours tells (fetch, Deno's WebSocket):
 * through a proxy too, it is the server the link speaks to.
 */
export function urlAddr(url: URL): Deno.NetAddr {
  const secure = url.protocol === "https:" || url.protocol === "wss:";
  return {
    transport: "tcp",
    hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: url.port === "" ? (secure ? 443 : 80) : Number(url.port),
  };
}

/** Formats an address for logs and messages, e.g. `127.0.0.1:4000` or `[::1]:4000`. */
export function formatAddr(addr: Deno.Addr | undefined): string {
  if (!addr) return "?";
  // By its fields, not its transport: a TLS connection's address (Deno 2.9)
  // has a hostname and a port but no transport.
  if ("hostname" in addr && "port" in addr) return hostPort(addr.hostname, addr.port);
  if ("path" in addr) return addr.path;
  return String(addr.transport);
}

/**
 * The other end of a link, for a log line: its name where it has one (see
 * {@linkcode Link.peer}), else its address.
 *
 * @example
 * ```ts
 * import { describePeer } from "@immortal/sockets/link";
 * import assert from "node:assert/strict";
 *
 * assert.equal(describePeer({ peer: "c3 (through the relay)" }), "c3 (through the relay)");
 * assert.equal(
 *   describePeer({ remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 22 } }),
 *   "127.0.0.1:22",
 * );
 * ```
 */
export function describePeer(link: Pick<Link, "peer" | "remoteAddr">): string {
  return link.peer ?? formatAddr(link.remoteAddr);
}
