/**
 * The relay's own HTTP/1.1 front end, on `Deno.listen`/`Deno.listenTls`.
 *
 * Why not `Deno.serve`: it gives a handler a request only once the request
 * head is complete, and nothing before. A stranger's idle or half-sent
 * connections are invisible to us there: there is no header timeout
 * (denoland/deno#3515), no way to close them, and when they exhaust the
 * descriptors its accept loop ends for good (the process then serves
 * nothing). Its WebSocket also accepts unmasked client frames. Here every
 * connection is ours from `accept` on:
 *
 * - a connection must send a complete request head within `headerTimeout`,
 *   and the next one within `idleTimeout`; a body must arrive within
 *   `idleTimeout` too;
 * - connections that carry no joined node ("unjoined") are capped at
 *   `maxUnjoined`; at the cap, a new connection evicts the oldest unjoined
 *   connection of the source (IP address, IPv6 /64) that holds the most, so
 *   one source flooding the relay evicts its own connections, and a node
 *   from elsewhere still gets in;
 * - a failing `accept` (EMFILE) is retried with a growing pause instead of
 *   ending the server, and logged once per interval;
 * - WebSockets are our own, strict ({@linkcode ServerWebSocket}).
 *
 * Handlers are `Deno.serve` handlers; {@linkcode connectionOf} gives them
 * the extra controls this server offers (upgrade, and "this connection now
 * carries a joined node").
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { formatAddr } from "../link/mod.ts";
import { sourceOf } from "../link/_source.ts";
import { LogLimiter } from "../_log_limiter.ts";
import {
  acceptBackoff,
  checkTlsPair,
  concat,
  delay,
  errorMessage,
  namedAddressError,
} from "../_util.ts";
import { ByteReader } from "./_byte_reader.ts";
import { bodyStream, HttpError, readHead, type RequestHead } from "./_http1_request.ts";
import { httpDate, statusLine, writeAll, writeResponse } from "./_http1_response.ts";
import { acceptKey, handshakeProblem, ServerWebSocket } from "./_server_websocket.ts";

const log = getLogger(["immortal", "relay", "http"]);

/** Longest request head (request line and fields), bytes. */
const MAX_HEAD_BYTES = 16 * 1024;
/** Most bytes of a body the handler did not read that we read past to keep the connection. */
const MAX_DRAIN_BYTES = 64 * 1024;
/** How long shutdown waits for joined connections to say goodbye before closing them. */
const SHUTDOWN_GRACE_MS = 2000;
/** How long, and how much, a connection closing under a client still sending reads on: see #linger. */
const LINGER_MS = 2000;
const LINGER_BYTES = 64 << 20;
/** How long a response may go on after its client closed its end (see #exchange). */
const HALF_CLOSE_GRACE_MS = 1000;
/** The methods the relay answers somewhere, for OPTIONS * (its paths' own are relay.ts's). */
const ALLOWED = "GET, HEAD, POST";
const encoder = new TextEncoder();

/** A `Deno.serve`-style request handler. */
export type Handler = (
  req: Request,
  info: Deno.ServeHandlerInfo<Deno.NetAddr>,
) => Response | Promise<Response>;

/** Settings of an {@linkcode HttpServer}. */
export interface HttpServerOptions {
  hostname: string;
  port: number;
  /** TLS certificate chain and key (PEM); plain HTTP without. */
  cert?: string;
  key?: string;
  /** ms from accepting a connection to its complete first request head. */
  headerTimeout: number;
  /** ms a connection may wait between requests, and may take for a request body. */
  idleTimeout: number;
  /** Most connections that carry no joined node. */
  maxUnjoined: number;
  /** Largest WebSocket message. */
  maxMessageBytes: number;
  /** Share the port with other processes (`SO_REUSEPORT`; the kernel spreads connections). */
  reusePort?: boolean;
}

/** Counters of the connections of a relay started by `serveRelay`. */
export interface RelayConnectionStats {
  /** Open connections. */
  connections: number;
  /** Open connections that carry no joined node. */
  unjoined: number;
  /** Unjoined connections closed to make room (the cap was reached). */
  evicted: number;
  /** Connections closed for sending no request (or body) in time. */
  timedOut: number;
  /** Requests refused before the handler: malformed or oversized heads. */
  badRequests: number;
  /** `accept` calls that failed (descriptors exhausted, mostly). */
  acceptFailures: number;
}

