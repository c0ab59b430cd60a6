/**
 * Real OpenSSH programs through the tunnel while its link is cut: rsync of a
 * 64 MiB random file, and an interactive `ssh ... cat` session.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { TunnelClient, TunnelServer } from "../mod.ts";
import { FaultProxy } from "./_fault_proxy.ts";
import { delay, within } from "./_helpers.ts";
import { startSshd } from "./_sshd.ts";

const FAST = { backoff: { initial: 5, max: 50 }, heartbeatInterval: 200, deadLinkTimeout: 1000 };

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

/** sshd, a tunnel server in front of it, a fault proxy, and a tunnel client: ssh dials `client.addr.port`. */
async function sshThroughTunnel() {
  const sshd = await startSshd();
  const server = new TunnelServer({
    hostname: "127.0.0.1",
    port: 0,
    key: "ssh-test",
    target: { hostname: "127.0.0.1", port: sshd.port },
    ...FAST,
  });
  const proxy = await FaultProxy.start({ targetPort: (server.addr as Deno.NetAddr).port });
  const client = new TunnelClient({
    port: 0,
    key: "ssh-test",
    server: { hostname: "127.0.0.1", port: proxy.port },
    ...FAST,
  });
  return {
    sshd,
    proxy,
    client,
    async [Symbol.asyncDispose]() {
      await client.close();
      await proxy.close();
      await server.close();
      await sshd[Symbol.asyncDispose]();
    },
  };
}

Deno.test("rsync of a 64 MiB random file through the tunnel survives 5+ resets and a black hole", async () => {
  await using setup = await sshThroughTunnel();
  const { sshd, proxy, client } = setup;
  const src = `${sshd.dir}/source.bin`;
  const dst = `${sshd.dir}/copy.bin`;
  {
    using file = await Deno.open(src, { write: true, create: true });
    const chunk = new Uint8Array(1 << 20);
    for (let i = 0; i < 64; i++) {
      // getRandomValues fills at most 64 KiB per call.
      for (let off = 0; off < chunk.length; off += 65536) {
        crypto.getRandomValues(chunk.subarray(off, off + 65536));
      }
      await file.write(chunk);
    }
  }
  // --bwlimit (KiB/s) stretches the copy over ~8 s so that every cut lands mid-transfer.
  const rsync = new Deno.Command("rsync", {
    args: [
      "--bwlimit=8192",
      "-e",
      ["ssh", ...sshd.sshArgs(client.addr.port)].join(" "),
      src,
      `127.0.0.1:${dst}`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let running = true;
  const done = rsync.output().finally(() => running = false);
  const cuts = { resets: 0, blackholes: 0 };
  const faults = (async () => {
    await delay(1000);
    for (let i = 0; i < 8 && running; i++) {
      if (i === 3) {
        // Silence: the dead-link timer (1 s here) must notice, then the session resumes.
        if (proxy.blackhole() > 0 && running) cuts.blackholes++;
        await delay(1500);
      } else if (proxy.reset() > 0 && running) {
        cuts.resets++;
      }
      await delay(600);
    }
  })();
  const out = await within(120_000, "rsync", done);
  await faults;
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `rsync failed: ${stderr}`);
  assert.ok(cuts.resets >= 5, `only ${cuts.resets} resets landed during the copy`);
  assert.ok(cuts.blackholes >= 1, "the black hole did not land during the copy");
  assert.equal(await sha256File(dst), await sha256File(src), "the copy differs");
});

Deno.test("an ssh session through the tunnel echoes lines sent before and after link cuts", async () => {
  await using setup = await sshThroughTunnel();
  const { sshd, proxy, client } = setup;
  const ssh = new Deno.Command("ssh", {
    args: [...sshd.sshArgs(client.addr.port), "127.0.0.1", "cat"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = ssh.stdin.getWriter();
  const lines = ssh.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  async function echo(line: string): Promise<void> {
    await writer.write(new TextEncoder().encode(line + "\n"));
    await within(
      15_000,
      `echo of "${line}"`,
      (async () => {
        while (!pending.includes("\n")) {
          const { value, done } = await lines.read();
          if (done) throw new Error(`ssh closed its output before echoing "${line}"`);
          pending += value;
        }
      })(),
    );
    const [got, ...rest] = pending.split("\n");
    pending = rest.join("\n");
    assert.equal(got, line);
  }
  await echo("before any cut");
  assert.ok(proxy.reset() > 0, "no link to reset");
  await echo("after a reset");
  await delay(300);
  assert.ok(proxy.reset() > 0);
  await delay(300);
  assert.ok(proxy.blackhole() > 0);
  await echo("after a reset and a black hole, ünïcödé too");
  await writer.close();
  const rest = await lines.read();
  assert.ok(rest.done, "no output after the input ended");
  const status = await within(10_000, "ssh exit", ssh.status);
  const stderr = await new Response(ssh.stderr).text();
  assert.equal(status.code, 0, stderr);
});
