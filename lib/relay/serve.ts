/**
 * A ready-to-run relay server: {@linkcode serveRelay}.
 *
 * @module
 */

import { clusterAddress } from "./_cluster_address.ts";
import { clusterRefusals, peerHandlers } from "./_forward.ts";
import { HttpServer, type HttpServerOptions, serverStats } from "./_http_server.ts";
import { pipeEndpoints } from "./_pipes.ts";
import { duration, relaySettings } from "./_settings.ts";
import type { RelayOptions } from "./options.ts";
import { Relay } from "./relay.ts";
import { errorMessage, hostPort, isNotCapable } from "../_util.ts";

/** Where and how {@linkcode serveRelay} listens, plus the relay's own settings. */
export interface ServeRelayOptions extends RelayOptions {
  /** Address to listen on. Default `0.0.0.0`. */
  hostname?: string;
  /** Port to listen on; `0` picks one. Default 8080. */
  port?: number;
  /** Serve HTTPS with this certificate chain (PEM); needs `key`. */
  cert?: string;
  /** Private key (PEM) of `cert`. */
  key?: string;
  /** Called once listening. */
  onListen?: (addr: Deno.NetAddr) => void;
  /**
   * Let other processes listen on the same address and port (`SO_REUSEPORT`,
   * Linux: the kernel spreads new connections over them). Several relays on
   * one machine that share their sessions through `redis` use this. Deno
   * counts it as unstable on `Deno.listen`: run with `--unstable-net`.
   * Default `false`.
   */
  reusePort?: boolean;
  /**
   * A connection must send its first complete request head within this many
   * ms, or it is closed. Default 10000.
   */
  headerTimeout?: number;
  /**
   * A connection may wait this many ms between requests, and take as long
   * for a request body; a connection that carries a joined node is never
   * idle (keep-alives cross it every second). Default 60000.
   */
  idleTimeout?: number;
  /**
   * Most connections that carry no joined node (still sending a request,
   * between requests, or a WebSocket before its hello). At the cap, a new
   * connection evicts the oldest unjoined connection of the source (an IP
   * address, or an IPv6 /64) that holds the most. Keep it well below the
   * process's descriptor limit. Default 512.
   */
  maxUnjoined?: number;
  /**
   * With `redis`: where this relay listens for the other relays of its
   * cluster (`host:port`, `host` for any free port), so that a pipe can join
   * nodes on different relays. Plain HTTP, authenticated by a key the
   * cluster keeps in Redis: use an address on the relays' private network.
   * The relay tells the others this address as it is, so it must be one
   * they can reach (not `0.0.0.0`). Default: `hostname` on a free port, or
   * `127.0.0.1` on a free port when `hostname` is a wildcard (relays on one
   * machine).
   */
  clusterAddress?: string;
}

/** A running relay server. */
export interface RelayServer extends AsyncDisposable {
  /** The relay (stats, or mount it elsewhere too). */
  readonly relay: Relay;
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** With `redis`: where the other relays of the cluster reach this one. */
  readonly clusterAddr?: Deno.NetAddr;
  /**
   * Resolves once the server has shut down. With `redis`, rejects (and the
   * server stops) when Redis refuses this relay for a reason that trying
   * again will not mend: a wrong password, a permission Deno was not given;
   * also after it worked until then (its password changed, say): a relay
   * Redis refuses can do nothing for its nodes, and says so by ending.
   */
  readonly finished: Promise<void>;
  /** Disconnects every node and stops listening. */
  shutdown(): Promise<void>;
}

/**
 * What `finished` rejects with when Redis refuses the relay for good. The
 * relay logged it, at error level, as it happened (not part of the public
 * API: the CLI exits on it without saying it twice).
 */
export class RefusedByRedis extends Error {}

/**
 * Starts a relay on its own HTTP/1.1 server (`Deno.listen`, or
 * `Deno.listenTls` with `cert` and `key`): unlike `Deno.serve`, it sees every
 * connection from `accept` on, so it can time out and cap the ones that
 * carry no node, and survive running out of descriptors.
 *
 * @example A relay on a free loopback port
 * ```ts
 * import { serveRelay } from "@immortal/sockets/relay";
 * import assert from "node:assert/strict";
 *
 * await using server = serveRelay({ hostname: "127.0.0.1", port: 0, secret: "s3cret" });
 * const res = await fetch(`http://127.0.0.1:${server.addr.port}/healthz`);
 * assert.equal(res.status, 200);
 * await res.body?.cancel();
 * // Leaving the block shuts the server down.
 * ```
 */
