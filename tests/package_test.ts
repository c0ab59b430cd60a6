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

Deno.test("the published package holds the code and its documents only: no secret a user made in the checkout, nothing stray", async () => {
  const root = new URL("../", import.meta.url).pathname;
  const copy = await Deno.makeTempDir({ prefix: "immortal-publish-" });
  try {
    // The checkout as a user has it after following the README: the files
    // git knows (and would) plus the secrets the CLIs read from the working
    // directory (deno.json's permission sets name them there).
    const listed = await new Deno.Command("git", {
      args: ["ls-files", "-co", "--exclude-standard", "-z"],
      cwd: root,
    }).output();
    assert.ok(listed.success, "git ls-files");
    for (const file of new TextDecoder().decode(listed.stdout).split("\0").filter(Boolean)) {
      const target = `${copy}/${file}`;
      await Deno.mkdir(target.slice(0, target.lastIndexOf("/")), { recursive: true });
      await Deno.copyFile(`${root}${file}`, target).catch((error) => {
        // Deleted in the working tree but still in the index.
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      });
    }
    const secrets = [
      "tunnel.key",
      "relay.secret",
      "relay.metrics-token",
      "immortal-relay.properties",
      // The walk-through's TLS files (deno.json's permission sets read ./tls).
      "tls/key.pem",
      "tls/cert.pem",
      "key.pem",
      "cert.pem",
      "server.key",
    ];
    await Deno.mkdir(`${copy}/tls`, { recursive: true });
    for (const secret of secrets) await Deno.writeTextFile(`${copy}/${secret}`, "s3cret\n");
    const publish = await new Deno.Command(Deno.execPath(), {
      args: ["publish", "--dry-run", "--allow-dirty"],
      cwd: copy,
      env: { NO_COLOR: "1" },
    }).output();
    const said = new TextDecoder().decode(publish.stdout) +
      new TextDecoder().decode(publish.stderr);
    assert.ok(publish.success, said);
    const files = [...said.matchAll(/file:\/\/\S*?\/immortal-publish-[^/]+\/(\S+)/g)].map((m) =>
      m[1]
    );
    assert.ok(files.includes("mod.ts") && files.includes("README.md"), said);
    const tops = new Set(files.map((file) => file.split("/")[0]));
    const expected = [
      "LICENSE",
      "PROTOCOL.md",
      "README.md",
      "SECURITY.md",
      "cli",
      "deno.json",
      "deno.lock",
      "examples",
      "lib",
      "mod.ts",
    ];
    assert.deepEqual([...tops].sort(), expected, "what the package ships at its top level");
    assert.ok(!files.some((file) => file.endsWith("_test.ts")), "tests stay out of the package");
  } finally {
    await Deno.remove(copy, { recursive: true });
  }
});