/** What a handler may do with the connection its request came on. */
export interface ConnectionControl {
  /**
   * Accepts a WebSocket: returns the socket and the response to return from
   * the handler, or why the request is not a valid handshake.
   */
  upgradeWebSocket(
    req: Request,
    options?: { maxMessageBytes?: number },
  ): { socket: ServerWebSocket; response: Response } | string;
  /** The connection now carries a joined node: it no longer counts as unjoined. */
  joined(): void;
  /** Where the connection comes from (`host:port`), for logs. */
  readonly remote: string;
}

const controls = new WeakMap<Request, ConnectionControl>();
/** Responses that stand for a WebSocket handshake, and the socket to start. */
const upgrades = new WeakMap<Response, ServerWebSocket>();

/** The connection counters of the server a relay runs on, for its `stats` and `/metrics`. */
export const serverStats: WeakMap<object, () => RelayConnectionStats> = new WeakMap();

/** The controls of the connection `req` came on; undefined when another server (`Deno.serve`) got it. */
export function connectionOf(req: Request): ConnectionControl | undefined {
  return controls.get(req);
}

/** One accepted connection. */
class Connection {
  readonly conn: Deno.Conn;
  readonly source: string;
  joined = false;
  closed = false;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(conn: Deno.Conn) {
    this.conn = conn;
    this.source = sourceOf(conn.remoteAddr) ?? "local";
  }

  /** Closes the connection unless disarmed within `ms`. */
  arm(ms: number, onTimeout: () => void): void {
    this.disarm();
    this.#timer = setTimeout(() => {
      onTimeout();
      this.close();
    }, ms);
  }

  disarm(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  close(): void {
    this.disarm();
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch {
      // Closed already (by a WebSocket that ended, say).
    }
  }
}

/** An HTTP/1.1 server with the limits a server facing strangers needs. */
export class HttpServer {
  readonly addr: Deno.NetAddr;
  readonly finished: Promise<void>;
  #listener: Deno.Listener;
  #handler: Handler;
  #options: HttpServerOptions;
  #scheme: string;
  #closing = new AbortController();
  #connections = new Set<Connection>();
  #tasks = new Set<Promise<void>>();
  /** Unjoined connections by source, oldest first. */
  #unjoined = new Map<string, Set<Connection>>();
  #unjoinedCount = 0;
  #stats = { evicted: 0, timedOut: 0, badRequests: 0, acceptFailures: 0 };
  #logs = new LogLimiter((template, properties) => log.warn(template, properties));

  /** Listens at once (like `Deno.listen`); serves `handler`. */
  constructor(handler: Handler, options: HttpServerOptions) {
    this.#handler = handler;
    this.#options = options;
    const where = {
      hostname: options.hostname,
      port: options.port,
      ...(options.reusePort ? { reusePort: true } : {}),
    };
    // An empty certificate (an empty file, an unset variable) is a mistake,
    // not a wish for plain HTTP.
    const tls = options.cert !== undefined;
    if (tls) checkTlsPair(options.cert!, options.key!);
    try {
      this.#listener = tls
        ? Deno.listenTls({
          ...where,
          cert: options.cert!,
          key: options.key!,
          alpnProtocols: ["http/1.1"],
        })
        : Deno.listen(where);
    } catch (error) {
      throw namedAddressError(error, where.hostname ?? "0.0.0.0", where.port ?? 80);
    }
    this.#scheme = tls ? "https" : "http";
    this.addr = this.#listener.addr as Deno.NetAddr;
    this.finished = this.#acceptLoop();
  }

