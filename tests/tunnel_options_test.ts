/**
 * Settings that are wrong are refused where they are given, in words that
 * name them and show the value: by the tunnel constructors (not as an end of
 * file on each tunneled connection later), and by `connect`/`listen` for
 * numbers written as strings and a `tls` that is not a boolean or an object.
 */

import assert from "node:assert/strict";
import {
  connect,
  listen,
  tcpDialer,
  TunnelClient,
  type TunnelClientOptions,
  TunnelServer,
  type TunnelServerOptions,
} from "../mod.ts";
import { within } from "./_helpers.ts";

type ErrorClass = typeof TypeError | typeof RangeError;

/** `make()` throws an `expected` whose message matches `message`. */
function refuses(make: () => unknown, expected: ErrorClass, message: RegExp, what: string): void {
  assert.throws(make, (error: unknown) => {
    assert.ok(error instanceof expected, `${what}: ${error}`);
    assert.match(error.message, message, what);
    return true;
  });
}

const TARGET = { hostname: "127.0.0.1", port: 9 };

Deno.test("TunnelServer refuses a missing or wrong target, and bad settings, before it listens", () => {
  const cases: [Record<string, unknown>, ErrorClass, RegExp][] = [
    [{}, TypeError, /^target is required: \{ hostname, port \}/],
    [
      { target: "127.0.0.1:22" },
      TypeError,
      /^target must be an object \{ hostname, port \}, got "127\.0\.0\.1:22" \(a string\)$/,
    ],
    [
      { target: { hostname: "127.0.0.1" } },
      TypeError,
      /^target\.port must be an integer in 1\.\.65535, got undefined$/,
    ],
    [
      { target: { hostname: "127.0.0.1", port: -1 } },
      RangeError,
      /^target\.port must be an integer in 1\.\.65535, got -1$/,
    ],
    [
      { target: { hostname: "127.0.0.1", port: 0 } },
      RangeError,
      /^target\.port must be an integer in 1\.\.65535, got 0$/,
    ],
    [
      { target: { hostname: "127.0.0.1", port: "22" } },
      TypeError,
      /^target\.port must be an integer in 1\.\.65535, got "22" \(a string\)$/,
    ],
    [
      { target: { hostname: "", port: 22 } },
      TypeError,
      /^target\.hostname must be a non-empty string, got "" \(a string\)$/,
    ],
    [
      { target: { port: 22 } },
      TypeError,
      /^target\.hostname must be a non-empty string, got undefined$/,
    ],
    [
      { target: TARGET, port: "2000" },
      TypeError,
      /^port must be an integer in 0\.\.65535, got "2000" \(a string\)$/,
    ],
    [
      { target: TARGET, maxConnections: "5" },
      TypeError,
      /^maxConnections must be an integer >= 1, got "5" \(a string\)$/,
    ],
    // The session settings: at construction, not when a session comes.
    [
      { target: TARGET, resumeTimeout: -1 },
      RangeError,
      /^resumeTimeout must be a number >= 1, got -1$/,
    ],
    [
      { target: TARGET, heartbeatInterval: "1000" },
      TypeError,
      /^heartbeatInterval must be a number >= 10, got "1000" \(a string\)$/,
    ],
    [
      { target: TARGET, tls: "yes" },
      TypeError,
      /^tls must be a boolean or an object of TLS settings, got "yes" \(a string\)$/,
    ],
  ];
  for (const [options, expected, message] of cases) {
    // Nothing may be left listening: the test's resource check would see it.
    refuses(
      () => new TunnelServer({ hostname: "127.0.0.1", port: 0, ...options } as TunnelServerOptions),
      expected,
      message,
      JSON.stringify(options),
    );
  }
});

