/**
 * Server entry point: {@linkcode listen} and {@linkcode ImmortalListener}.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { type Acceptor, formatAddr, type Link, TcpAcceptor, TlsAcceptor } from "../link/mod.ts";
import { _checkPort } from "./connect.ts";
import { ImmortalError } from "./errors.ts";
import { _FrameReader } from "./frame_reader.ts";
import { _hmacKey, _send, _serverHandshake, type _SessionSecrets } from "./handshake.ts";
import type { ImmortalConn } from "./immortal_conn.ts";
import { type _ResolvedOptions, _resolveOptions, type SessionOptions } from "./options.ts";
import { _Session } from "./session.ts";

const log = getLogger(["immortal", "listener"]);

/** Where and how {@linkcode listen} accepts sessions. */
export interface ListenOptions extends SessionOptions {
  /** Address to listen on. Default `0.0.0.0`. */
  hostname?: string;
  /** Port to listen on; `0` (the default) picks a free one. */
  port?: number;
  /** Serve TLS with this certificate and key (PEM) instead of plain TCP. */
  tls?: ListenTlsOptions;
  /** Accepts links another way than plain TCP or TLS. */
  acceptor?: Acceptor;
  /** New sessions waiting for `accept()` beyond this are refused as busy. Default 128. */
  backlog?: number;
  /** Links still in their handshake beyond this are dropped at once. Default 256. */
  maxHandshakes?: number;
}

/** TLS identity of a server; see {@linkcode ListenOptions.tls}. */
export interface ListenTlsOptions {
  /** Certificate chain in PEM format. */
  cert: string;
  /** Private key in PEM format. */
  key: string;
}

/** Accepts immortal sessions; resumes of known sessions are handled inside. */
export interface ImmortalListener extends AsyncIterable<ImmortalConn>, Disposable {
  /** The address clients dial. */
  readonly addr: Deno.Addr;
  /** Sessions this listener keeps alive (accepted or waiting to be). */
  readonly sessionCount: number;
  /** Waits for the next new session. */
  accept(): Promise<ImmortalConn>;
  /**
   * Stops accepting new sessions and resumes. Sessions on a live link go on
   * until that link is lost; the others end at once.
   */
  close(): void;
}

interface _Entry {
  session: _Session;
  secrets: _SessionSecrets;
}

class _Listener implements ImmortalListener {
  #acceptor: Acceptor;
  #options: _ResolvedOptions;
  #psk: Promise<CryptoKey | null>;
  #backlog: number;
  #maxHandshakes: number;
  #sessions = new Map<string, _Entry>();
  #ready: _Session[] = [];
  #waiters: { resolve: (conn: ImmortalConn) => void; reject: (error: Error) => void }[] = [];
  #handshaking = new Set<Link>();
  #closed = false;

  constructor(
    acceptor: Acceptor,
    options: _ResolvedOptions,
    backlog: number,
    maxHandshakes: number,
  ) {
    this.#acceptor = acceptor;
    this.#options = options;
    this.#psk = options.key ? _hmacKey(options.key) : Promise.resolve(null);
    this.#backlog = backlog;
    this.#maxHandshakes = maxHandshakes;
    this.#acceptLoop();
  }

