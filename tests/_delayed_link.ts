// An in-process path with a fixed one-way delay and a bottleneck rate, for
// testing how a session fills a long fat pipe without a real network.
import type { Acceptor, Dialer, Link } from "../mod.ts";
import { LinkQueue } from "../lib/link/_link_queue.ts";

/** Shape of the simulated path. */
export interface PathOptions {
  /** One-way delay, ms. */
  delayMs: number;
  /** Bottleneck rate, bytes per second (each direction). */
  bytesPerSecond: number;
}

/** Bytes a writer may queue ahead of the bottleneck, like a socket's send buffer. */
const SEND_BUFFER = 1 << 20;

interface Parcel {
  data: Uint8Array;
  arrives: number;
}

/** One direction of the path: serializes writes at the rate, delivers after the delay. */
class Pipe {
  #options: PathOptions;
  #queue: Parcel[] = [];
  #freeAt = 0;
  #closed = false;
  #wake: (() => void) | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: PathOptions) {
    this.#options = options;
  }

  /**
   * Queues `data` behind the bottleneck. Like a socket's send buffer, up to
   * `SEND_BUFFER` bytes may wait there; beyond that the writer waits until
   * the excess has left (that is the sender's backpressure). Letting the
   * writer run ahead keeps the bottleneck busy even when timers fire late.
   */
  async send(data: Uint8Array): Promise<void> {
    if (this.#closed) throw new Deno.errors.BrokenPipe("the path is closed");
    const now = performance.now();
    const msPerByte = 1000 / this.#options.bytesPerSecond;
    const departs = Math.max(now, this.#freeAt) + data.length * msPerByte;
    this.#freeAt = departs;
    this.#queue.push({ data: data.slice(), arrives: departs + this.#options.delayMs });
    this.#schedule();
    const excess = departs - now - SEND_BUFFER * msPerByte;
    if (excess >= 1) await new Promise((resolve) => setTimeout(resolve, excess));
  }

  async receive(buffer: Uint8Array): Promise<number | null> {
    for (;;) {
      const head = this.#queue[0];
      if (head && head.arrives <= performance.now()) {
        const n = Math.min(buffer.length, head.data.length);
        buffer.set(head.data.subarray(0, n));
        if (n === head.data.length) this.#queue.shift();
        else head.data = head.data.subarray(n);
        return n;
      }
      if (this.#closed && this.#queue.length === 0) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#queue.length = 0;
    this.#wakeNow();
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#queue.length === 0) return;
    const wait = Math.max(0, this.#queue[0].arrives - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#wakeNow();
      this.#schedule();
    }, wait);
  }

  #wakeNow(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}

class PathLink implements Link {
  #out: Pipe;
  #in: Pipe;
  constructor(out: Pipe, incoming: Pipe) {
    this.#out = out;
    this.#in = incoming;
  }
  read(buffer: Uint8Array): Promise<number | null> {
    return this.#in.receive(buffer);
  }
  write(data: Uint8Array): Promise<void> {
    return this.#out.send(data);
  }
  close(): void {
    this.#out.close();
    this.#in.close();
  }
}

/** A dialer whose links reach the returned acceptor across the simulated path. */
export function delayedPath(options: PathOptions): { dialer: Dialer; acceptor: Acceptor } {
  const queue = new LinkQueue();
  const acceptor: Acceptor = {
    addr: { transport: "tcp", hostname: "delayed-path", port: 0 },
    accept: () => queue.accept(),
    close: () => queue.close(),
  };
  const dialer: Dialer = () => {
    const up = new Pipe(options);
    const down = new Pipe(options);
    queue.push(new PathLink(down, up));
    return Promise.resolve(new PathLink(up, down));
  };
  return { dialer, acceptor };
}
