/** Slowloris for the flood tests: sockets that send a little and then hold the connection. */

import net from "node:net";

/** Settings of {@linkcode slowloris}. */
export interface SlowlorisOptions {
  /** Address the sockets come from (a 127.0.0.x alias). */
  localAddress: string;
  /** Sockets held at once. */
  count: number;
  /** Times each socket comes back once the server closes it. */
  reconnects: number;
  /** What each socket sends once connected, then never more. */
  payload: Uint8Array;
}

/**
 * `count` sockets to `port` on 127.0.0.1 from `localAddress`, each sending
 * `payload` and then holding the connection, as slowloris does; each one the
 * server closes comes back, up to `reconnects` times, until `stop`.
 */
export function slowloris(port: number, options: SlowlorisOptions) {
  const sockets = new Set<net.Socket>();
  let stopped = false;
  let opened = 0;
  let closedByServer = 0;
  const open = (left: number) => {
    if (stopped) return;
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: options.localAddress });
    opened++;
    sockets.add(socket);
    socket.on("connect", () => socket.write(options.payload));
    socket.on("error", () => {});
    // Whatever the server answers is read and dropped, so its writes never stall.
    socket.on("data", () => {});
    socket.on("close", () => {
      sockets.delete(socket);
      if (stopped) return;
      closedByServer++;
      if (left > 0) open(left - 1);
    });
  };
  for (let i = 0; i < options.count; i++) open(options.reconnects);
  return {
    /** Sockets opened so far, reconnects included. */
    get opened() {
      return opened;
    },
    /** Sockets the server closed (or refused). */
    get closedByServer() {
      return closedByServer;
    },
    /** Closes every socket and stops coming back. */
    async stop() {
      stopped = true;
      await Promise.all(
        [...sockets].map((s) =>
          new Promise<void>((resolve) => {
            if (s.closed) resolve();
            else s.once("close", () => resolve());
            s.destroy();
          })
        ),
      );
    },
  };
}
