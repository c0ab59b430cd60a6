// Bad settings are refused where they are given, by name, as what they are:
// a TypeError for the wrong kind of value (a string that looks like a
// number included), a RangeError for a number out of range; never a network
// error later, never taken in silence.
import assert from "node:assert/strict";
import {
  connect,
  type ConnectOptions,
  httpDialer,
  type HttpDialerOptions,
  HttpLinkAcceptor,
  listen,
  type ListenOptions,
  serveRelay,
  type ServeRelayOptions,
} from "../mod.ts";

/** The error `kind` with a message matching `message`. */
const is = (kind: ErrorConstructor, message: RegExp) => (e: unknown) =>
  e instanceof kind && message.test((e as Error).message);

Deno.test("bad settings: refused at once, by name, a TypeError for the wrong kind of value", async () => {
  const connects: [unknown, ErrorConstructor, RegExp][] = [
    [{ port: "4000" }, TypeError, /^port must be a number, got "4000" \(a string\)$/],
    [{ port: 70000 }, RangeError, /^port must be an integer in 1\.\.65535, got 70000$/],
    [{ port: 1, backoff: 5 }, TypeError, /^backoff must be an object, got 5$/],
    [{ port: 1, hostname: 5 }, TypeError, /^hostname must be a string, got 5$/],
    [{ dialer: "x" }, TypeError, /^dialer must be a function, got "x" \(a string\)$/],
    [{ port: 1, signal: "x" }, TypeError, /^signal must be an AbortSignal, got "x" \(a string\)$/],
  ];
  for (const [options, kind, message] of connects) {
    await assert.rejects(connect(options as ConnectOptions), is(kind, message));
  }
  const listens: [unknown, ErrorConstructor, RegExp][] = [
    [{ port: 0, backlog: "5" }, TypeError, /^backlog must be a number, got "5" \(a string\)$/],
    [{ port: 0, backlog: 0 }, RangeError, /^backlog must be an integer >= 1, got 0$/],
    [{ port: "0" }, TypeError, /^port must be a number, got "0" \(a string\)$/],
  ];
  for (const [options, kind, message] of listens) {
    assert.throws(() => listen(options as ListenOptions), is(kind, message));
  }
  const relays: [unknown, ErrorConstructor, RegExp][] = [
    [{ keepAlive: "1000" }, TypeError, /^keepAlive must be a number, got "1000" \(a string\)$/],
    [{ keepAlive: -1 }, RangeError, /^keepAlive must be a positive number, got -1$/],
  ];
  for (const [options, kind, message] of relays) {
    const bad = { hostname: "127.0.0.1", port: 0, onListen() {}, ...(options as object) };
    assert.throws(() => serveRelay(bad as ServeRelayOptions), is(kind, message));
  }
  for (const backlog of [0, -1, 1.5, NaN]) {
    assert.throws(
      () => new HttpLinkAcceptor({ backlog }),
      is(RangeError, /^backlog must be an integer >= 1, got /),
    );
  }
  assert.throws(
    () => new HttpLinkAcceptor({ backlog: "x" as unknown as number }),
    is(TypeError, /^backlog must be a number, got "x" \(a string\)$/),
  );
  new HttpLinkAcceptor({ backlog: Infinity }).close();
  const dialers: [unknown, RegExp][] = [
    [
      { url: "http://x/", transport: "ws" },
      /^transport must be "auto", "websocket" or "http", got "ws"/,
    ],
    [{ url: "ftp://x/" }, /^a WebSocket URL is ws:, wss:, http: or https:, got ftp:$/],
  ];
  for (const [options, message] of dialers) {
    assert.throws(() => httpDialer(options as HttpDialerOptions), is(TypeError, message));
  }
});