export function serveRelay(options: ServeRelayOptions = {}): RelayServer {
  const serverOptions = serverSettings(options);
  if (options.clusterAddress !== undefined && options.redis === undefined) {
    throw new TypeError("clusterAddress is for relays sharing sessions: it needs redis");
  }
  const peerAddress = options.redis === undefined
    ? null
    : clusterAddress(options.clusterAddress, serverOptions.hostname);
  const relay = new Relay(options);
  let server: HttpServer;
  try {
    server = new HttpServer((req, info) => relay.handle(req, info), {
      ...serverOptions,
      maxMessageBytes: relaySettings(options).maxMessageBytes,
    });
  } catch (error) {
    relay.close(); // its keep-alive timer runs already
    throw error;
  }
  serverStats.set(relay, () => server.stats);
  let peers: HttpServer | undefined;
  if (peerAddress !== null) {
    const pipes = pipeEndpoints.get(relay)!;
    const fromPeers = peerHandlers.get(relay)!;
    try {
      peers = new HttpServer(fromPeers, {
        ...serverOptions,
        ...peerAddress,
        cert: undefined,
        key: undefined,
        reusePort: false,
        maxMessageBytes: relaySettings(options).maxMessageBytes,
      });
    } catch (error) {
      relay.close();
      server.shutdown();
      const { hostname, port } = peerAddress;
      // A relay on Redis needs more than its own port: say all of it at once.
      if (isNotCapable(error)) {
        throw new Error(
          `no net permission to listen for the other relays of the cluster on ${
            port === 0 ? `a free port of ${hostname}` : hostPort(hostname, port)
          }: a relay on Redis listens for them and reaches the Redis server besides its own ` +
            `port; allow all three (a cluster on this machine: --allow-net=${hostname}), or ` +
            "choose the port (--cluster-address)",
          { cause: error },
        );
      }
      throw new Error(
        `cannot listen for the other relays of the cluster on ${hostPort(hostname, port)}: ${
          errorMessage(error)
        }`,
        { cause: error },
      );
    }
    const { hostname, port } = peers.addr;
    pipes.advertise(`http://${hostPort(hostname, port)}`);
  }
  options.onListen?.(server.addr);
  const shutdown = async () => {
    relay.close();
    await Promise.all([server.shutdown(), peers?.shutdown()]);
  };
  // Redis refusing this relay for good stops it; `finished` then rejects,
  // once the server is down, as it would resolve on any other end.
  let refusal: { error: Error; stopped: Promise<void> } | null = null;
  clusterRefusals.set(relay, (reason) => {
    refusal ??= { error: new RefusedByRedis(reason), stopped: shutdown() };
  });
  const finished = server.finished.then(async () => {
    if (refusal === null) return;
    await refusal.stopped;
    throw refusal.error;
  });
  // Only a caller that waits for the end hears why: nobody else must crash on it.
  finished.catch(() => {});
  return {
    relay,
    addr: server.addr,
    ...(peers ? { clusterAddr: peers.addr } : {}),
    finished,
    shutdown,
    [Symbol.asyncDispose]: shutdown,
  };
}

/**
 * The HTTP server's settings of `options`, defaults filled in and checked:
 * what {@linkcode serveRelay} serves with (and the CLI logs).
 */
export function serverSettings(
  options: ServeRelayOptions,
): Omit<HttpServerOptions, "maxMessageBytes"> {
  if ((options.cert === undefined) !== (options.key === undefined)) {
    throw new TypeError("HTTPS needs both cert and key");
  }
  const positive = (name: string, value: number) => {
    if (!Number.isFinite(value) || value <= 0) {
      throw new RangeError(`${name} must be a positive number, got ${value}`);
    }
    return value;
  };
  return {
    hostname: options.hostname ?? "0.0.0.0",
    port: options.port ?? 8080,
    cert: options.cert,
    key: options.key,
    headerTimeout: duration("headerTimeout", options.headerTimeout ?? 10_000),
    idleTimeout: duration("idleTimeout", options.idleTimeout ?? 60_000),
    maxUnjoined: positive("maxUnjoined", options.maxUnjoined ?? 512),
    reusePort: options.reusePort ?? false,
  };
}
