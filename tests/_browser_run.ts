/**
 * Runs one browser script (`tests/_browser_*.ts`) in its own process, for the
 * `relay_browser*_test.ts` tests: playwright-core reads /proc when it is
 * imported, which Deno grants only with --allow-all, and this is test-only
 * code. The script exits 0 when every check passed and prints what failed
 * otherwise.
 */

import assert from "node:assert/strict";

/** Runs `script` (next to this file) with `args`; returns its stdout, or fails the test with its output. */
export async function runBrowserScript(script: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL(script, import.meta.url).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${script} failed:\n${stdout}\n${stderr}`);
  return stdout;
}