  get addr(): Deno.Addr {
    return this.#acceptor.addr;
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  accept(): Promise<ImmortalConn> {
    const session = this.#ready.shift();
    if (session) return Promise.resolve(session);
    if (this.#closed) return Promise.reject(new ImmortalError("closed", "the listener is closed"));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ImmortalConn> {
    for (;;) {
      try {
        yield await this.accept();
      } catch (error) {
        if (this.#closed) return;
        throw error;
      }
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#acceptor.close();
    for (const link of this.#handshaking) link.close();
    const error = new ImmortalError("closed", "the listener is closed");
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    for (const session of this.#ready.splice(0)) session.close();
    for (const { session } of [...this.#sessions.values()]) session._listenerClosed();
    this.#sessions.clear();
    log.info("Listener on {addr} closed", { addr: formatAddr(this.addr) });
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      let link: Link;
      try {
        link = await this.#acceptor.accept();
      } catch (error) {
        if (this.#closed) return;
        // EMFILE and friends: say so, and keep serving the sessions we have.
        log.error("Accepting a link failed: {error}", { error });
        continue;
      }
      if (this.#closed) {
        link.close();
        return;
      }
      if (this.#handshaking.size >= this.#maxHandshakes) {
        log.warn("Dropped a link from {remote}: {n} handshakes already in progress", {
          remote: formatAddr(link.remoteAddr),
          n: this.#handshaking.size,
        });
        link.close();
        continue;
      }
      this.#handshake(link);
    }
  }

  async #handshake(link: Link): Promise<void> {
    this.#handshaking.add(link);
    const remote = formatAddr(link.remoteAddr);
    // Clients that never finish their handshake must not hold a slot forever.
    const timer = setTimeout(() => link.close(), this.#options.handshakeTimeout);
    const reader = new _FrameReader(link);
    try {
      const hello = await _serverHandshake(reader, await this.#psk, (id) => {
        const entry = this.#sessions.get(id);
        return entry?.session._resumable ? entry.secrets.resumeKey : undefined;
      });
      if (this.#closed) throw new ImmortalError("closed", "the listener is closed");
      if (hello.kind === "resume") {
        const entry = this.#sessions.get(hello.sessionId);
        if (!entry) {
          throw new ImmortalError("unknown-session", "the session ended during the handshake");
        }
        log.info("Session {id}: client resuming from {remote}", { id: hello.sessionId, remote });
        await entry.session._resumeFrom(reader, hello.received, hello.transcript);
        return;
      }
      if (this.#ready.length >= this.#backlog) {
        await _send(link, {
          type: "reject",
          code: "busy",
          reason: "too many sessions waiting to be accepted",
        });
        throw new ImmortalError("rejected", "backlog full");
      }
      await _send(link, hello.accept);
      const session = new _Session({
        role: "server",
        options: this.#options,
        secrets: hello.secrets,
        reader,
        onForget: (s) => this.#sessions.delete(s.sessionId),
      });
      this.#sessions.set(hello.secrets.id, { session, secrets: hello.secrets });
      const waiter = this.#waiters.shift();
      if (waiter) waiter.resolve(session);
      else this.#ready.push(session);
    } catch (error) {
      link.close();
      if (error instanceof ImmortalError && error.code === "auth") {
        log.warn("Refused {remote}: {reason}", { remote, reason: error.message });
      } else {
        log.debug("Handshake with {remote} failed: {reason}", {
          remote,
          reason: error instanceof Error ? error.message : String(error),
        });
      }
    } finally {
      clearTimeout(timer);
      this.#handshaking.delete(link);
    }
  }
}

/**
 * Starts accepting immortal sessions — synchronously, like `Deno.listen`.
 *
 * @example
 * ```ts ignore
 * import { listen } from "@immortal/sockets";
 * const listener = listen({ port: 4000, key: "secret" });
 * for await (const conn of listener) {
 *   conn.readable.pipeTo(conn.writable); // echo
 * }
 * ```
 */
export function listen(options: ListenOptions = {}): ImmortalListener {
  const resolved = _resolveOptions(options);
  const backlog = options.backlog ?? 128;
  const maxHandshakes = options.maxHandshakes ?? 256;
  if (!Number.isInteger(backlog) || backlog < 1) {
    throw new RangeError(`backlog must be an integer >= 1, got ${backlog}`);
  }
  if (!Number.isInteger(maxHandshakes) || maxHandshakes < 1) {
    throw new RangeError(`maxHandshakes must be an integer >= 1, got ${maxHandshakes}`);
  }
  const where = {
    hostname: options.hostname,
    port: _checkPort("port", options.port ?? 0, true),
  };
  const acceptor = options.acceptor ??
    (options.tls ? new TlsAcceptor({ ...where, ...options.tls }) : new TcpAcceptor(where));
  return new _Listener(acceptor, resolved, backlog, maxHandshakes);
}
