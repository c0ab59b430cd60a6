/**
 * {@linkcode MuxStream}: one stream of a {@linkcode MuxSession}.
 *
 * @module
 */

import type { StreamCore } from "./_stream_core.ts";

const cores = new WeakMap<MuxStream, StreamCore>();

/** The state behind a stream, for the tunnel's copy-free splice. @internal */
export function coreOf(stream: MuxStream): StreamCore {
  return cores.get(stream)!;
}

/**
 * One bidirectional byte stream of a {@linkcode MuxSession}, shaped like a
 * `Deno.Conn`: `read`/`write`, `readable`/`writable`, half-close with
 * {@linkcode MuxStream.closeWrite} and abort with {@linkcode MuxStream.close}.
 * It has its own flow control: a stream whose reader stops holds at most its
 * own receive window, and every other stream of the session keeps moving.
 *
 * @example Open a stream, send a line, half-close, read the reply
 * ```ts ignore
 * import { connect } from "@immortal/sockets";
 * import { MuxSession } from "@immortal/sockets/mux";
 *
 * const session = new MuxSession(await connect({ port: 7000 }), { role: "client" });
 * const stream = session.open();
 * await stream.write(new TextEncoder().encode("hello\n"));
 * await stream.closeWrite();
 * const reply = await new Response(stream.readable).text();
 * ```
 */
export class MuxStream implements Disposable {
  #core: StreamCore;
  #readable?: ReadableStream<Uint8Array<ArrayBuffer>>;
  #writable?: WritableStream<Uint8Array>;

  /** Made by {@linkcode MuxSession}; not constructed directly. @internal */
  constructor(core: StreamCore) {
    this.#core = core;
    cores.set(this, core);
  }

  /**
   * Readable side: what the peer's stream sent. Made when first asked for:
   * a stream read otherwise (the tunnel's splice) never pays for it, nor does
   * one refused at once, by the thousand in a flood of opens.
   */
  get readable(): ReadableStream<Uint8Array<ArrayBuffer>> {
    const core = this.#core;
    return this.#readable ??= new ReadableStream<Uint8Array<ArrayBuffer>>({
      pull: async (controller) => {
        const chunk = await core.nextChunk();
        if (chunk === null) controller.close();
        else if (chunk.buffer.byteLength > 2 * chunk.length) {
          // A chunk in a pooled buffer much larger than it: the application
          // may keep what it is given, so it gets a copy of its own, and the
          // buffer goes back to the pool (kept, it would pin up to 4,096
          // times the bytes of a small message).
          controller.enqueue(chunk.slice());
          core.release(chunk);
        } else controller.enqueue(chunk as Uint8Array<ArrayBuffer>); // ours, never shared: see ImmortalConn
      },
      // Nobody will read on: give the peer an answer instead of a window that never opens.
      cancel: () => core.close("the reader stopped reading"),
    }, { highWaterMark: 0 });
  }

  /** Writable side; closing it half-closes the stream. Made when first asked for. */
  get writable(): WritableStream<Uint8Array> {
    const core = this.#core;
    return this.#writable ??= new WritableStream<Uint8Array>({
      write: async (chunk) => {
        await core.write(chunk);
      },
      close: () => core.closeWrite(),
      abort: () => core.close(),
    });
  }

  /** The stream's number within its session (odd: opened by the client). */
  get id(): number {
    return this.#core.id;
  }

  /** What the opener sent along with the open (empty if nothing). */
  get meta(): Uint8Array {
    return this.#core.meta;
  }

  /**
   * Settles once the stream was accepted: for the opener, when the peer
   * accepted it (rejects with its reason if refused); for the acceptor, when
   * it called {@linkcode MuxStream.accept} or first wrote.
   */
  get accepted(): Promise<void> {
    return this.#core.accepted;
  }

  /**
   * Resolves when both directions finished, or the stream was closed
   * locally; rejects if the peer reset it or the session was lost.
   */
  get closed(): Promise<void> {
    return this.#core.closed;
  }

  /** Bytes received and not read yet (at most the receive window). */
  get bufferedBytes(): number {
    return this.#core.buffered;
  }

  /** Reads into `buffer`; `null` once the peer half-closed and everything was read. */
  read(buffer: Uint8Array): Promise<number | null> {
    return this.#core.read(buffer);
  }

  /** Writes all of `data`, waiting for the peer's credit as needed. */
  write(data: Uint8Array): Promise<number> {
    return this.#core.write(data);
  }

  /** Half-closes: the peer reads the end of the stream after everything written. */
  closeWrite(): Promise<void> {
    return this.#core.closeWrite();
  }

  /** Acceptor only: takes the stream (writing does so too). */
  accept(): void {
    this.#core.accept();
  }

  /** Acceptor only: turns the stream down; the opener's stream fails with `reason`. */
  refuse(reason: string): void {
    this.#core.refuse(reason);
  }

  /** Aborts both directions; the peer's stream fails with a reset. */
  close(): void {
    this.#core.close();
  }

  /** Same as {@linkcode MuxStream.close}, for `using`: a stream that already ended both ways is left as it is. */
  [Symbol.dispose](): void {
    this.close();
  }
}