  /** Counters and gauges. */
  get stats(): RelayConnectionStats {
    return { connections: this.#connections.size, unjoined: this.#unjoinedCount, ...this.#stats };
  }

  /** Stops accepting, closes idle connections, and waits (briefly) for the others to end. */
  async shutdown(): Promise<void> {
    if (!this.#closing.signal.aborted) {
      this.#closing.abort();
      this.#listener.close();
      for (const connection of this.#connections) {
        if (!connection.joined) connection.close();
      }
      const timer = setTimeout(() => {
        for (const connection of this.#connections) connection.close();
      }, SHUTDOWN_GRACE_MS);
      await Promise.allSettled([...this.#tasks]);
      clearTimeout(timer);
      this.#logs.flush();
    }
    await this.finished;
  }

  async #acceptLoop(): Promise<void> {
    let failures = 0;
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
        failures = 0;
      } catch (error) {
        if (this.#closing.signal.aborted) break;
        // EMFILE and friends: say so (once per interval) and pause (see acceptBackoff).
        this.#stats.acceptFailures++;
        this.#logs.event("accept", "Accepting a connection failed: {reason}", {
          reason: errorMessage(error),
        });
        if (!(await delay(acceptBackoff(++failures), this.#closing.signal))) break;
        continue;
      }
      // Small frames, sent as they come: Nagle would hold each behind the
      // peer's delayed ACK. (TLS connections have no such switch here.)
      if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
      const connection = new Connection(conn);
      this.#connections.add(connection);
      this.#markUnjoined(connection);
      if (this.#unjoinedCount > this.#options.maxUnjoined) this.#evictOne();
      const task = this.#serve(connection);
      this.#tasks.add(task);
      task.finally(() => this.#tasks.delete(task));
    }
    await Promise.allSettled([...this.#tasks]);
  }

  #markUnjoined(connection: Connection): void {
    connection.joined = false;
    let set = this.#unjoined.get(connection.source);
    if (!set) this.#unjoined.set(connection.source, set = new Set());
    if (set.has(connection)) return;
    set.add(connection);
    this.#unjoinedCount++;
  }

  #forgetUnjoined(connection: Connection): void {
    const set = this.#unjoined.get(connection.source);
    if (!set?.delete(connection)) return;
    this.#unjoinedCount--;
    if (set.size === 0) this.#unjoined.delete(connection.source);
  }

  /** Closes the oldest unjoined connection of the source that holds the most. */
  #evictOne(): void {
    let largest: Set<Connection> | undefined;
    for (const set of this.#unjoined.values()) {
      if (!largest || set.size > largest.size) largest = set;
    }
    const [oldest] = largest ?? [];
    if (!oldest) return;
    this.#stats.evicted++;
    this.#logs.event(
      `evict ${oldest.source}`,
      "Closed an unjoined connection from {source} ({open} open, the most of any source): " +
        "{cap} unjoined connections is the cap",
      { source: oldest.source, open: largest!.size, cap: this.#options.maxUnjoined },
    );
    this.#forgetUnjoined(oldest);
    oldest.close();
  }

  /** Serves `connection` until it ends: requests, and then perhaps a WebSocket. */
  #serve(connection: Connection): Promise<void> {
    const release = () => {
      this.#forgetUnjoined(connection);
      connection.close();
      this.#connections.delete(connection);
    };
    // The request loop hands over the WebSocket the connection became and is
    // done: its frame, and the request it held, are gone while the socket
    // runs (for days, maybe, and times every node).
    return this.#requests(connection)
      .then((socket) => socket?.run())
      .catch((error) => log.error("A connection failed: {reason}", { reason: errorMessage(error) }))
      .finally(release);
  }

  /** Requests and their responses; the WebSocket the connection became, if it did. */
  async #requests(connection: Connection): Promise<ServerWebSocket | undefined> {
    const { conn } = connection;
    const options = this.#options;
    const reader = new ByteReader(conn, MAX_HEAD_BYTES);
    // `news` false: a client that keeps its connection for a while (a browser,
    // a relay of the cluster) meets the idle timeout in the normal course.
    const timedOut = (what: string, news = true) => () => {
      this.#stats.timedOut++;
      const template = "Closed a connection from {remote}: {what}";
      const properties = { remote: formatAddr(conn.remoteAddr), what };
      if (news) this.#logs.event(`timeout ${connection.source}`, template, properties);
      else log.debug(template, properties);
    };
    try {
      for (let first = true; !this.#closing.signal.aborted && !connection.closed; first = false) {
        if (first) {
          connection.arm(
            options.headerTimeout,
            timedOut(`no request head within ${options.headerTimeout} ms`),
          );
        } else {
          connection.arm(
            options.idleTimeout,
            timedOut(`idle for ${options.idleTimeout} ms between requests`, false),
          );
        }
        let head: RequestHead | null;
        try {
          head = await readHead(reader);
        } catch (error) {
          if (error instanceof HttpError) await this.#refuse(connection, reader, error);
          break;
        }
        if (head === null) break;
        const slowBody = timedOut(`a request body took longer than ${options.idleTimeout} ms`);
        connection.arm(options.idleTimeout, slowBody);
        const outcome = await this.#exchange(connection, reader, head, slowBody);
        if (outcome instanceof ServerWebSocket) return outcome;
        if (!outcome) break;
        // A node's event stream ended; the connection may carry more requests.
        if (connection.joined) this.#markUnjoined(connection);
      }
    } catch (error) {
      log.debug("Connection from {remote} failed: {reason}", {
        remote: formatAddr(conn.remoteAddr),
        reason: errorMessage(error),
      });
    }
  }

  /**
   * One request and its response. Returns whether the connection may carry
   * another request, or the WebSocket it became.
   */
  async #exchange(
    connection: Connection,
    reader: ByteReader,
    head: RequestHead,
    bodyTimedOut: () => void,
  ): Promise<boolean | ServerWebSocket> {
    const { conn } = connection;
    if ((head.method === "GET" || head.method === "HEAD") && head.body.kind !== "none") {
      await this.#refuse(
        connection,
        reader,
        new HttpError(400, `a ${head.method} request has no body`),
      );
      return false;
    }
    if (head.target === "*") {
      // OPTIONS * asks what the server does (RFC 9110 9.3.7): nothing to route.
      return await writeResponse(
        conn,
        new Response(null, { status: 204, headers: { allow: ALLOWED } }),
        {
          http10: head.version === "HTTP/1.0",
          head: false,
          keepAlive: head.keepAlive && !this.#closing.signal.aborted && head.body.kind === "none",
        },
      ) && head.body.kind === "none";
    }
    let url: URL;
    try {
      url = new URL(head.target, `${this.#scheme}://${head.headers.get("host") ?? "localhost"}`);
    } catch {
      await this.#refuse(
        connection,
        reader,
        new HttpError(400, "malformed request target or Host"),
      );
      return false;
    }
    // `100 Continue` goes when the handler first reads the body: a request it
    // refuses without reading (401, 413) is answered before the client sends it.
    let continued = false;
    const sendContinue = async () => {
      continued = true;
      await writeAll(conn, encoder.encode("HTTP/1.1 100 Continue\r\n\r\n"));
    };
    // `req.signal` aborts when the client goes while the handler still works
    // on its answer (a pipe request waiting to be paired), as under
    // Deno.serve: it reads the connection once the request was read whole.
    const clientLeft = new AbortController();
    let handling = true;
    const watchClient = () => {
      reader.readAhead().then((more) => {
        if (!more && handling) clientLeft.abort(new Deno.errors.ConnectionReset("the client left"));
      });
    };
    let bodyRead = false;
    const body = bodyStream(
      reader,
      head.body,
      () => {
        bodyRead = true;
        watchClient();
      },
      head.expectContinue ? sendContinue : undefined,
    );
    let req: Request;
    try {
      req = new Request(url, {
        method: head.method,
        headers: head.headers,
        body,
        signal: clientLeft.signal,
        // @ts-ignore: `duplex` (needed for a stream body) is missing from Deno's RequestInit
        duplex: "half",
      });
    } catch (error) {
      await this.#refuse(connection, reader, new HttpError(400, errorMessage(error)));
      return false;
    }
    let upgraded: ServerWebSocket | undefined;
    controls.set(req, {
      remote: formatAddr(conn.remoteAddr),
      upgradeWebSocket: (request, socketOptions) => {
        const problem = handshakeProblem(request);
        if (problem !== null) return problem;
        upgraded = new ServerWebSocket(conn, reader, {
          maxMessageBytes: socketOptions?.maxMessageBytes ?? this.#options.maxMessageBytes,
        });
        const response = new Response(null);
        upgrades.set(response, upgraded);
        return { socket: upgraded, response };
      },
      joined: () => {
        connection.joined = true;
        this.#forgetUnjoined(connection);
      },
    });
    let completed!: () => void;
    const info = {
      remoteAddr: conn.remoteAddr as Deno.NetAddr,
      completed: new Promise<void>((resolve) => completed = resolve),
    };
    let response: Response;
    try {
      response = await this.#handler(req, info);
    } catch (error) {
      log.error("The handler failed on {method} {path}: {reason}", {
        method: head.method,
        path: url.pathname,
        reason: errorMessage(error),
      });
      response = new Response("internal error", { status: 500 });
    }
    handling = false;
    connection.disarm();
    let halfClosed: ReturnType<typeof setTimeout> | undefined;
    let written = false;
    try {
      const socket = upgrades.get(response);
      if (socket === upgraded && socket !== undefined) {
        const accept = await acceptKey(req.headers.get("sec-websocket-key")!);
        try {
          await writeAll(
            conn,
            encoder.encode(
              "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
                `sec-websocket-accept: ${accept}\r\n\r\n`,
            ),
          );
        } catch (error) {
          // The client is gone: the socket the handler holds ends at once (its
          // first read fails), so whatever it was paired with is let go.
          socket.run();
          throw error;
        }
        return socket;
      }
      // Whether the client is still there while the response is written (once
      // the request is read whole, nothing else reads): a long response that
      // is idle (a pipe link's downstream) would otherwise hold what produces
      // it, a pipe and its other end, until it next writes.
      const clientGone = new AbortController();
      if (head.body.kind === "none" || bodyRead) {
        reader.readAhead().then((more) => {
          if (more || written || connection.closed) return;
          // Closed, or only its sending half (a request piped to socat): a
          // response that ends by itself is written whole; one still going
          // after the grace (an event stream, a link's downstream) was for a
          // client that left.
          halfClosed = setTimeout(() => clientGone.abort(), HALF_CLOSE_GRACE_MS);
        });
      }
      // The handler answered without reading the body (a refusal, say). A
      // small one of declared length is read past after the answer, and the
      // connection goes on; a large one, or a chunked one (its length is
      // unknown: it may run past the bound, and the answer would have promised
      // what the server cannot keep), is not: the connection ends, and the
      // answer says so. A client told no `100 Continue` may send its body or
      // not (RFC 9110 10.1.1): nothing to read past either.
      const unread = () => !bodyRead && body !== null && !body.locked;
      const drainable = head.body.kind === "length" && head.body.length <= MAX_DRAIN_BYTES &&
        (continued || !head.expectContinue);
      const keepAlive = await writeResponse(conn, response, {
        http10: head.version === "HTTP/1.0",
        head: head.method === "HEAD",
        keepAlive: head.keepAlive && !this.#closing.signal.aborted && (drainable || !unread()),
        clientGone: clientGone.signal,
      });
      if (keepAlive && unread()) {
        connection.arm(this.#options.idleTimeout, bodyTimedOut);
        try {
          for await (const _ of body!) { /* read past */ }
        } catch {
          // Broken framing, or the client gone: the connection ends.
        }
        connection.disarm();
      }
      // A client still sending its body reads the answer only if the
      // connection does not end under it (see #linger).
      if (unread()) await this.#linger(connection, reader);
      // A body left unread would be taken for the next request head.
      return keepAlive && bodyRead;
    } finally {
      written = true;
      clearTimeout(halfClosed);
      completed();
    }
  }

