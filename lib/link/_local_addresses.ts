/**
 * Whether a link's local address is still ours. When the machine's address
 * changes (a new Wi-Fi network, a DHCP renewal, a VPN going down), a TCP
 * connection bound to the old address is dead, but nothing tells the socket:
 * its packets just stop leaving. The interface list tells us at once, so a
 * session can replace the link without waiting for heartbeats to go silent.
 *
 * Reading the interfaces needs `--allow-sys=networkInterfaces`; without it
 * the check is off (heartbeats still catch the dead link).
 *
 * @module
 */

/** The interface list is read at most this often, however many links ask. */
const REFRESH_MS = 200;

let cached: Set<string> | null = null;
let cachedAt = -Infinity;
let allowed: boolean | undefined;

function mayRead(): boolean {
  if (allowed === undefined) {
    try {
      allowed = Deno.permissions.querySync({ name: "sys", kind: "networkInterfaces" }).state ===
        "granted";
    } catch {
      allowed = false;
    }
  }
  return allowed;
}

function addresses(now: number): Set<string> | null {
  if (now - cachedAt >= REFRESH_MS) {
    cachedAt = now;
    try {
      cached = new Set(Deno.networkInterfaces().map((i) => i.address.replace(/%.*$/, "")));
    } catch {
      cached = null; // revoked or unsupported: say nothing rather than guess
    }
  }
  return cached;
}

/**
 * True when `addr` is a TCP address this machine no longer has. Loopback and
 * wildcard addresses never go away, and when the interfaces cannot be read the
 * answer is false.
 */
export function localAddressGone(addr: Deno.Addr | undefined, now = performance.now()): boolean {
  if (addr?.transport !== "tcp" || !mayRead()) return false;
  const host = addr.hostname.replace(/^::ffff:/, "").replace(/%.*$/, "");
  // All of 127.0.0.0/8 is local on Linux, though only 127.0.0.1 is listed.
  if (host.startsWith("127.") || host === "::1" || host === "0.0.0.0" || host === "::") {
    return false;
  }
  const known = addresses(now);
  return known !== null && !known.has(host);
}
