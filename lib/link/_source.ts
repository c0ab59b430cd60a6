/**
 * Where a link comes from, for the listener's per-source limits.
 *
 * @module
 */

import { canonicalIp } from "./_forwarded_for.ts";

/**
 * Where a link comes from, for per-source limits: the IPv4 address, or the
 * /64 of an IPv6 one (one host usually has a whole /64 to pick from). Null
 * for links of other transports: they have no source to tell apart.
 */
export function sourceOf(addr: Deno.Addr | undefined): string | null {
  if (addr?.transport !== "tcp" && addr?.transport !== "udp") return null;
  // One form per address: `::ffff:7f00:1` is 127.0.0.1, `2001:DB8::1` and
  // `2001:db8:0::1` one address (a zone, which the parser refuses, is cut below).
  const host = canonicalIp(addr.hostname) ?? addr.hostname.replace(/^::ffff:/, "");
  if (!host.includes(":")) return host;
  const groups = expandIpv6(host);
  return groups === null ? host : `${groups.slice(0, 4).join(":")}::/64`;
}

/** The eight groups of an IPv6 address, or null if it is not one we can read. */
function expandIpv6(host: string): string[] | null {
  const [head, tail, ...rest] = host.replace(/%.*$/, "").split("::");
  if (rest.length > 0) return null;
  const left = head ? head.split(":") : [];
  const right = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const missing = 8 - left.length - right.length;
  if (missing < 0 || (tail === undefined && missing !== 0)) return null;
  return [...left, ...Array(missing).fill("0"), ...right];
}
