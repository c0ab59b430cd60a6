/**
 * Where a relay of a cluster listens for the others (`clusterAddress`):
 * parsed and checked, so that a bad one is refused before anything listens.
 *
 * @module
 */

const WILDCARDS = ["0.0.0.0", "::", "[::]", ""];

/** The peer listener's address: `host:port`, `[v6]:port` or `host`; see `clusterAddress`. */
export function clusterAddress(
  address: string | undefined,
  hostname: string,
  name = "clusterAddress",
): { hostname: string; port: number } {
  if (address === undefined) {
    return { hostname: WILDCARDS.includes(hostname) ? "127.0.0.1" : hostname, port: 0 };
  }
  const match = /^(\[[^\]]+\]|[^:\[\]]+)(?::(\d{1,5}))?$/.exec(address);
  const port = Number(match?.[2] ?? 0);
  if (!match || port > 65535) {
    throw new RangeError(`${name} must be host:port or host, got "${address}"`);
  }
  const host = match[1].replace(/^\[|\]$/g, "");
  if (WILDCARDS.includes(host)) {
    throw new RangeError(
      `${name} is told to the other relays, so it must be an address they reach, not "${host}"`,
    );
  }
  return { hostname: host, port };
}
