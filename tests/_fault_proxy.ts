// A TCP forwarder that injects real network faults on command, for tests.
//
// Built on node:net because Deno's own sockets cannot send an RST
// (resetAndDestroy sets SO_LINGER 0) nor bind a chosen source address.
//
// Faults are fired by progress (bytes forwarded) or by events, never by a
// clock: see {@linkcode FaultProxy.cutEvery}.
import net from "node:net";

interface _Pair {
  client: net.Socket;
  upstream: net.Socket;
  holed: boolean;
}

/** Options of {@linkcode FaultProxy.start}. */
export interface FaultProxyOptions {
  /** Port the proxy forwards to on 127.0.0.1. */
  targetPort: number;
  /** Address the proxy listens on. Default 127.0.0.1. */
  hostname?: string;
}

/** Which way bytes go: client -> target ("up") or target -> client ("down"). */
export type Direction = "up" | "down";

/** Options of {@linkcode FaultProxy.cutEvery}. */
export interface CutEveryOptions {
  /** Fault `k` (1-based) is due once `k * bytes` have been forwarded in `direction` (replays included). */
  bytes: number;
  /** At most this many faults; the cutter stops by itself after the last. */
  max: number;
  /** Default "up". */
  direction?: Direction;
  /**
   * A due fault waits until this holds (checked at each forwarded chunk),
   * e.g. "the session is connected", so that no fault lands in a handshake.
   */
  when?: () => boolean;
  /** The fault number `index` (0-based); returns how many links it hit. Default: {@linkcode FaultProxy.reset}. */
  fault?: (index: number) => number;
}

/** Faults fired by {@linkcode FaultProxy.cutEvery}; disposing it stops it. */
export interface Cutter extends Disposable {
  /** Faults that hit at least one link so far. */
  readonly count: number;
  /** Bytes forwarded (in the cutter's direction) when each fault fired. */
  readonly at: readonly number[];
  /** Stops firing; returns the final count. Nothing fires after this. */
  stop(): number;
}

/** Forwards 127.0.0.1:port <-> target, and breaks links the ways real networks do. */
export class FaultProxy {
  #server: net.Server;
  #pairs = new Set<_Pair>();
  #targetPort: number;
  #refusing = false;
  #onRefused: (() => void) | undefined;
  #watchers = new Set<(event: Direction) => void>();
  /** Source address of the proxy's connections to the target (simulates the client moving). */
  upstreamLocalAddress: string | undefined;
  /** Bytes forwarded client -> target so far (replays included). */
  forwardedUp = 0;
  /** Bytes forwarded target -> client so far (replays included). */
  forwardedDown = 0;
  /** Called after each forwarded client -> target chunk. */
  onForwardUp: ((total: number) => void) | undefined;
  /** Links reset so far. */
  resets = 0;
  /** Sees every forwarded chunk, as forwarded (for tests that look at the bytes on the path). */
  tap: ((chunk: Uint8Array, direction: Direction) => void) | undefined;
  /** Bytes flipped so far by {@linkcode FaultProxy.corruptNext}. */
  corrupted = 0;
  #corruptPending = { up: false, down: false };

