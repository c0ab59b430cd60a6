/**
 * An in-memory path whose links a test drives event by event: every dial
 * makes a link whose two directions can be held (bytes queue, not
 * delivered), released and reset, and whose writes can be made to block (a
 * full socket).
 *
 * @module
 */
import type { Acceptor, Dialer, Link } from "../mod.ts";
import { LinkQueue } from "../lib/link/_link_queue.ts";

export class Pipe {
  queue: Uint8Array[] = [];
  held = false;
  /** Writes hang until unblocked (simulates a full send buffer). */
  blocked = false;
  #blockedWriters: (() => void)[] = [];
  ended = false; // writer sent FIN
  reset = false;
  readerClosed = false;
  #wake: (() => void) | null = null;
  delivered = 0;
  written = 0;
  onDeliver?: (chunk: Uint8Array) => void;
  /** Called on each write with the bytes (before any hold). */
  onWrite?: (chunk: Uint8Array) => void;

  async write(data: Uint8Array): Promise<void> {
    if (this.reset || this.ended) throw new Deno.errors.BrokenPipe("pipe closed");
    const copy = data.slice();
    this.onWrite?.(copy);
    this.written += copy.length;
    if (this.blocked) {
      await new Promise<void>((r) => this.#blockedWriters.push(r));
      if (this.reset) throw new Deno.errors.ConnectionReset("reset");
    }
    if (this.readerClosed) return; // bytes to nowhere
    this.queue.push(copy);
    this.#kick();
  }
  unblock(): void {
    this.blocked = false;
    for (const w of this.#blockedWriters.splice(0)) w();
  }
  async read(buf: Uint8Array): Promise<number | null> {
    for (;;) {
      if (this.readerClosed) throw new Deno.errors.BadResource("closed");
      if (this.reset) throw new Deno.errors.ConnectionReset("reset");
      if (!this.held && this.queue.length > 0) {
        const head = this.queue[0];
        const n = Math.min(buf.length, head.length);
        buf.set(head.subarray(0, n));
        this.onDeliver?.(head.subarray(0, n));
        this.delivered += n;
        if (n === head.length) this.queue.shift();
        else this.queue[0] = head.subarray(n);
        return n;
      }
      if (this.ended && !this.held && this.queue.length === 0) return null;
      await new Promise<void>((r) => this.#wake = r);
    }
  }
  hold(): void {
    this.held = true;
  }
  release(): void {
    this.held = false;
    this.#kick();
  }
  end(): void {
    this.ended = true;
    this.#kick();
  }
  doReset(): void {
    this.reset = true;
    this.queue.length = 0;
    this.unblock();
    this.#kick();
  }
  closeReader(): void {
    this.readerClosed = true;
    this.#kick();
  }
  #kick(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }
}

export class End implements Link {
  out: Pipe;
  in: Pipe;
  closed = false;
  name: string;
  constructor(out: Pipe, inp: Pipe, name: string) {
    this.out = out;
    this.in = inp;
    this.name = name;
  }
  get remoteAddr(): Deno.NetAddr {
    return { transport: "tcp", hostname: "127.0.0.1", port: 1 };
  }
  get localAddr(): Deno.NetAddr {
    return { transport: "tcp", hostname: "127.0.0.1", port: 2 };
  }
  read(buffer: Uint8Array): Promise<number | null> {
    return this.in.read(buffer);
  }
  write(data: Uint8Array): Promise<void> {
    if (this.closed) return Promise.reject(new Deno.errors.BadResource("closed"));
    return this.out.write(data);
  }
  closeWrite(): Promise<void> {
    this.out.end();
    return Promise.resolve();
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.out.end(); // FIN after what was written
    this.in.closeReader();
  }
}

export interface PathLink {
  index: number;
  up: Pipe; // client -> server
  down: Pipe; // server -> client
  client: End;
  server: End;
  /** Both directions reset (an RST). */
  cut(): void;
}

/**
 * A dialer and an acceptor joined by in-memory links, each in `links` for
 * the test to drive; `onDial` sees each link before either end uses it.
 */
export function controlledPath(onDial?: (link: PathLink) => void) {
  const links: PathLink[] = [];
  const queue = new LinkQueue();
  const acceptor: Acceptor = {
    addr: { transport: "tcp", hostname: "controlled-path", port: 0 },
    accept: () => queue.accept(),
    close: () => queue.close(),
  };
  const dialer: Dialer = () => {
    const up = new Pipe();
    const down = new Pipe();
    const index = links.length;
    const client = new End(up, down, `c${index}`);
    const server = new End(down, up, `s${index}`);
    const link: PathLink = {
      index,
      up,
      down,
      client,
      server,
      cut() {
        up.doReset();
        down.doReset();
      },
    };
    links.push(link);
    onDial?.(link);
    queue.push(server);
    return Promise.resolve(client);
  };
  return { dialer, acceptor, links };
}
