import assert from "node:assert/strict";
import { redactedUrl } from "./_settings.ts";

Deno.test("redactedUrl hides a URL's password, and only that", () => {
  assert.equal(redactedUrl("redis://:s3cret@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
  assert.equal(redactedUrl("wss://bob:pa@ss@relay.example/x"), "wss://bob:***@relay.example/x");
  assert.equal(redactedUrl("https://bob@relay.example/"), "https://bob@relay.example/");
  assert.equal(redactedUrl("https://relay.example:8443/x"), "https://relay.example:8443/x");
  // An "@" after the authority is not userinfo's end.
  assert.equal(redactedUrl("https://relay.example/@team"), "https://relay.example/@team");
  assert.equal(
    redactedUrl("https://bob:pw@relay.example/a@b?c=@d#@e"),
    "https://bob:***@relay.example/a@b?c=@d#@e",
  );
  assert.equal(redactedUrl("http://relay.example?to=a@b"), "http://relay.example?to=a@b");
});

Deno.test("redactedUrl never shows a password that breaks the URL (a `/`, `?` or `#` in it)", () => {
  assert.equal(redactedUrl("redis://:pa#ss@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
  assert.equal(redactedUrl("redis://u:a/b?c@host:6379/0"), "redis://u:***@host:6379/0");
  assert.equal(redactedUrl("redis://u:a/b@c@host"), "redis://u:***@host");
  assert.equal(redactedUrl("not a url: x@y"), "not a url: x@y");
});
