/**
 * HTTP plumbing shared by the relay's router and its two endpoints: refused
 * requests, bounded request bodies, and the frame size limit.
 *
 * @module
 */

import { collectBytes, errorMessage } from "../_util.ts";
import { HttpError } from "./_http1_request.ts";
import { type Hub, JoinRefused } from "./_hub.ts";
import {
  refusalResponse,
  type RelayChallenge,
  type RelayErrorCode,
  SECRET_HEADER,
} from "./_protocol.ts";

const encoder = new TextEncoder();

/** Counts a refused request and answers it with a status and a JSON body. */
export function refuseRequest(
  hub: Hub,
  status: number,
  code: RelayErrorCode,
  message: string,
  challenge?: RelayChallenge,
): Response {
  hub.refuse(code);
  return refusalResponse(status, code, message, challenge);
}

/**
 * The answer to a request whose body `readBody` could not take (`error`):
 * 413 only for one too large; 400 with `badCode` for text that is not UTF-8,
 * 400 for broken framing; a client gone mid-body is no refusal to count.
 */
export function bodyRefusal(hub: Hub, error: unknown, badCode: RelayErrorCode): Response {
  if (error instanceof BodyTooLarge) return refuseRequest(hub, 413, "too-large", error.message);
  if (error instanceof BodyNotUtf8) return refuseRequest(hub, 400, badCode, error.message);
  if (error instanceof HttpError) {
    return refuseRequest(hub, error.status, "bad-request", error.message);
  }
  return refusalResponse(400, "bad-request", errorMessage(error));
}

/**
 * The 401 for a wrong relay secret in `req`'s header, checked before
 * anything is read or upgraded; null when there is none or it is right (a
 * secret may also come in the hello).
 */
export function headerSecretRefusal(hub: Hub, req: Request, from?: string): Response | null {
  const headerSecret = req.headers.get(SECRET_HEADER);
  if (headerSecret === null) return null;
  try {
    hub.checkSecret(headerSecret, from);
    return null;
  } catch (error) {
    if (error instanceof JoinRefused) return refusedJoin(error);
    throw error;
  }
}

/** The answer to a refused join (counted already, by the hub). */
export function refusedJoin(error: JoinRefused): Response {
  return refusalResponse(error.status, error.code, error.message);
}

/** Whether `data` is over `max` bytes as UTF-8, encoding it only when the length alone cannot decide. */
export function frameTooLarge(data: string, max: number): boolean {
  if (data.length > max) return true;
  return data.length * 3 > max && encoder.encode(data).length > max;
}

/** The reason given for a frame over `max` bytes. */
export function tooLargeReason(max: number): string {
  return `frames are limited to ${max} bytes`;
}

/** A request body larger than allowed. */
export class BodyTooLarge extends Error {
  /** A body over `max` bytes. */
  constructor(max: number) {
    super(`the body is larger than ${max} bytes`);
    this.name = "BodyTooLarge";
  }
}

/** A request body that is not valid UTF-8. */
export class BodyNotUtf8 extends Error {
  constructor() {
    super("the body is not valid UTF-8");
    this.name = "BodyNotUtf8";
  }
}

/** Strict: invalid UTF-8 is refused, not turned into U+FFFD in a nickname. */
const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Reads a request body as text (and its size in bytes); throws
 * {@linkcode BodyTooLarge} past `max` bytes, before reading it when the
 * request declares its length, and {@linkcode BodyNotUtf8} for bytes that
 * are not UTF-8.
 */
export async function readBody(req: Request, max: number): Promise<{ text: string; size: number }> {
  const declared = Number(req.headers.get("content-length") ?? 0);
  if (declared > max) {
    await req.body?.cancel();
    throw new BodyTooLarge(max);
  }
  const all = await collectBytes(req.body, { max, tooLarge: () => new BodyTooLarge(max) });
  try {
    return { text: utf8.decode(all), size: all.length };
  } catch {
    throw new BodyNotUtf8();
  }
}
