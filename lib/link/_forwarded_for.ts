/**
 * Where a request comes from, behind reverse proxies. Behind one every
 * connection comes from the proxy: a relay's line such as "Refused a node
 * from 127.0.0.1:41234: wrong relay secret" names nobody, and a listener's
 * limits per source would count every client as one. A proxy the operator
 * trusts (`trustedProxies`) names the client in `X-Forwarded-For`; anyone
 * else's header is not believed (a client may write one itself).
 *
 * @module
 */

import { describeValue, isIpv4 } from "../_util.ts";
import { formatAddr } from "./link.ts";

/** What a hop of `X-Forwarded-For` may look like: an address, maybe with a port. */
const HOP = /^[\w.:%\[\]-]{1,64}$/;

/**
 * `text` as one canonical IP address, or null if it is none: brackets and a
 * port dropped, IPv6 in its compressed lower-case form, an IPv4 address
 * mapped into IPv6 as IPv4. Settings, peers and hops are compared in this
 * form (`2001:DB8::5`, `[2001:db8::5]:443` and `2001:db8::5` are one).
 */
export function canonicalIp(text: string): string | null {
  let host = text.trim();
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(host);
  if (bracketed) host = bracketed[1];
  else if (/^[\d.]+:\d+$/.test(host)) host = host.slice(0, host.indexOf(":"));
  if (!host.includes(":")) return isIpv4(host) ? host : null;
  let parsed: string;
  try {
    parsed = new URL(`http://[${host}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
  return mappedIpv4(parsed) ?? parsed;
}

/** `::ffff:a0a:2` (as the URL parser writes a mapped address) as `10.10.0.2`; else null. */
function mappedIpv4(ipv6: string): string | null {
  const match = /^::ffff:([\da-f]{1,4}):([\da-f]{1,4})$/.exec(ipv6);
  if (!match) return null;
  const [high, low] = [parseInt(match[1], 16), parseInt(match[2], 16)];
  return [high >> 8, high & 255, low >> 8, low & 255].join(".");
}

/**
 * The request's source: the connection's peer (`host:port`), or, when that
 * peer is a trusted proxy, the client it names, as `CLIENT (via PEER)`.
 * `trusted` holds canonical addresses ({@linkcode canonicalIp}). Undefined
 * when the server gave no address.
 */
export function requestSource(
  req: Request,
  remoteAddr: Deno.Addr | undefined,
  trusted: readonly string[],
): string | undefined {
  if (remoteAddr === undefined) return undefined;
  const peer = formatAddr(remoteAddr);
  const client = forwardedClient(req, remoteAddr, trusted);
  if (client === null) return peer;
  return client === UNREADABLE ? `${peer} (X-Forwarded-For unreadable)` : `${client} (via ${peer})`;
}

/**
 * What {@linkcode forwardedClient} says of a hop that is no address: not a
 * string, which a hop could be (a hop written `unreadable` is one).
 */
export const UNREADABLE: unique symbol = Symbol("unreadable");

/**
 * The client a trusted proxy at `remoteAddr` names in `X-Forwarded-For`, as
 * written there (an address, maybe with a port), or `UNREADABLE`; null when
 * the peer is not a trusted proxy, or names nobody. `trusted` holds
 * canonical addresses ({@linkcode canonicalIp}).
 */
export function forwardedClient(
  req: Request,
  remoteAddr: Deno.Addr,
  trusted: readonly string[],
): string | typeof UNREADABLE | null {
  const host = "hostname" in remoteAddr ? canonicalIp(remoteAddr.hostname) : null;
  if (host === null || !trusted.includes(host)) return null;
  const header = req.headers.get("x-forwarded-for");
  if (header === null) return null;
  // Each proxy appends the address it was reached from: read from the right,
  // past the trusted ones, the first other is the client (what is left of it
  // anyone may have written).
  const hops = header.split(",").map((hop) => hop.trim()).filter((hop) => hop !== "");
  for (let i = hops.length - 1; i >= 0; i--) {
    const address = canonicalIp(hops[i]);
    if (address !== null && trusted.includes(address)) continue;
    return HOP.test(hops[i]) ? hops[i] : UNREADABLE;
  }
  return null;
}

/**
 * `value`, a list of IP addresses, in their canonical form: a copy (the
 * caller's array may change). A `TypeError` naming `name` for anything else.
 */
export function ipAddresses(name: string, value: unknown): string[] {
  const canonical = Array.isArray(value)
    ? value.map((item) => typeof item === "string" ? canonicalIp(item) : null)
    : [null];
  if (canonical.includes(null)) {
    // A name would never match: connections come from addresses.
    throw new TypeError(`${name} must be an array of IP addresses, got ${describeValue(value)}`);
  }
  return canonical as string[];
}
