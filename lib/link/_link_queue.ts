/**
 * Links handed over by someone else (an HTTP handler, a relay node), waiting
 * for `accept()`: the queue behind the acceptors that are fed rather than
 * listening themselves.
 *
 * @module
 */

import type { Link } from "./link.ts";

/** Links pushed in, taken out by `accept()` in order. */
export class LinkQueue {
  #ready: Link[] = [];
  #waiters: { resolve: (link: Link) => void; reject: (error: Error) => void }[] = [];
  #closed = false;

  /** Links waiting for `accept()`. */
  get waiting(): number {
    return this.#ready.length;
  }

  /** Whether the queue was closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Hands a link to the next `accept()`; closes it if the queue is closed. */
  push(link: Link): void {
    if (this.#closed) return link.close();
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve(link);
    else this.#ready.push(link);
  }

  /** The next link; rejects once the queue is closed. */
  accept(): Promise<Link> {
    const link = this.#ready.shift();
    if (link) return Promise.resolve(link);
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("the acceptor is closed"));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Closes the waiting links and fails the waiting `accept()`s; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const link of this.#ready.splice(0)) link.close();
    const error = new Deno.errors.BadResource("the acceptor is closed");
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
  }
}