Deno.test("TunnelClient refuses a missing server and bad settings at once, not as an end of file on each connection", () => {
  const SERVER = { hostname: "127.0.0.1", port: 9 };
  const cases: [Record<string, unknown>, ErrorClass, RegExp][] = [
    [{}, TypeError, /^server is required \(unless a dialer is given\)/],
    [
      { server: { hostname: "127.0.0.1", port: "2000" } },
      TypeError,
      /^server\.port must be an integer in 1\.\.65535, got "2000" \(a string\)$/,
    ],
    [
      { server: { hostname: "127.0.0.1", port: 70000 } },
      RangeError,
      /^server\.port must be an integer in 1\.\.65535, got 70000$/,
    ],
    [
      { server: { hostname: 127, port: 2000 } },
      TypeError,
      /^server\.hostname must be a non-empty string, got 127$/,
    ],
    [
      { server: SERVER, resumeTimeout: -1 },
      RangeError,
      /^resumeTimeout must be a number >= 1, got -1$/,
    ],
    [
      { server: SERVER, connectWait: -1 },
      RangeError,
      /^connectWait must be a number >= 0, got -1$/,
    ],
    [
      { server: SERVER, connectWait: "5" },
      TypeError,
      /^connectWait must be a number >= 0, got "5" \(a string\)$/,
    ],
    [
      { server: SERVER, backoff: { initial: "x" } },
      TypeError,
      /^backoff\.initial must be a number >= 1, got "x" \(a string\)$/,
    ],
    [{ server: SERVER, backoff: 100 }, TypeError, /^backoff must be an object, got 100$/],
    [
      { server: SERVER, tls: "yes" },
      TypeError,
      /^tls must be a boolean or an object of TLS settings, got "yes" \(a string\)$/,
    ],
    [
      { server: SERVER, tls: { caCerts: "-----BEGIN" } },
      TypeError,
      /^tls\.caCerts must be an array of PEM strings, got "-----BEGIN" \(a string\)$/,
    ],
    [
      { server: SERVER, key: "" },
      TypeError,
      /^key must be a non-empty string or Uint8Array, got an empty one$/,
    ],
    [{ server: SERVER, port: -1 }, RangeError, /^port must be an integer in 0\.\.65535, got -1$/],
    [
      { server: SERVER, dialer: "tcp" },
      TypeError,
      /^dialer must be a function, got "tcp" \(a string\)$/,
    ],
  ];
  for (const [options, expected, message] of cases) {
    refuses(
      () => new TunnelClient({ hostname: "127.0.0.1", port: 0, ...options } as TunnelClientOptions),
      expected,
      message,
      JSON.stringify(options),
    );
  }
});

Deno.test("TunnelClient with a dialer needs no server: its session opens", async () => {
  await using server = new TunnelServer({ hostname: "127.0.0.1", port: 0, target: TARGET });
  await using client = new TunnelClient({
    hostname: "127.0.0.1",
    port: 0,
    dialer: tcpDialer({ hostname: "127.0.0.1", port: server.addr.port }),
  });
  await within(10_000, "the session", client.open());
  assert.equal(client.sessions.length, 1);
});

Deno.test("connect and listen say that a number was given as a string, and refuse a tls that is neither a boolean nor an object", async () => {
  const cases: [Record<string, unknown>, ErrorClass, RegExp][] = [
    [
      { heartbeatInterval: "1000" },
      TypeError,
      /^heartbeatInterval must be a number >= 10, got "1000" \(a string\)$/,
    ],
    [
      { resumeTimeout: "5" },
      TypeError,
      /^resumeTimeout must be a number >= 1, got "5" \(a string\)$/,
    ],
    [{ resumeTimeout: -1 }, RangeError, /^resumeTimeout must be a number >= 1, got -1$/],
    [{ encrypt: "yes" }, TypeError, /^encrypt must be true or false, got "yes" \(a string\)$/],
    [
      { tls: "yes" },
      TypeError,
      /^tls must be a boolean or an object of TLS settings, got "yes" \(a string\)$/,
    ],
    [
      { tls: "no" },
      TypeError,
      /^tls must be a boolean or an object of TLS settings, got "no" \(a string\)$/,
    ],
    [{ tls: 1 }, TypeError, /^tls must be a boolean or an object of TLS settings, got 1$/],
  ];
  for (const [options, expected, message] of cases) {
    const what = JSON.stringify(options);
    // Port 9 (discard): refused before anything is dialed, so nothing need listen there.
    await assert.rejects(connect({ hostname: "127.0.0.1", port: 9, ...options }), (error) => {
      assert.ok(error instanceof expected, `connect ${what}: ${error}`);
      assert.match(error.message, message, `connect ${what}`);
      return true;
    });
    refuses(
      () => listen({ hostname: "127.0.0.1", port: 0, ...options }),
      expected,
      message,
      `listen ${what}`,
    );
  }
});
