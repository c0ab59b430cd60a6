import assert from "node:assert/strict";
import { sourceOf } from "./_source.ts";

const tcp = (hostname: string): Deno.NetAddr => ({ transport: "tcp", hostname, port: 1 });

Deno.test("sourceOf: an IPv4 address, an IPv6 /64, nothing for other transports", () => {
  assert.equal(sourceOf(tcp("127.0.0.2")), "127.0.0.2");
  assert.equal(sourceOf(tcp("::ffff:10.0.0.7")), "10.0.0.7", "IPv4-mapped is IPv4");
  // Every address of one /64 is one source; the next /64 is another.
  assert.equal(sourceOf(tcp("2001:db8:1:2::1")), "2001:db8:1:2::/64");
  assert.equal(sourceOf(tcp("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), "2001:db8:1:2::/64");
  assert.equal(sourceOf(tcp("2001:db8:1:3::1")), "2001:db8:1:3::/64");
  assert.equal(sourceOf(tcp("::1")), "0:0:0:0::/64");
  assert.equal(sourceOf(tcp("fe80::1%eth0")), "fe80:0:0:0::/64");
  assert.equal(sourceOf({ transport: "unix", path: "/tmp/s" }), null);
  assert.equal(sourceOf(undefined), null);
});

Deno.test("sourceOf: one source per address, whatever form it is written in", () => {
  assert.equal(sourceOf(tcp("::ffff:7f00:1")), "127.0.0.1", "a mapped address in hex");
  assert.equal(sourceOf(tcp("::FFFF:127.0.0.1")), "127.0.0.1");
  assert.equal(sourceOf(tcp("2001:DB8:0001:0002::1")), "2001:db8:1:2::/64");
  assert.equal(sourceOf(tcp("2001:db8:1:2:0:0:0:5")), "2001:db8:1:2::/64");
});