  private constructor(server: net.Server, targetPort: number) {
    this.#server = server;
    this.#targetPort = targetPort;
    server.on("connection", (socket: net.Socket) => this.#onConnection(socket));
  }

  /** Starts a proxy on a free port. */
  static async start(options: FaultProxyOptions): Promise<FaultProxy> {
    const server = net.createServer();
    const proxy = new FaultProxy(server, options.targetPort);
    await new Promise<void>((resolve) =>
      server.listen(0, options.hostname ?? "127.0.0.1", resolve)
    );
    return proxy;
  }

  /** Port clients dial. */
  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  /** Number of open forwarded connections. */
  get connections(): number {
    return this.#pairs.size;
  }

  /** Bytes forwarded in `direction` so far. */
  forwarded(direction: Direction): number {
    return direction === "up" ? this.forwardedUp : this.forwardedDown;
  }

  /** When each connection came in (refused ones too), in order. */
  readonly acceptedAt: number[] = [];
  #acceptWatchers = new Set<() => void>();

  /** Resolves once `n` connections have come in since the proxy started. */
  accepted(n: number): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (this.acceptedAt.length < n) return;
        this.#acceptWatchers.delete(check);
        resolve();
      };
      this.#acceptWatchers.add(check);
      check();
    });
  }

  /** Sends an RST both ways on every open connection. */
  reset(): number {
    let n = 0;
    for (const pair of this.#pairs) {
      this.#destroy(pair, true);
      n++;
    }
    this.resets += n;
    return n;
  }

  /** Stops forwarding on every open connection, silently: no FIN, no RST, sockets stay open. */
  blackhole(): number {
    let n = 0;
    for (const pair of this.#pairs) {
      if (pair.holed) continue;
      pair.holed = true;
      pair.client.pause();
      pair.upstream.pause();
      n++;
    }
    return n;
  }

  /**
   * Flips one bit in the middle of the next chunk forwarded in `direction`:
   * a byte changed on the path, as a broken middlebox or an attacker would.
   * Returns 1 (a fault for {@linkcode FaultProxy.cutEvery}).
   */
  corruptNext(direction: Direction): number {
    this.#corruptPending[direction] = true;
    return 1;
  }

  /**
   * While on, new connections are reset at once (the server looks down);
   * `onRefused` runs at each, right after its reset (to fire a fault by that event).
   */
  refuseNew(on: boolean, onRefused?: () => void): void {
    this.#refusing = on;
    this.#onRefused = on ? onRefused : undefined;
  }

  /**
   * Fires a fault (a reset unless `fault` says otherwise) each time another
   * `bytes` have been forwarded in `direction`, at most `max` times. Faults
   * fire right after a chunk was forwarded on a live link, so each one hits
   * that link at least; one that hits nothing is not counted and retried at
   * the next chunk. If at least `max * bytes` (plus what `when` may defer) pass
   * before the transfer ends, exactly `max` faults happen, all during it.
   */
  cutEvery(options: CutEveryOptions): Cutter {
    const { bytes, max, direction = "up", when = () => true, fault = () => this.reset() } = options;
    if (!(bytes > 0) || !Number.isInteger(max) || max < 1) {
      throw new RangeError(`cutEvery needs bytes > 0 and an integer max >= 1`);
    }
    const at: number[] = [];
    const watcher = (event: Direction) => {
      const total = this.forwarded(direction);
      if (event !== direction || total < (at.length + 1) * bytes || !when()) return;
      if (fault(at.length) === 0) return;
      at.push(total);
      if (at.length === max) this.#watchers.delete(watcher);
    };
    this.#watchers.add(watcher);
    const stop = () => {
      this.#watchers.delete(watcher);
      return at.length;
    };
    return {
      get count() {
        return at.length;
      },
      at,
      stop,
      [Symbol.dispose]: stop,
    };
  }

  /** Closes every connection and the listening socket. */
  async close(): Promise<void> {
    this.#watchers.clear();
    for (const pair of this.#pairs) this.#destroy(pair, false);
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #notify(event: Direction): void {
    for (const watcher of this.#watchers) watcher(event);
  }

  #onConnection(client: net.Socket): void {
    this.acceptedAt.push(performance.now());
    for (const watcher of [...this.#acceptWatchers]) watcher();
    if (this.#refusing) {
      client.resetAndDestroy();
      this.#onRefused?.();
      return;
    }
    client.pause();
    // A real router adds no Nagle delay: without these, a small frame right
    // behind another waits for the peer's delayed ACK at this hop only.
    client.setNoDelay(true);
    const upstream = net.connect({
      host: "127.0.0.1",
      port: this.#targetPort,
      localAddress: this.upstreamLocalAddress,
      noDelay: true,
    });
    const pair: _Pair = { client, upstream, holed: false };
    this.#pairs.add(pair);
    upstream.once("connect", () => {
      if (!pair.holed) client.resume();
    });
    this.#pipe(pair, client, upstream, "up");
    this.#pipe(pair, upstream, client, "down");
  }

  #pipe(pair: _Pair, from: net.Socket, to: net.Socket, direction: Direction): void {
    from.on("data", (data: Uint8Array) => {
      if (pair.holed || !this.#pairs.has(pair)) return; // swallowed by the black hole, or cut
      let chunk = data;
      if (this.#corruptPending[direction]) {
        this.#corruptPending[direction] = false;
        chunk = Uint8Array.from(data);
        chunk[chunk.length >> 1] ^= 0x10;
        this.corrupted++;
      }
      this.tap?.(chunk, direction);
      if (direction === "up") this.forwardedUp += chunk.length;
      else this.forwardedDown += chunk.length;
      if (!to.write(chunk)) from.pause();
      if (direction === "up") this.onForwardUp?.(this.forwardedUp);
      this.#notify(direction);
    });
    to.on("drain", () => {
      if (!pair.holed) from.resume();
    });
    from.on("end", () => {
      if (!pair.holed) to.end();
    });
    from.on("error", () => this.#destroy(pair, true));
    from.on("close", () => {
      if (!pair.holed) this.#destroy(pair, false);
    });
  }

  #destroy(pair: _Pair, reset: boolean): void {
    if (!this.#pairs.delete(pair)) return;
    for (const socket of [pair.client, pair.upstream]) {
      if (socket.destroyed) continue;
      if (reset && !socket.connecting) socket.resetAndDestroy();
      else socket.destroy();
    }
  }
}
