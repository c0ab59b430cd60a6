/**
 * The HTTP streaming client transport, for networks whose proxies break
 * WebSockets: `POST /relay/stream` with the hello returns an event stream of
 * the relay's frames; the node's frames go up in `POST /relay/send`s, one at
 * a time, each carrying everything queued meanwhile.
 *
 * @module
 */

import { errorMessage, innermostMessage, peerText, refusalText } from "../_util.ts";
import {
  encodeFrame,
  type HelloFrame,
  type NodeFrame,
  PATHS,
  type RelayFrame,
  relayUrl,
  SECRET_HEADER,
  STREAM_HEADER,
} from "./_protocol.ts";
import { parseRefusal, parseRelayFrame, readJson } from "./_parse.ts";
import { readSse, type SseEvent } from "./_sse.ts";
import {
  type ClientTransport,
  connectFailure,
  type DialSettings,
  type OpenedTransport,
  RelayConnectError,
  relayFrameBound,
  RelayRefusedError,
  type TransportHooks,
} from "./_transport.ts";

/** How long the goodbye POST may take. */
const BYE_TIMEOUT_MS = 2000;

/** The end of an event stream, and why. */
interface StreamEnd {
  ended: string;
  /** The relay's close code, when it said one. */
  code?: number;
}

/** The next relay frame in `events`, or why there is none; bad frames go to `onBadFrame`. */
async function nextFrame(
  events: AsyncGenerator<SseEvent>,
  onBadFrame: (reason: string) => void,
): Promise<RelayFrame | StreamEnd> {
  for (;;) {
    const next = await events.next();
    if (next.done) return { ended: "the relay ended the stream" };
    if (next.value.type === "close") {
      return { ended: next.value.close.reason, code: next.value.close.code };
    }
    const parsed = parseRelayFrame(readJson(next.value.data));
    if (parsed.ok) return parsed.frame;
    onBadFrame(parsed.problem.reason);
  }
}

/** A node's event stream from the relay, and its POSTs to it. */
export class HttpStreamTransport implements ClientTransport {
  /** Always `"http"`. */
  readonly kind = "http" as const;
  #settings: DialSettings;
  #stream: string;
  #abort: AbortController;
  #hooks: TransportHooks;
  #closing = false;
  #pending: NodeFrame[] = [];
  /** Frames per POST: all that wait, but fewer while a batch refused as too large goes again. */
  #batch = Infinity;
  /** Frames of that batch still to go again. */
  #resending = 0;
  #flushing = false;

  private constructor(
    settings: DialSettings,
    stream: string,
    abort: AbortController,
    hooks: TransportHooks,
  ) {
    this.#settings = settings;
    this.#stream = stream;
    this.#abort = abort;
    this.#hooks = hooks;
  }

