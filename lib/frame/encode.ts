/**
 * Frame encoding: into a fresh buffer, or into a caller's buffer so that the
 * hot send path can pack several frames into one reused write buffer.
 *
 * @module
 */

import {
  type Frame,
  FRAME_HEADER_SIZE,
  FrameCode,
  HELLO_MAGIC,
  MAX_REASON_BYTES,
  PROTOCOL_VERSION,
  REJECT_CODES,
  SEALED_BIT,
} from "./frame.ts";
import { writeF64, writeU32, writeU64 } from "./_bytes.ts";

const encoder = new TextEncoder();

function reasonBytes(reason: string): Uint8Array {
  const bytes = encoder.encode(reason);
  if (bytes.length <= MAX_REASON_BYTES) return bytes;
  // Cut on a UTF-8 boundary so the peer's strict decoder accepts it.
  let end = MAX_REASON_BYTES;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

/** Payload length of `frame` in bytes (without the header). */
export function framePayloadSize(frame: Frame): number {
  switch (frame.type) {
    case "data":
      return frame.data.length;
    case "ack":
    case "ping":
    case "pong":
    case "fin":
      return 8;
    case "close":
      return reasonBytes(frame.reason).length;
    case "bye":
      return 0;
    case "hello":
      return 26 + (frame.resume ? 24 : 32);
    case "challenge":
      return 32;
    case "proof":
      return frame.mac.length;
    case "accept":
      return 5 + (frame.created ? 48 : 8) + frame.mac.length;
    case "reject":
      return 1 + reasonBytes(frame.reason).length;
  }
}

/** Writes a frame header for `type` with a payload of `length` bytes at `offset`. */
export function writeFrameHeader(
  buf: Uint8Array,
  offset: number,
  type: number,
  length: number,
): void {
  buf[offset] = type;
  writeU32(buf, offset + 1, length);
}

/**
 * Encodes `frame` into `buf` at `offset` and returns the number of bytes
 * written. `buf` must have room for {@linkcode framePayloadSize} plus the header.
 */
export function encodeFrameInto(frame: Frame, buf: Uint8Array, offset: number): number {
  const size = framePayloadSize(frame);
  writeFrameHeader(buf, offset, FrameCode[frame.type], size);
  const p = offset + FRAME_HEADER_SIZE;
  switch (frame.type) {
    case "data":
      buf.set(frame.data, p);
      break;
    case "ack":
    case "fin":
      writeU64(buf, p, frame.position);
      break;
    case "ping":
    case "pong":
      writeF64(buf, p, frame.stamp);
      break;
    case "close":
      buf.set(reasonBytes(frame.reason), p);
      break;
    case "bye":
      break;
    case "hello":
      buf.set(HELLO_MAGIC, p);
      buf[p + 4] = PROTOCOL_VERSION;
      buf[p + 5] = (frame.resume ? 1 : 0) | (frame.sealed ? SEALED_BIT : 0);
      buf.set(frame.nonce.subarray(0, 16), p + 6);
      writeU32(buf, p + 22, frame.window);
      if (frame.resume) {
        buf.set(frame.resume.sessionId.subarray(0, 16), p + 26);
        writeU64(buf, p + 42, frame.resume.received);
      } else {
        buf.set(frame.publicKey!.subarray(0, 32), p + 26);
      }
      break;
    case "challenge":
      buf.set(frame.nonce.subarray(0, 32), p);
      break;
    case "proof":
      buf.set(frame.mac, p);
      break;
    case "accept":
      buf[p] = frame.created ? 0 : 1;
      writeU32(buf, p + 1, frame.window);
      if (frame.created) {
        buf.set(frame.created.sessionId.subarray(0, 16), p + 5);
        buf.set(frame.created.publicKey.subarray(0, 32), p + 21);
        buf.set(frame.mac, p + 53);
      } else {
        writeU64(buf, p + 5, frame.received ?? 0);
        buf.set(frame.mac, p + 13);
      }
      break;
    case "reject":
      buf[p] = REJECT_CODES.indexOf(frame.code);
      buf.set(reasonBytes(frame.reason), p + 1);
      break;
  }
  return FRAME_HEADER_SIZE + size;
}

/**
 * Encodes `frame` into a new buffer holding exactly its bytes.
 *
 * @example An ack frame on the wire: type byte, 4-byte length, 8-byte position
 * ```ts
 * import { encodeFrame } from "@immortal/sockets/frame";
 *
 * const bytes = encodeFrame({ type: "ack", position: 1024 });
 * if (bytes.length !== 5 + 8) throw new Error("an ack is 13 bytes");
 * ```
 */
export function encodeFrame(frame: Frame): Uint8Array {
  const buf = new Uint8Array(FRAME_HEADER_SIZE + framePayloadSize(frame));
  encodeFrameInto(frame, buf, 0);
  return buf;
}
