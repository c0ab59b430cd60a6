/**
 * Where a node's request comes from, for the relay's log. Behind a reverse
 * proxy every connection comes from the proxy, and a line such as "Refused a
 * node from 127.0.0.1:41234: wrong relay secret" names nobody. A proxy the
 * operator trusts (`trustedProxies`) names the client in `X-Forwarded-For`;
 * anyone else's header is not believed (a client may write one itself).
 *
 * @module
 */

import { formatAddr } from "../link/link.ts";

/** What a hop of `X-Forwarded-For` may look like: an address, maybe with a port. */
const HOP = /^[\w.:%\[\]-]{1,64}$/;

/**
 * The request's source: the connection's peer (`host:port`), or, when that
 * peer is a trusted proxy, the client it names, as `CLIENT (via PEER)`.
 * Undefined when the server gave no address.
 */
export function requestSource(
  req: Request,
  remoteAddr: Deno.Addr | undefined,
  trusted: readonly string[],
): string | undefined {
  if (remoteAddr === undefined) return undefined;
  const peer = formatAddr(remoteAddr);
  const host = "hostname" in remoteAddr ? remoteAddr.hostname.replace(/^::ffff:/, "") : "";
  if (!trusted.includes(host)) return peer;
  const header = req.headers.get("x-forwarded-for");
  if (header === null) return peer;
  // Each proxy appends the address it was reached from: read from the right,
  // past the trusted ones, the first other is the client (what is left of it
  // anyone may have written).
  const hops = header.split(",").map((hop) => hop.trim()).filter((hop) => hop !== "");
  for (let i = hops.length - 1; i >= 0; i--) {
    if (trusted.includes(hops[i])) continue;
    return HOP.test(hops[i]) ? `${hops[i]} (via ${peer})` : `${peer} (X-Forwarded-For unreadable)`;
  }
  return peer;
}
