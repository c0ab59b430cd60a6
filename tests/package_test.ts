// The package's boundaries: every entry point exists, is documented-checked in
// `deno task lint`, and the root module stays free of wire internals.
import assert from "node:assert/strict";
import * as root from "../mod.ts";

const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));

Deno.test("every deno.json export exists and is covered by deno doc --lint in the lint task", async () => {
  const lint: string = config.tasks.lint;
  for (const [name, path] of Object.entries<string>(config.exports)) {
    await Deno.stat(new URL(`../${path}`, import.meta.url));
    const file = path.replace(/^\.\//, "");
    assert.ok(
      new RegExp(`deno doc --lint[^&]*\\s${file.replaceAll(".", "\\.")}(\\s|$)`).test(lint),
      `export "${name}" (${file}) is missing from the lint task's deno doc --lint`,
    );
  }
});

Deno.test("the root module reaches sessions, tunnels and the relay in one hop, without frame internals", () => {
  for (const name of ["connect", "listen", "TunnelClient", "TunnelServer", "Relay", "serveRelay"]) {
    assert.ok(name in root, `${name} is missing from mod.ts`);
  }
  assert.ok("RelayNode" in root, "RelayNode is missing from mod.ts");
  for (const name of ["encodeFrame", "FrameDecoder", "HELLO_MAGIC", "writeFrameHeader"]) {
    assert.ok(!(name in root), `${name} is a wire internal: export it from ./frame only`);
  }
  for (const name of Object.keys(root)) {
    assert.ok(!name.startsWith("_"), `${name}: internal symbols stay out of the public face`);
  }
});