  /**
   * Ends a connection whose client may still be sending (a body not read, a
   * head refused) so that the client reads our answer: closed with bytes
   * unread, it would be reset, and a reset throws away the answer waiting in
   * the client's receive buffer (RFC 9112 9.6; a proxy in front answers 502).
   * So: no more writes, then whatever comes is read and dropped, for at most
   * `LINGER_MS` and `LINGER_BYTES`.
   */
  async #linger(connection: Connection, reader: ByteReader): Promise<void> {
    try {
      await connection.conn.closeWrite();
    } catch {
      return; // gone already
    }
    connection.arm(LINGER_MS, () => {});
    try {
      await reader.discard(LINGER_BYTES);
    } catch {
      // Reset, or closed when LINGER_MS ran out.
    } finally {
      connection.disarm();
      connection.close();
    }
  }

  async #refuse(connection: Connection, reader: ByteReader, error: HttpError): Promise<void> {
    const { conn } = connection;
    this.#stats.badRequests++;
    this.#logs.event(
      `bad ${error.status}`,
      "Refused a request from {remote} with {status}: {reason}",
      {
        remote: formatAddr(conn.remoteAddr),
        status: error.status,
        reason: error.message,
      },
    );
    const body = encoder.encode(JSON.stringify({ error: "bad-request", message: error.message }));
    const head = `${statusLine(error.status)}content-type: application/json\r\n` +
      `content-length: ${body.length}\r\ndate: ${httpDate()}\r\nconnection: close\r\n\r\n`;
    try {
      await writeAll(conn, concat(encoder.encode(head), body));
    } catch {
      return; // The client is gone.
    }
    await this.#linger(connection, reader);
  }
}
