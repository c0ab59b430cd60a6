/**
 * A real OpenSSH server on a loopback port, with throwaway host and user keys
 * in a temporary folder. No system configuration is read or touched (only
 * sshd's privilege-separation folder is created when it is missing).
 */

import { freePort } from "./_helpers.ts";

export interface Sshd extends AsyncDisposable {
  port: number;
  dir: string;
  /** Arguments for `ssh` (and `rsync -e`) that log in with the throwaway key, non-interactively. */
  sshArgs(port: number): string[];
}

async function _run(cmd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Starts sshd and waits until it accepts connections. */
export async function startSshd(): Promise<Sshd> {
  const dir = await Deno.makeTempDir({ prefix: "immortal-sshd-" });
  await _run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/host_key`]);
  await _run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", `${dir}/user_key`]);
  await Deno.copyFile(`${dir}/user_key.pub`, `${dir}/authorized_keys`);
  // sshd (as root) insists on its privilege-separation folder.
  await _run("mkdir", ["-p", "/run/sshd"]);
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/sshd_config`,
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${dir}/host_key`,
      `AuthorizedKeysFile ${dir}/authorized_keys`,
      `PidFile ${dir}/sshd.pid`,
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PubkeyAuthentication yes",
      "PermitRootLogin prohibit-password",
      "StrictModes no",
      "UsePAM no",
      // The tunnel keeps the TCP stream alive; sshd must not give up on its own either.
      "ClientAliveInterval 0",
      "TCPKeepAlive no",
      `Subsystem sftp internal-sftp`,
    ].join("\n") + "\n",
  );
  const child = new Deno.Command("/usr/sbin/sshd", {
    args: ["-D", "-e", "-f", `${dir}/sshd_config`],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch (error) {
      if (Date.now() > deadline) {
        child.kill();
        await child.status;
        throw new Error(`sshd did not start on port ${port}: ${error}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    port,
    dir,
    sshArgs: (p) => [
      "-p",
      String(p),
      "-i",
      `${dir}/user_key`,
      "-o",
      "IdentitiesOnly=yes",
      "-o",
      "BatchMode=yes",
      "-o",
      "StrictHostKeyChecking=no",
      "-o",
      "UserKnownHostsFile=/dev/null",
      "-o",
      "LogLevel=ERROR",
      "-o",
      "ServerAliveInterval=0",
      "-o",
      "TCPKeepAlive=no",
      "-F",
      "/dev/null",
    ],
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}
