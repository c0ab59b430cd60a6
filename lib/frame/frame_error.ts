/**
 * The one error type the frame decoder throws.
 *
 * @module
 */

/** Malformed, oversized or unknown input on a link. */
export class FrameError extends Error {
  /** Creates a frame error with a message saying what was wrong. */
  constructor(message: string) {
    super(message);
    this.name = "FrameError";
  }
}
