/**
 * How a {@linkcode RelayNode} reaches the relay: a WebSocket, or (where proxies
 * break WebSockets) a streaming response downstream plus POSTs upstream.
 *
 * @module
 */

import { _PATHS, _STREAM_HEADER, SECRET_HEADER } from "./protocol.ts";

/** Transports a node can use. */
export type RelayTransportKind = "websocket" | "http";

/** An error that retrying will not fix (wrong secret, bad nickname, relay full). */
export class RelayRefusedError extends Error {
  /** Short machine-readable reason, e.g. `unauthorized`, `bad-request`, `full`. */
  readonly code: string;
  /** Creates the error. */
  constructor(code: string, message: string) {
    super(message);
    this.name = "RelayRefusedError";
    this.code = code;
  }
}

/** @internal One open transport, after the welcome. */
export interface _ClientTransport {
  readonly kind: RelayTransportKind;
  /** Sends one frame, in order. */
  send(frame: object): void;
  /**
   * Says goodbye (the others hear "left") and closes; `onClose` is not called
   * for a close we asked for. Resolves when done, or after a short bound.
   */
  close(): Promise<void>;
}

/** @internal What a transport needs from its node. */
export interface _TransportHooks {
  onFrame(frame: Record<string, unknown>): void;
  onClose(reason: string): void;
}

/** @internal Connection settings shared by both transports. */
export interface _DialSettings {
  base: URL;
  secret?: string;
  client?: Deno.HttpClient;
  timeout: number;
}

function _parse(data: string): Record<string, unknown> | null {
  try {
    const value = JSON.parse(data);
    return typeof value === "object" && value !== null ? value : null;
  } catch {
    return null;
  }
}

function _refusal(frame: Record<string, unknown>): RelayRefusedError {
  return new RelayRefusedError(String(frame.code), String(frame.message));
}