  /** Opens the stream with `hello` and resolves with the welcome. */
  static async open(
    settings: DialSettings,
    hello: HelloFrame,
    hooks: TransportHooks,
    signal?: AbortSignal,
  ): Promise<OpenedTransport> {
    signal?.throwIfAborted();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), settings.timeout);
    // The caller giving up ends the dial as the timeout does, with its reason.
    const onAbort = () => abort.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return await HttpStreamTransport.#dial(settings, hello, hooks, abort, signal);
    } finally {
      // Welcomed or failed: the timeout is done with, and the caller's signal.
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** `open`'s dial, given up by `abort` (the timeout's or the caller's). */
  static async #dial(
    settings: DialSettings,
    hello: HelloFrame,
    hooks: TransportHooks,
    abort: AbortController,
    signal: AbortSignal | undefined,
  ): Promise<OpenedTransport> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    // Here the secret can go in a header, where it is kept out of request bodies proxies may log.
    if (settings.secret !== undefined) headers[SECRET_HEADER] = settings.secret;
    let response: Response;
    try {
      response = await fetch(relayUrl(settings.base, PATHS.stream), {
        method: "POST",
        headers,
        body: encodeFrame({ ...hello, secret: undefined }),
        signal: abort.signal,
        client: settings.client,
      });
    } catch (error) {
      if (error instanceof Deno.errors.NotCapable) throw error;
      if (signal?.aborted) throw signal.reason;
      if (abort.signal.aborted) {
        throw new RelayConnectError(
          "timeout",
          `${settings.base.host} did not answer within ${settings.timeout} ms`,
          { cause: error },
        );
      }
      throw connectFailure(settings.base, innermostMessage(error), error, settings.proxy);
    }
    if (!response.ok) {
      // A reason is a line or two: read no more (an endless body held memory
      // without bound), and not past the dial's end (its timeout, the caller).
      const refusal = parseRefusal(readJson(await refusalText(response, abort.signal)));
      // The relay's words, bound for terminals and logs: escaped here, as they come in.
      if (refusal) throw new RelayRefusedError(refusal.error, peerText(refusal.message));
      throw new RelayConnectError(
        "not-a-relay",
        `${settings.base.host} answered ${response.status} ${response.statusText} to ` +
          `POST ${
            relayUrl(settings.base, PATHS.stream).pathname
          }, not as a relay does: is the URL right?`,
      );
    }
    // Up to the welcome, a frame may be as long as a welcome; then as its `maxMessageBytes` says.
    let bound = relayFrameBound();
    const events = readSse(response.body!, () => bound);
    let first;
    try {
      first = await nextFrame(events, hooks.onBadFrame);
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      throw new RelayConnectError(
        abort.signal.aborted ? "timeout" : "broken",
        abort.signal.aborted
          ? `no welcome from ${settings.base.host} within ${settings.timeout} ms`
          : `the HTTP stream from ${settings.base.host} broke before the welcome: ${
            innermostMessage(error)
          }`,
        { cause: error },
      );
    }
    if ("ended" in first || first.t !== "welcome") {
      abort.abort();
      if (!("ended" in first) && first.t === "error") {
        throw new RelayRefusedError(first.code, peerText(first.message));
      }
      throw new RelayConnectError(
        "not-a-relay",
        `${settings.base.host} ended the stream without a welcome: is it a relay?`,
      );
    }
    if (first.stream === undefined) {
      abort.abort();
      throw new Error("the relay's welcome names no stream");
    }
    bound = relayFrameBound(first.maxMessageBytes);
    const transport = new HttpStreamTransport(settings, first.stream, abort, hooks);
    transport.#listen(events);
    return { transport, welcome: first };
  }

  async #listen(events: AsyncGenerator<SseEvent>): Promise<void> {
    try {
      for (;;) {
        const frame = await nextFrame(events, this.#hooks.onBadFrame);
        if ("ended" in frame) return this.#fail(frame.ended, frame.code);
        this.#hooks.onFrame(frame);
      }
    } catch (error) {
      this.#fail(`stream broke: ${errorMessage(error)}`);
    }
  }

  #fail(reason: string, code?: number): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#abort.abort();
    this.#hooks.onClose(reason, code);
  }

  #post(frames: readonly NodeFrame[], signal: AbortSignal): Promise<Response> {
    return fetch(relayUrl(this.#settings.base, PATHS.send), {
      method: "POST",
      headers: { "content-type": "application/json", [STREAM_HEADER]: this.#stream },
      body: encodeFrame(frames),
      client: this.#settings.client,
      signal,
    });
  }

  // One POST at a time, carrying everything queued meanwhile: order is kept,
  // and a burst costs few requests.
  async #flush(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (this.#pending.length > 0 && !this.#closing) {
        const frames = this.#pending.splice(0, Math.min(this.#pending.length, this.#batch));
        const res = await this.#post(frames, this.#abort.signal);
        await res.body?.cancel();
        if (res.status === 413 && frames.length > 1) {
          // Too large for a proxy in front (see #refusedAlone): the same
          // frames again, in halves, until the one too large goes alone.
          this.#pending = frames.concat(this.#pending);
          this.#resending = Math.max(this.#resending, frames.length);
          this.#batch = Math.ceil(frames.length / 2);
          continue;
        }
        if (res.status === 413 ? !this.#refusedAlone(frames[0]) : !res.ok) {
          throw new Error(`the relay answered ${res.status} to a send`);
        }
        // Past the batch that was refused: whole batches again.
        this.#resending -= frames.length;
        if (this.#resending <= 0) this.#batch = Infinity;
      }
    } catch (error) {
      this.#fail(`send failed: ${errorMessage(error)}`);
    } finally {
      this.#flushing = false;
    }
  }

  /**
   * A POST of one frame refused as too large (413): by a proxy in front of
   * the relay (nginx takes 1 MB by default), since the relay's own limit is
   * checked before a message is sent. Not a broken link: redialing would
   * send the same again, for ever. A message is refused as the relay refuses
   * one (an error naming its seq; it is not resent); whether it was one,
   * else the link fails.
   */
  #refusedAlone(frame: NodeFrame): boolean {
    if (frame.t !== "msg") return false;
    this.#hooks.onFrame({
      t: "error",
      code: "too-large",
      message: `${this.#settings.base.host} refused the message as too large (HTTP 413): ` +
        "a proxy in front of the relay takes less than the relay does " +
        "(nginx: client_max_body_size)",
      ...(frame.seq === undefined ? {} : { seq: frame.seq }),
    });
    return true;
  }

  /** Queues one frame for the next POST. */
  send(frame: NodeFrame): void {
    if (this.#closing) return;
    this.#pending.push(frame);
    this.#flush();
  }

  /**
   * Says goodbye (with whatever is still queued) so the others hear "left"
   * at once, then stops; with `bye` false, only stops.
   */
  async close(bye = true): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    if (!bye) return this.#abort.abort();
    try {
      const signal = AbortSignal.timeout(BYE_TIMEOUT_MS);
      const res = await this.#post([...this.#pending, { t: "bye" }], signal);
      await res.body?.cancel();
      // Too large for a proxy with what waited: the bye alone, that the others hear "left".
      if (res.status === 413) await (await this.#post([{ t: "bye" }], signal)).body?.cancel();
    } catch {
      // The relay will notice the stream end instead.
    }
    this.#abort.abort();
  }
}
