/**
 * Socket options every TCP link gets.
 *
 * @module
 */

/** Turns Nagle off and keep-alive on; a socket that already died fails on first use. */
export function tuneTcp(conn: Deno.TcpConn): void {
  try {
    conn.setNoDelay(true);
    conn.setKeepAlive(true);
  } catch {
    // A connection that died before we configured it fails on first use.
  }
}