/** @internal Opens a WebSocket, sends `hello`, resolves with the welcome. */
export function _openWebSocket(
  settings: _DialSettings,
  hello: object,
  hooks: _TransportHooks,
): Promise<{ transport: _ClientTransport; welcome: Record<string, unknown> }> {
  const url = new URL(_PATHS.ws, settings.base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  // The secret goes in the hello frame: browsers cannot set WebSocket headers, and URLs get logged.
  const socket = new WebSocket(url, { client: settings.client });
  return new Promise((resolve, reject) => {
    let welcomed = false;
    let closing = false;
    const timer = setTimeout(() => {
      reject(new Error(`no welcome from the relay within ${settings.timeout} ms`));
      socket.close();
    }, settings.timeout);
    const transport: _ClientTransport = {
      kind: "websocket",
      send(frame) {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
      },
      close() {
        if (closing) return Promise.resolve();
        closing = true;
        if (socket.readyState === WebSocket.OPEN) socket.send('{"t":"bye"}');
        socket.close(1000);
        return new Promise<void>((resolve) => {
          const bound = setTimeout(resolve, 1000);
          socket.addEventListener("close", () => {
            clearTimeout(bound);
            resolve();
          });
        });
      },
    };
    socket.onopen = () => socket.send(JSON.stringify(hello));
    socket.onmessage = (event) => {
      const frame = typeof event.data === "string" ? _parse(event.data) : null;
      if (frame === null) return;
      if (!welcomed) {
        if (frame.t === "welcome") {
          welcomed = true;
          clearTimeout(timer);
          resolve({ transport, welcome: frame });
        } else if (frame.t === "error") {
          clearTimeout(timer);
          reject(_refusal(frame));
          socket.close();
        }
        return;
      }
      hooks.onFrame(frame);
    };
    socket.onerror = () => {/* onclose follows with the reason */};
    socket.onclose = (event) => {
      clearTimeout(timer);
      const reason = event.reason || `WebSocket closed (${event.code})`;
      if (!welcomed) {
        reject(new Error(`WebSocket to ${url.host} failed: ${reason}`));
      } else if (!closing) {
        hooks.onClose(reason);
      }
    };
  });
}

/** @internal Opens the HTTP streaming transport: POST hello, read events; POST frames up. */
export async function _openHttpStream(
  settings: _DialSettings,
  hello: object,
  hooks: _TransportHooks,
): Promise<{ transport: _ClientTransport; welcome: Record<string, unknown> }> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), settings.timeout);
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (settings.secret !== undefined) headers[SECRET_HEADER] = settings.secret;
  let response: Response;
  try {
    response = await fetch(new URL(_PATHS.stream, settings.base), {
      method: "POST",
      headers,
      body: JSON.stringify({ ...hello, secret: undefined }),
      signal: abort.signal,
      client: settings.client,
    });
  } catch (error) {
    clearTimeout(timer);
    throw new Error(`HTTP stream to ${settings.base.host} failed: ${(error as Error).message}`);
  }
  if (!response.ok) {
    clearTimeout(timer);
    const body = _parse(await response.text().catch(() => ""));
    if (response.status >= 400 && response.status < 500 && body?.error) {
      throw new RelayRefusedError(String(body.error), String(body.message));
    }
    throw new Error(`HTTP stream to ${settings.base.host} failed: status ${response.status}`);
  }
  const events = _sseFrames(response.body!);
  let first: IteratorResult<Record<string, unknown>>;
  try {
    first = await events.next();
  } catch (error) {
    throw new Error(`HTTP stream broke before the welcome: ${(error as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
  if (first.done || first.value.t !== "welcome") {
    abort.abort();
    if (!first.done && first.value.t === "error") throw _refusal(first.value);
    throw new Error("the relay did not welcome the node");
  }
  const welcome = first.value;
  const stream = String(welcome.stream);
  let closing = false;
  const pending: object[] = [];
  let flushing = false;
  const fail = (reason: string) => {
    if (closing) return;
    closing = true;
    abort.abort();
    hooks.onClose(reason);
  };
  // One POST at a time, carrying everything queued meanwhile: order is kept,
  // and a burst costs few requests.
  const flush = async () => {
    if (flushing) return;
    flushing = true;
    try {
      while (pending.length > 0 && !closing) {
        const batch = pending.splice(0, pending.length);
        const res = await fetch(new URL(_PATHS.send, settings.base), {
          method: "POST",
          headers: { "content-type": "application/json", [_STREAM_HEADER]: stream },
          body: JSON.stringify(batch),
          client: settings.client,
          signal: abort.signal,
        });
        await res.body?.cancel();
        if (!res.ok) throw new Error(`the relay answered ${res.status} to a send`);
      }
    } catch (error) {
      fail(`send failed: ${(error as Error).message}`);
    } finally {
      flushing = false;
    }
  };
  (async () => {
    try {
      for await (const frame of events) {
        if (frame.t === "close") return fail(String(frame.reason ?? "closed by the relay"));
        hooks.onFrame(frame);
      }
      fail("the relay ended the stream");
    } catch (error) {
      fail(`stream broke: ${(error as Error).message}`);
    }
  })();
  return {
    welcome,
    transport: {
      kind: "http",
      send(frame) {
        if (closing) return;
        pending.push(frame);
        flush();
      },
      async close() {
        if (closing) return;
        closing = true;
        // Say goodbye so the others hear "left" at once, then stop listening.
        try {
          const res = await fetch(new URL(_PATHS.send, settings.base), {
            method: "POST",
            headers: { "content-type": "application/json", [_STREAM_HEADER]: stream },
            body: JSON.stringify([...pending, { t: "bye" }]),
            client: settings.client,
            signal: AbortSignal.timeout(2000),
          });
          await res.body?.cancel();
        } catch {
          // The relay will notice the stream end instead.
        }
        abort.abort();
      },
    },
  };
}

/** Parses a Server-Sent Events body into frames (`event: close` becomes `{t: "close"}`). */
async function* _sseFrames(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<Record<string, unknown>> {
  let buffer = "";
  for await (const text of body.pipeThrough(new TextDecoderStream())) {
    buffer += text;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      const frame = _parse(data);
      if (frame === null) continue;
      yield event === "close" ? { t: "close", ...frame } : frame;
    }
  }
}
