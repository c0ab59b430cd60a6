/**
 * Real OpenSSH programs through the tunnel while its link is cut: rsync of a
 * 64 MiB random file, and an interactive `ssh ... cat` session.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { nextEvent, within } from "./_helpers.ts";
import { startSshd } from "./_sshd.ts";
import { tunnelThroughProxy } from "./_tunnel_helpers.ts";

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

/** sshd, a tunnel server in front of it, a fault proxy, and a tunnel client: ssh dials `client.addr.port`. */
async function sshThroughTunnel() {
  const sshd = await startSshd();
  const tunnel = await tunnelThroughProxy(sshd.port, "ssh-test");
  return {
    sshd,
    proxy: tunnel.proxy,
    client: tunnel.client,
    async [Symbol.asyncDispose]() {
      await tunnel[Symbol.asyncDispose]();
      await sshd[Symbol.asyncDispose]();
    },
  };
}

Deno.test("rsync of a 64 MiB random file through the tunnel survives 7 resets and a black hole, each after another 6 MiB", async () => {
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
  const rsync = new Deno.Command("rsync", {
    args: ["-e", ["ssh", ...sshd.sshArgs(client.addr.port)].join(" "), src, `127.0.0.1:${dst}`],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A fault each time another 6 MiB of the copy went upstream: resets, the 4th a
  // black hole. Each waits until the session is connected, so each lands on its
  // live link (not in a resume). The 8th is due at 48 MiB of the 64 MiB copy.
  const session = () => client.sessions[0]; // one ssh connection: one session
  const faults = { resets: 0, blackholes: 0 };
  const tally = (kind: keyof typeof faults, links: number) => {
    if (links > 0) faults[kind]++;
    return links;
  };
  let holeNoticed: string | undefined;
  using cutter = proxy.cutEvery({
    bytes: 6 << 20,
    max: 8,
    when: () => session()?.state === "connected",
    fault: (index) => {
      if (index !== 3) return tally("resets", proxy.reset());
      // Silence: the dead-link timer (1 s here) must notice, then the session resumes.
      session().addEventListener("reconnecting", (event) => {
        holeNoticed = event.reason;
      }, { once: true });
      return tally("blackholes", proxy.blackhole());
    },
  });
  const out = await within(120_000, "rsync", rsync.output());
  assert.equal(cutter.stop(), 8, `faults at ${cutter.at}`);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `rsync failed: ${stderr}`);
  assert.deepEqual(faults, { resets: 7, blackholes: 1 }, "faults during the copy");
  assert.match(String(holeNoticed), /nothing received/, "the black hole was noticed as silence");
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
  const [session] = client.sessions;
  const lost: string[] = [];
  let resumes = 0;
  session.addEventListener("reconnecting", (event) => lost.push(event.reason));
  session.addEventListener("resumed", () => resumes++);
  // The echo came back through the link: it is live.
  assert.equal(proxy.reset(), 1, "no link to reset");
  await echo("after a reset");
  const resumed = nextEvent(session, "resumed", 30_000);
  assert.equal(proxy.reset(), 1, "no link to reset");
  await resumed;
  const holed = lost.length;
  assert.equal(proxy.blackhole(), 1, "no link to black-hole");
  await echo("after a reset and a black hole, ünïcödé too");
  // Two resets and a black hole: at least three links lost and replaced, the last by silence.
  assert.ok(lost.length >= 3 && resumes >= 3, `lost ${lost.length}, resumed ${resumes}`);
  assert.match(String(lost[holed]), /nothing received/, "the black hole was noticed as silence");
  await writer.close();
  const rest = await lines.read();
  assert.ok(rest.done, "no output after the input ended");
  const status = await within(10_000, "ssh exit", ssh.status);
  const stderr = await new Response(ssh.stderr).text();
  assert.equal(status.code, 0, stderr);
});
