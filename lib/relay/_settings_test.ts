import assert from "node:assert/strict";
import { MAX_TIMER_MS } from "../_util.ts";
import { MAX_KEEP_ALIVE_MS, redactedUrl, redisUrl, relaySettings } from "./_settings.ts";

Deno.test("redactedUrl hides a URL's password", () => {
  assert.equal(redactedUrl("redis://:s3cret@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
  assert.equal(redactedUrl("wss://bob:pa@ss@relay.example/x"), "wss://bob:***@relay.example/x");
  assert.equal(redactedUrl("https://bob@relay.example/"), "https://bob@relay.example/");
  assert.equal(redactedUrl("https://relay.example:8443/x"), "https://relay.example:8443/x");
  // No password: an "@" in the path is left alone.
  assert.equal(redactedUrl("https://relay.example/@team"), "https://relay.example/@team");
  assert.equal(redactedUrl("not a url: x@y"), "not a url: x@y");
  // Forms the URL parser takes too: a space in front, fewer slashes.
  assert.equal(redactedUrl(" redis://:s3cret@h:6379"), "redis://:***@h:6379");
  assert.equal(redactedUrl("redis:/:s3cret@h:6379"), "redis:/:***@h:6379");
  assert.equal(redactedUrl("redis::s3cret@h"), "redis::***@h");
  // What the URL parser drops or trims, dropped first: the password it would find is masked.
  for (
    const url of [
      "\x01redis://:s3cret@h:6379/x",
      "re\tdis://:s3cret@h/x",
      "redis://:s3\ncret@h/x",
      "\ufeffredis://:s3cret@h:6379",
      "\u00a0redis://:s3cret@h:6379",
    ]
  ) {
    assert.ok(!redactedUrl(url).includes("s3"), redactedUrl(url));
  }
});

Deno.test("redactedUrl never shows any of a password that breaks the URL (@, /, ? or # in it)", () => {
  const cases = [
    "redis://:pa#ss@127.0.0.1:6379",
    "redis://u:a/b?c@host:6379/0",
    "redis://u:a/b@c@host",
    "redis://u:p@ss/word@host:6379",
    "redis://:hunter@2#x@127.0.0.1:6379",
  ];
  for (const url of cases) {
    const shown = redactedUrl(url);
    const password = url.slice(url.indexOf(":", 8) + 1, url.lastIndexOf("@"));
    for (const piece of password.split(/[@/?#]/).filter((p) => p.length > 1)) {
      assert.ok(!shown.includes(piece), `${shown} shows "${piece}" of ${url}`);
    }
  }
  // What it costs: a path "@" after a password is taken for its end.
  assert.equal(redactedUrl("https://bob:pw@host/a@b"), "https://bob:***@b");
});

Deno.test("redisUrl's refusals never show the password", () => {
  for (const url of ["redis://u:p@ss/word@host:6379", "redis://:se/cret@h:1/x?y"]) {
    let said = "";
    try {
      redisUrl(url);
    } catch (error) {
      said = String(error);
    }
    assert.match(said, /RangeError/);
    assert.ok(!/\/word|\/cret/.test(said), said); // the passwords' tails
  }
});

Deno.test("relaySettings: a keep-alive too long for its fade time (2.5 times it) is named, not the fade time nobody set", () => {
  assert.equal(relaySettings({ keepAlive: 1000 }).fadeAfter, 2500);
  assert.equal(relaySettings({ keepAlive: MAX_KEEP_ALIVE_MS }).fadeAfter, MAX_KEEP_ALIVE_MS * 2.5);
  assert.ok(MAX_KEEP_ALIVE_MS * 2.5 <= MAX_TIMER_MS);
  assert.throws(() => relaySettings({ keepAlive: 900_000_000 }), /keepAlive must be at most/);
  assert.equal(relaySettings({ keepAlive: 900_000_000, fadeAfter: 1e9 }).fadeAfter, 1e9);
  assert.throws(
    () => relaySettings({ keepAlive: 5000, fadeAfter: 5000 }),
    /must be longer than keepAlive/,
  );
  assert.throws(
    () => relaySettings({ keepAlive: 10_100, fadeAfter: 10_101 }),
    /two keep-alive sweeps \(10600 ms\)/,
  );
  assert.throws(() => relaySettings({ keepAlive: 1000, fadeAfter: -5 }), /fadeAfter must be/);
});
