import assert from "node:assert/strict";
import { canonicalIp, requestSource } from "./_forwarded_for.ts";

const PROXY: Deno.NetAddr = { transport: "tcp", hostname: "10.0.0.2", port: 41234 };
const request = (forwarded?: string) =>
  new Request("http://relay/relay/ws", {
    headers: forwarded === undefined ? {} : { "x-forwarded-for": forwarded },
  });

Deno.test("requestSource: a trusted proxy's X-Forwarded-For names the client; nobody else's is believed", () => {
  const trusted = ["10.0.0.2", "10.0.0.3"];
  const cases: [Request, Deno.Addr | undefined, string[], string | undefined][] = [
    // No proxy trusted: the connection's peer, whatever the header says.
    [request("203.0.113.9"), PROXY, [], "10.0.0.2:41234"],
    // Trusted: the hop it appended.
    [request("198.51.100.7"), PROXY, trusted, "198.51.100.7 (via 10.0.0.2:41234)"],
    // A client that writes its own header: the trusted proxy's hop is the last, and is read.
    [request("203.0.113.9, 198.51.100.7"), PROXY, trusted, "198.51.100.7 (via 10.0.0.2:41234)"],
    // Two trusted proxies in a row: past both.
    [request("198.51.100.7, 10.0.0.3"), PROXY, trusted, "198.51.100.7 (via 10.0.0.2:41234)"],
    // Trusted, but no header (a health check from the proxy itself), or only trusted hops.
    [request(), PROXY, trusted, "10.0.0.2:41234"],
    [request("10.0.0.3"), PROXY, trusted, "10.0.0.2:41234"],
    // A hop that is no address is not copied into the log.
    [request("<script>"), PROXY, trusted, "10.0.0.2:41234 (X-Forwarded-For unreadable)"],
    // IPv6, and an IPv4 peer mapped into IPv6.
    [request("2001:db8::1"), PROXY, trusted, "2001:db8::1 (via 10.0.0.2:41234)"],
    [
      request("198.51.100.7"),
      { transport: "tcp", hostname: "::ffff:10.0.0.2", port: 1 },
      trusted,
      "198.51.100.7 (via [::ffff:10.0.0.2]:1)",
    ],
    [
      request("198.51.100.7"),
      { transport: "tcp", hostname: "::ffff:a00:2", port: 1 },
      trusted,
      "198.51.100.7 (via [::ffff:a00:2]:1)",
    ],
    // Written otherwise, the same addresses: a trusted hop with a port (some
    // load balancers add one), IPv6 in capitals or in full.
    [request("198.51.100.7, 10.0.0.3:5555"), PROXY, trusted, "198.51.100.7 (via 10.0.0.2:41234)"],
    [
      request("198.51.100.7, [2001:DB8:0:0:0:0:0:5]:443"),
      PROXY,
      [...trusted, "2001:db8::5"],
      "198.51.100.7 (via 10.0.0.2:41234)",
    ],
    // No address given by the server: nothing to say.
    [request("198.51.100.7"), undefined, trusted, undefined],
  ];
  for (const [req, addr, list, expected] of cases) {
    assert.equal(requestSource(req, addr, list), expected, `${req.headers.get("x-forwarded-for")}`);
  }
});

Deno.test("canonicalIp: one form per address; a name, or what is no address, is null", () => {
  const cases: [string, string | null][] = [
    ["10.0.0.2", "10.0.0.2"],
    ["10.0.0.3:5555", "10.0.0.3"],
    ["2001:DB8::5", "2001:db8::5"],
    ["[2001:db8:0:0:0:0:0:5]:443", "2001:db8::5"],
    ["::ffff:10.0.0.2", "10.0.0.2"],
    ["::1", "::1"],
    ["proxy.internal", null],
    ["10.0.0.256", null],
    ["010.0.0.1", null],
    ["db:5432", null],
  ];
  for (const [text, expected] of cases) assert.equal(canonicalIp(text), expected, text);
});

Deno.test("requestSource: a hop written 'unreadable' is a name like any, not the unreadable marker", () => {
  const req = new Request("http://x/", { headers: { "x-forwarded-for": "unreadable" } });
  const peer: Deno.NetAddr = { transport: "tcp", hostname: "10.0.0.1", port: 41234 };
  assert.equal(requestSource(req, peer, ["10.0.0.1"]), "unreadable (via 10.0.0.1:41234)");
});
