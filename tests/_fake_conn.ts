/**
 * A connection that only reads, for unit tests of readers: it hands out
 * `data` in reads of at most `most` bytes and records how much room each
 * read offered.
 *
 * @module
 */

/** A reading connection over `data`, and the room each read offered. */
export function readingConn(
  data: Uint8Array,
  most = Infinity,
): { conn: Deno.Conn; offered: number[] } {
  let at = 0;
  const offered: number[] = [];
  const conn = {
    read(into: Uint8Array): Promise<number | null> {
      offered.push(into.length);
      if (at === data.length) return Promise.resolve(null);
      const n = Math.min(into.length, most, data.length - at);
      into.set(data.subarray(at, at + n));
      at += n;
      return Promise.resolve(n);
    },
  };
  return { conn: conn as unknown as Deno.Conn, offered };
}
