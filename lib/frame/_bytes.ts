// Big-endian integer helpers shared by encoder and decoder.
import { FrameError } from "./frame_error.ts";

const TWO_32 = 2 ** 32;

export function writeU32(buf: Uint8Array, off: number, value: number): void {
  buf[off] = value >>> 24;
  buf[off + 1] = value >>> 16;
  buf[off + 2] = value >>> 8;
  buf[off + 3] = value;
}

export function readU32(buf: Uint8Array, off: number): number {
  return ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
}

export function writeU64(buf: Uint8Array, off: number, value: number): void {
  writeU32(buf, off, Math.floor(value / TWO_32));
  writeU32(buf, off + 4, value >>> 0);
}

export function readU64(buf: Uint8Array, off: number): number {
  const value = readU32(buf, off) * TWO_32 + readU32(buf, off + 4);
  if (!Number.isSafeInteger(value)) throw new FrameError("position beyond 2^53");
  return value;
}

export function writeF64(buf: Uint8Array, off: number, value: number): void {
  new DataView(buf.buffer, buf.byteOffset + off, 8).setFloat64(0, value);
}

export function readF64(buf: Uint8Array, off: number): number {
  return new DataView(buf.buffer, buf.byteOffset + off, 8).getFloat64(0);
}
