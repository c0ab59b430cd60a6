/**
 * A fresh pre-shared key for sessions.
 *
 * @module
 */

/**
 * A fresh random key for the `key` option of {@linkcode connect} and
 * {@linkcode listen} (and of a tunnel, and of sessions through a relay):
 * 32 random bytes, in hex. Hex, not base64: a key that began with "-" would
 * read as a flag on a command line (`--key`). `cli/tunnel.ts keygen` prints
 * one of these.
 *
 * @example Both ends take the same key
 * ```ts
 * import { connect, generateKey, listen } from "@immortal/sockets";
 *
 * const key = generateKey(); // share it out of band: a file, a secret store
 * using listener = listen({ hostname: "127.0.0.1", port: 0, key });
 * await using client = await connect({ port: listener.addr.port, key });
 * await using server = await listener.accept();
 * ```
 */
export function generateKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
