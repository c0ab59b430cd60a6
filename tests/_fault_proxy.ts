// A TCP forwarder that injects real network faults on command, for tests.
//
// Built on node:net because Deno's own sockets cannot send an RST
// (resetAndDestroy sets SO_LINGER 0) nor bind a chosen source address.
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

/** Forwards 127.0.0.1:port <-> target, and breaks links the ways real networks do. */
export class FaultProxy {
  #server: net.Server;
  #pairs = new Set<_Pair>();
  #targetPort: number;
  #refusing = false;
  /** Source address of the proxy's connections to the target (simulates the client moving). */
  upstreamLocalAddress: string | undefined;
  /** Bytes forwarded client -> target so far (replays included). */
  forwardedUp = 0;
  /** Called after each forwarded client -> target chunk. */
  onForwardUp: ((total: number) => void) | undefined;
  /** Links reset so far. */
  resets = 0;

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

  /** While on, new connections are reset at once (the server looks down). */
  refuseNew(on: boolean): void {
    this.#refusing = on;
  }

  /** Closes every connection and the listening socket. */
  async close(): Promise<void> {
    for (const pair of this.#pairs) this.#destroy(pair, false);
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #onConnection(client: net.Socket): void {
    if (this.#refusing) {
      client.resetAndDestroy();
      return;
    }
    client.pause();
    const upstream = net.connect({
      host: "127.0.0.1",
      port: this.#targetPort,
      localAddress: this.upstreamLocalAddress,
    });
    const pair: _Pair = { client, upstream, holed: false };
    this.#pairs.add(pair);
    upstream.once("connect", () => {
      if (!pair.holed) client.resume();
    });
    this.#pipe(pair, client, upstream, true);
    this.#pipe(pair, upstream, client, false);
  }

  #pipe(pair: _Pair, from: net.Socket, to: net.Socket, up: boolean): void {
    from.on("data", (chunk: Uint8Array) => {
      if (pair.holed) return; // swallowed by the black hole
      if (up) {
        this.forwardedUp += chunk.length;
      }
      if (!to.write(chunk)) from.pause();
      if (up) this.onForwardUp?.(this.forwardedUp);
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
