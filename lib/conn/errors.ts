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
