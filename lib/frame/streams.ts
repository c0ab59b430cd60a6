/**
 * The frame codec as Web Streams `TransformStream`s, for links and tools that
 * move frames through stream pipelines.
 *
 * @module
 */

import type { Frame } from "./frame.ts";
import { FrameDecoder, type FrameDecoderOptions } from "./decoder.ts";
import { encodeFrame } from "./encode.ts";
import { FrameError } from "./frame_error.ts";

/** Turns frames into their wire bytes, one chunk per frame. */
export class FrameEncoderStream extends TransformStream<Frame, Uint8Array> {
  /** Creates an encoder stream. */
  constructor() {
    super({ transform: (frame, controller) => controller.enqueue(encodeFrame(frame)) });
  }
}

/**
 * Turns wire bytes into validated frames. Malformed input errors the stream
 * with a {@linkcode FrameError}; bytes that end mid-frame do too.
 *
 * @example Round trip through both streams
 * ```ts
 * import { type Frame, FrameDecoderStream, FrameEncoderStream } from "@immortal/sockets/frame";
 *
 * const frames: Frame[] = [{ type: "ping", stamp: 1.5 }, { type: "fin", position: 42 }];
 * const decoded = await Array.fromAsync(
 *   ReadableStream.from(frames)
 *     .pipeThrough(new FrameEncoderStream())
 *     .pipeThrough(new FrameDecoderStream()),
 * );
 * if (decoded.length !== 2 || decoded[1].type !== "fin") throw new Error("lost a frame");
 * ```
 */
export class FrameDecoderStream extends TransformStream<Uint8Array, Frame> {
  /** Creates a decoder stream; see {@linkcode FrameDecoderOptions}. */
  constructor(options: FrameDecoderOptions = {}) {
    const decoder = new FrameDecoder(options);
    const frames: Frame[] = [];
    super({
      transform(chunk, controller) {
        frames.length = 0;
        decoder.push(chunk, frames);
        for (const frame of frames) controller.enqueue(frame);
      },
      flush() {
        if (decoder.partial) throw new FrameError("stream ended inside a frame");
      },
    });
  }
}
