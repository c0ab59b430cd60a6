/**
 * A TCP load balancer without stickiness, for relay tests and benchmarks:
 * each connection goes to a backend of its own, by default the next one in
 * turn, so one node's requests reach different relays.
 *
 * @module
 */

/** Copies `from` to `to` until either ends, then closes both. */
async function pipe(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  try {
    await from.readable.pipeTo(to.writable, { preventClose: true });
    await to.closeWrite();
  } catch {
    // One side went away: the other goes too.
    try {
      from.close();
    } catch { /* closed already */ }
    try {
      to.close();
    } catch { /* closed already */ }
  }
}

/**
 * A balancer on a free loopback port over `ports`: connection `i` (from 0)
 * goes to `ports[pick(i)]`, round robin by default; `connections` counts
 * what it took.
 */
export function loadBalancer(
  ports: number[],
  pick: (i: number) => number = (i) => i % ports.length,
) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Promise<void>>();
  // Idle keep-alive connections of the clients' pools would outlive the test: closed at the end.
  const conns = new Set<Deno.Conn>();
  const closeAll = () => {
    for (const conn of conns) {
      try {
        conn.close();
      } catch { /* closed already */ }
    }
  };
  let next = 0;
  let connections = 0;
  const accepting = (async () => {
    for await (const client of listener) {
      const port = ports[pick(next++)];
      connections++;
      conns.add(client);
      const carried = Deno.connect({ hostname: "127.0.0.1", port }).then(
        (server) => {
          conns.add(server);
          return Promise.all([pipe(client, server), pipe(server, client)]).then(() => {});
        },
        () => client.close(),
      ).finally(() => open.delete(carried));
      open.add(carried);
    }
  })();
  return {
    port: listener.addr.port,
    get connections() {
      return connections;
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting.catch(() => {});
      closeAll();
      await Promise.allSettled([...open]);
    },
  };
}
