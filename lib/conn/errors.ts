/**
 * The error type of immortal sessions.
 *
 * @module
 */

/**
 * Why a session ended abnormally:
 * - `timeout`: the link stayed down longer than the resume timeout;
 * - `auth`: a key or resume proof was refused (by either side);
 * - `unknown-session`: the server no longer knows the session;
 * - `rejected`: the server refused for another reason (busy, version);
 * - `refused`: the way to the server refused us, and will go on refusing as
 *   it is set up (through a relay: a node that accepts no pipes, or none of
 *   ours; the relay's rules);
 * - `aborted`: the peer aborted the session;
 * - `closed`: closed locally, or the listener was closed;
 * - `protocol`: the peer broke the protocol (or, at the first connection,
 *   does not speak it: another kind of server);
 * - `tls`: TLS with the server failed at the first connection (a plain
 *   server, or a certificate not trusted);
 * - `unreachable`: the first connection could not be made;
 * - `permission`: Deno did not grant the permission to make it (waiting
 *   will not help: run with the `--allow-net` it names).
 */
export type ImmortalErrorCode =
  | "timeout"
  | "auth"
  | "unknown-session"
  | "rejected"
  | "refused"
  | "aborted"
  | "closed"
  | "protocol"
  | "tls"
  | "unreachable"
  | "permission";

/** An error that ends an immortal session; `code` says why. */
export class ImmortalError extends Error {
  /** Machine-readable reason. */
  readonly code: ImmortalErrorCode;

  /** Creates an error with a code and a message a person can act on. */
  constructor(code: ImmortalErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ImmortalError";
    this.code = code;
  }
}

/** The reason a session's close frame gives when its application closed it. */
export const APPLICATION_CLOSE = "closed by the application";

/**
 * Whether `error` ended a session because the peer's application closed it
 * (a client exiting): news for this side, not a fault. Not any abort: a
 * peer that aborts for a protocol error is worth a warning.
 */
export function closedByPeer(error: unknown): boolean {
  return error instanceof ImmortalError && error.code === "aborted" &&
    DELIBERATE_ENDS.some((reason) => error.message.endsWith(`: ${reason}`));
}

/** Who may say it is shutting down: a tunnel's two ends. */
type ShuttingDown = "tunnel server" | "tunnel client";

/** The reason a program shutting down gives its peers. */
export function shuttingDown(who: ShuttingDown): string {
  return `the ${who} is shutting down`;
}

/** The reasons of a peer that ended a session on purpose: its news, not a fault. */
const DELIBERATE_ENDS = [
  APPLICATION_CLOSE,
  shuttingDown("tunnel server"),
  shuttingDown("tunnel client"),
];
