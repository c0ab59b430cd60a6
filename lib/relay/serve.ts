/**
 * A ready-to-run relay server: {@linkcode serveRelay}.
 *
 * @module
 */

import type { RelayOptions } from "./options.ts";
import { Relay } from "./relay.ts";

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
}

/** A running relay server. */
export interface RelayServer extends AsyncDisposable {
  /** The relay (stats, or mount it elsewhere too). */
  readonly relay: Relay;
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** Resolves once the server has shut down. */
  readonly finished: Promise<void>;
  /** Disconnects every node and stops listening. */
  shutdown(): Promise<void>;
}

/**
 * Starts a relay on `Deno.serve`.
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
  if ((options.cert === undefined) !== (options.key === undefined)) {
    throw new TypeError("HTTPS needs both cert and key");
  }
  const relay = new Relay(options);
  const server = Deno.serve({
    hostname: options.hostname ?? "0.0.0.0",
    port: options.port ?? 8080,
    ...(options.cert ? { cert: options.cert, key: options.key! } : {}),
    onListen: (addr) => options.onListen?.(addr as Deno.NetAddr),
    onError: () => new Response("internal error", { status: 500 }),
  }, (req, info) => relay.handle(req, info));
  const shutdown = async () => {
    relay.close();
    await server.shutdown();
  };
  return {
    relay,
    addr: server.addr as Deno.NetAddr,
    finished: server.finished,
    shutdown,
    [Symbol.asyncDispose]: shutdown,
  };
}
