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
 * - `aborted`: the peer aborted the session;
 * - `closed`: closed locally, or the listener was closed;
 * - `protocol`: the peer broke the protocol;
 * - `unreachable`: the first connection could not be made.
 */
export type ImmortalErrorCode =
  | "timeout"
  | "auth"
  | "unknown-session"
  | "rejected"
  | "aborted"
  | "closed"
  | "protocol"
  | "unreachable";

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

/** Errors after which a client stops trying to resume. */
export function _isFatal(error: unknown): boolean {
  return error instanceof ImmortalError &&
    (error.code === "auth" || error.code === "unknown-session" || error.code === "protocol" ||
      error.code === "closed");
}
