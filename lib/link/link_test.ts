import assert from "node:assert/strict";
import { formatAddr, urlAddr } from "./link.ts";

Deno.test("formatAddr: host:port by the address's fields (IPv6 in brackets), a path, or ? for none", () => {
  assert.equal(
    formatAddr({ transport: "tcp", hostname: "127.0.0.1", port: 4000 }),
    "127.0.0.1:4000",
  );
  assert.equal(formatAddr({ transport: "tcp", hostname: "::1", port: 4000 }), "[::1]:4000");
  // A TLS connection's address in Deno 2.9: no transport field.
  const tls = { hostname: "127.0.0.1", port: 4443 } as unknown as Deno.Addr;
  assert.equal(formatAddr(tls), "127.0.0.1:4443");
  assert.equal(formatAddr({ transport: "unix", path: "/run/x.sock" }), "/run/x.sock");
  assert.equal(formatAddr(undefined), "?");
});

Deno.test("urlAddr: the server a URL names, its default port by scheme, IPv6 without brackets", () => {
  const cases: [string, string, number][] = [
    ["http://relay.example/relay", "relay.example", 80],
    ["https://relay.example/relay", "relay.example", 443],
    ["wss://relay.example:8443/x", "relay.example", 8443],
    ["ws://[::1]:8080/", "::1", 8080],
  ];
  for (const [url, hostname, port] of cases) {
    assert.deepEqual(urlAddr(new URL(url)), { transport: "tcp", hostname, port }, url);
  }
  assert.equal(formatAddr(urlAddr(new URL("http://[::1]:8080/"))), "[::1]:8080");
});
