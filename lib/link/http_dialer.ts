/**
 * Dialing an immortal endpoint over HTTP, whatever the network allows:
 * WebSocket first, HTTP streaming when WebSocket is refused on the way (a
 * forward proxy that allows no tunnels, a reverse proxy that drops the
 * upgrade).
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { describeValue, errorMessage } from "../_util.ts";
import { dialHttpStream, type HttpStreamDialerOptions, MAX_POST_BYTES } from "./http_stream.ts";
import { PostSizing } from "./_post_sizing.ts";
import type { Dialer } from "./link.ts";
import { webSocketDialer, webSocketUrl } from "./websocket.ts";

const log = getLogger(["immortal", "link"]);

/** Which HTTP transport {@linkcode httpDialer} uses. */
export type HttpTransport = "auto" | "websocket" | "http";

/** Where and how {@linkcode httpDialer} connects. */
export interface HttpDialerOptions {
  /** The endpoint: `http:`, `https:`, `ws:` or `wss:`. */
  url: string | URL;
  /**
   * An HTTP client for a forward proxy or extra CA certificates, e.g.
   * `Deno.createHttpClient({ proxy: { url: "http://proxy:3128" } })`.
   * Without one, HTTP streaming follows `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`
   * as Deno's `fetch` does.
   */
  client?: Deno.HttpClient;
  /**
   * `"auto"` (the default) tries WebSocket and, when it cannot be opened,
   * HTTP streaming; after two such links in a row (or a `426`: a proxy
   * dropped the upgrade; seen without `client` only, Deno's WebSocket does
   * not say the status) it keeps to HTTP streaming. `"websocket"` or
   * `"http"` use only that one.
   */
  transport?: HttpTransport;
  /**
   * Extra headers of the request that opens each link (credentials, say);
   * a function is called for each link.
   */
  headers?: Record<string, string> | (() => Record<string, string>);
}

/**
 * Returns a {@linkcode Dialer} of links to an {@linkcode HttpLinkAcceptor}
 * endpoint, over WebSocket or HTTP streaming.
 *
 * @example Through whatever the network lets through
 * ```ts
 * import { connect, HttpLinkAcceptor, httpDialer, listen } from "@immortal/sockets";
 *
 * const links = new HttpLinkAcceptor();
 * using listener = listen({ acceptor: links });
 * await using server = Deno.serve(
 *   { hostname: "127.0.0.1", port: 0, onListen() {} },
 *   (req, info) => links.handle(req, info),
 * );
 * const dialer = httpDialer({ url: `http://127.0.0.1:${server.addr.port}/` });
 * await using client = await connect({ dialer });
 * await using conn = await listener.accept();
 * await client.write(new Uint8Array([1, 2, 3]));
 * console.log((await conn.readable.getReader().read()).value); // Uint8Array [1, 2, 3]
 * ```
 */
export function httpDialer(options: HttpDialerOptions): Dialer {
  const transport = options.transport ?? "auto";
  if (transport !== "auto" && transport !== "websocket" && transport !== "http") {
    throw new TypeError(
      `transport must be "auto", "websocket" or "http", got ${describeValue(transport)}`,
    );
  }
  // A URL no transport can dial is said now, not as an unreachable server at the first dial.
  webSocketUrl(options.url);
  const { headers } = options;
  const settings = (): HttpStreamDialerOptions => ({
    url: options.url,
    client: options.client,
    headers: typeof headers === "function" ? headers() : headers,
  });
  let fellBack = transport === "http";
  // WebSocket dials in a row that failed where HTTP streaming then worked.
  let webSocketFailures = 0;
  // One for all its HTTP-streaming links (see PostSizing).
  const sizing = new PostSizing(MAX_POST_BYTES);
  return async (signal) => {
    const link = settings();
    if (fellBack) return await dialHttpStream(link, sizing, signal);
    try {
      const opened = await webSocketDialer(link)(signal);
      webSocketFailures = 0;
      return opened;
    } catch (error) {
      if (transport === "websocket" || signal.aborted) throw error;
      const streamed = await dialHttpStream(link, sizing, signal);
      // WebSocket failed where plain requests pass. Once may be the server's
      // passing refusal (a relay whose other end of a pipe was not back yet:
      // the request over HTTP streaming came a moment later); twice in a row,
      // or a 426 (a proxy that dropped the upgrade), is something on the way
      // that refuses WebSocket: stay with HTTP streaming from now on.
      const reason = errorMessage(error);
      if (++webSocketFailures >= 2 || /answered 426\b/.test(reason)) {
        fellBack = true;
        log.info("WebSocket to {url} failed ({reason}); using HTTP streaming", {
          url: String(options.url),
          reason,
        });
      } else {
        log.debug("WebSocket to {url} failed ({reason}); this link over HTTP streaming", {
          url: String(options.url),
          reason,
        });
      }
      return streamed;
    }
  };
}
