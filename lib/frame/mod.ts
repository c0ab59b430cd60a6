/**
 * Binary frame codec of the immortal protocol: a strict, allocation-bounded
 * decoder, an encoder, and both as `TransformStream`s.
 *
 * @module
 */

export * from "./frame.ts";
export { FrameError } from "./frame_error.ts";
export { encodeFrame, encodeFrameInto, framePayloadSize, writeFrameHeader } from "./encode.ts";
export { FrameDecoder, type FrameDecoderOptions } from "./decoder.ts";
export { FrameDecoderStream, FrameEncoderStream } from "./streams.ts";
