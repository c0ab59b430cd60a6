/**
 * The public face of a session: {@linkcode ImmortalConn}.
 *
 * @module
 */

import type { ConnEventListener, ConnEventMap, ConnState, ConnStats } from "./events.ts";

/**
 * A byte stream that survives its links. Shaped like `Deno.Conn`: Web Streams
 * `readable`/`writable`, plus `read`/`write` for zero-stream-overhead use.
 *
 * Delivery is exactly once and in order across reconnects. `write` resolves
 * once the bytes are held for replay; it waits while `maxUnackedBytes` are
 * unacknowledged (backpressure, never loss).
 */
export interface ImmortalConn extends EventTarget, AsyncDisposable, Disposable {
  /**
   * Bytes from the peer; ends after the peer's half-close. Cancelling it
   * (a `break` out of `for await`) closes the session, as with `Deno.Conn`.
   */
  readonly readable: ReadableStream<Uint8Array<ArrayBuffer>>;
  /** Bytes to the peer; closing it half-closes the session. */
  readonly writable: WritableStream<Uint8Array>;
  /** Settles when the session has ended: resolves on a clean end or a local close, rejects otherwise. */
  readonly closed: Promise<void>;
  /** Hex id of the session (the same on both ends). */
  readonly sessionId: string;
  /** Current state. */
  readonly state: ConnState;
  /** Local address of the current link (or the last one). */
  readonly localAddr: Deno.Addr | undefined;
  /** Remote address of the current link (or the last one). */
  readonly remoteAddr: Deno.Addr | undefined;
  /**
   * The peer of the current link (or the last one), in words: its address,
   * or its name where the address does not say it (a node through a relay).
   */
  readonly peer: string;
  /** Counters: bytes, reconnects, replayed bytes, RTT. */
  readonly stats: ConnStats;
  /** Reads into `buffer`; resolves to the count read, or `null` at end of stream. */
  read(buffer: Uint8Array): Promise<number | null>;
  /** Writes all of `data`; resolves to its length once it is held for replay. */
  write(data: Uint8Array): Promise<number>;
  /** Half-close: no more writes; the peer's readable ends after every byte written. */
  closeWrite(): Promise<void>;
  /**
   * Resolves once the peer's application has read every byte written so
   * far (its acknowledgement says so), across any number of resumes;
   * rejects if the session ends first. A `write` resolves as soon as its
   * bytes are held for replay: this is how a sender that only sends learns
   * they arrived. It waits as long as the peer does not read.
   */
  flush(): Promise<void>;
  /**
   * Aborts the session at once; unsent data is discarded and the peer is
   * told why: `reason` (for people; cut to 1024 bytes of UTF-8), by default
   * "closed by the application". A session already complete has nothing
   * to abort: a client's ends once its bye is said (or could not be, within
   * a second or the dead-link time); a server's stays resumable until the
   * client's bye, or the resume timeout, in case its last ack was lost with
   * the link.
   */
  close(reason?: string): void;
  /** Adds a listener for a state event; the event's class follows from its name. */
  addEventListener<K extends keyof ConnEventMap>(
    type: K,
    listener: ConnEventListener<K>,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /** Adds a listener (generic form). */
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /** Removes a listener added with {@linkcode ImmortalConn.addEventListener}. */
  removeEventListener<K extends keyof ConnEventMap>(
    type: K,
    listener: ConnEventListener<K>,
    options?: boolean | EventListenerOptions,
  ): void;
  /** Removes a listener (generic form). */
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
