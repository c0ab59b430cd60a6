// Real link faults between two network namespaces this test creates (a veth
// pair; loopback-free addresses that exist only inside them): the link goes
// down and comes back, and the client's address changes. Faults fire on
// progress (bytes echoed) and on the session's own events, never on a timer.
// It needs root (it runs `ip netns`), as CI has.
import assert from "node:assert/strict";
import { TextLineStream } from "./_lines.ts";

const TOTAL = 48 << 20;

async function ip(...args: string[]): Promise<void> {
  const { code, stderr } = await new Deno.Command("ip", { args, stdout: "null", stderr: "piped" })
    .output();
  if (code !== 0) {
    throw new Error(`ip ${args.join(" ")} failed: ${new TextDecoder().decode(stderr).trim()}`);
  }
}

async function sysctl(namespace: string, setting: string): Promise<void> {
  const { code, stderr } = await new Deno.Command("ip", {
    args: ["netns", "exec", namespace, "sysctl", "-qw", setting],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(`sysctl ${setting} failed: ${new TextDecoder().decode(stderr).trim()}`);
  }
}

interface PeerEvent {
  event: string;
  at: number;
  [field: string]: unknown;
}

/** A peer process inside a namespace, whose JSON lines can be awaited one condition at a time. */
class Peer {
  #child: Deno.ChildProcess;
  #events: PeerEvent[] = [];
  #waiters: { test: (e: PeerEvent) => boolean; resolve: (e: PeerEvent) => void }[] = [];
  #pumping: Promise<void>;
  #ended = false;
  #rejectAll: ((error: Error) => void)[] = [];

  constructor(namespace: string, args: string[]) {
    this.#child = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        namespace,
        Deno.execPath(),
        "run",
        "--allow-net",
        "--allow-read",
        "--allow-env",
        "--allow-sys=networkInterfaces",
        new URL("./_netns_peer.ts", import.meta.url).pathname,
        ...args,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#pumping = this.#pump();
  }

  async #pump(): Promise<void> {
    const lines = this.#child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    );
    for await (const line of lines) {
      if (!line.startsWith("{")) continue;
      const event = JSON.parse(line) as PeerEvent;
      this.#events.push(event);
      this.#waiters = this.#waiters.filter((w) => {
        if (!w.test(event)) return true;
        w.resolve(event);
        return false;
      });
    }
    this.#ended = true;
    for (const reject of this.#rejectAll) reject(new Error("the peer exited"));
  }

  /** The first event (already seen or still to come) that passes `test`. */
  next(test: (e: PeerEvent) => boolean, since = 0): Promise<PeerEvent> {
    const seen = this.#events.slice(since).find(test);
    if (seen) return Promise.resolve(seen);
    if (this.#ended) return Promise.reject(new Error("the peer exited"));
    return new Promise((resolve, reject) => {
      this.#waiters.push({ test, resolve });
      this.#rejectAll.push(reject);
    });
  }

  /** Index of the next event to come, for `next(..., since)`. */
  get mark(): number {
    return this.#events.length;
  }

  async close(): Promise<void> {
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // Exited already.
    }
    await this.#child.status;
    await this.#pumping;
  }
}

Deno.test({
  name:
    "between network namespaces: a link that comes back is used at once, and so is a new client address; SHA-256 intact",
  sanitizeResources: false, // the peers' pipes close with the processes, after the test's checks
  async fn() {
    const id = Deno.pid % 10_000;
    const client = `imm-c-${id}`, server = `imm-s-${id}`;
    const net = `10.231.${id % 250}`;
    const peers: Peer[] = [];
    await ip("netns", "add", client);
    await ip("netns", "add", server);
    try {
      await ip("link", "add", `imc${id}`, "type", "veth", "peer", "name", `ims${id}`);
      await ip("link", "set", `imc${id}`, "netns", client);
      await ip("link", "set", `ims${id}`, "netns", server);
      await ip("-n", client, "addr", "add", `${net}.2/24`, "dev", `imc${id}`);
      await ip("-n", server, "addr", "add", `${net}.1/24`, "dev", `ims${id}`);
      // Deleting a primary address would delete its secondaries too; promote them instead.
      await sysctl(client, "net.ipv4.conf.all.promote_secondaries=1");
      await sysctl(client, `net.ipv4.conf.imc${id}.promote_secondaries=1`);
      for (const [ns, dev] of [[client, `imc${id}`], [server, `ims${id}`]]) {
        await ip("-n", ns, "link", "set", dev, "up");
        await ip("-n", ns, "link", "set", "lo", "up");
      }
      const serverPeer = new Peer(server, ["server", `${net}.1`, "4700"]);
      peers.push(serverPeer);
      await serverPeer.next((e) => e.event === "listening");
      const clientPeer = new Peer(client, ["client", `${net}.1`, "4700", String(TOTAL)]);
      peers.push(clientPeer);

      // 1. The client's link goes down once 8 MiB have been echoed, and comes
      //    back once the client has noticed (its reconnecting event).
      await clientPeer.next((e) => e.event === "progress" && (e.read as number) >= 8 << 20);
      let mark = clientPeer.mark;
      await ip("-n", client, "link", "set", `imc${id}`, "down");
      await clientPeer.next((e) => e.event === "reconnecting", mark);
      mark = clientPeer.mark;
      const upAt = Date.now();
      await ip("-n", client, "link", "set", `imc${id}`, "up");
      // Resumed means the replay is on its way: data flows from here.
      const upToData = (await clientPeer.next((e) => e.event === "resumed", mark)).at - upAt;

      // 2. The client's address changes once 24 MiB have been echoed.
      await clientPeer.next((e) => e.event === "progress" && (e.read as number) >= 24 << 20);
      mark = clientPeer.mark;
      const serverMark = serverPeer.mark;
      // As a DHCP renewal to a new address does: the new one first, then the
      // old one goes (the new one is promoted, so the host is never without).
      await ip("-n", client, "addr", "add", `${net}.3/24`, "dev", `imc${id}`);
      const changedAt = Date.now();
      await ip("-n", client, "addr", "del", `${net}.2/24`, "dev", `imc${id}`);
      const moved = await clientPeer.next((e) => e.event === "resumed", mark);
      const changeToData = moved.at - changedAt;
      const seen = await serverPeer.next((e) => e.event === "resumed", serverMark);
      assert.equal(
        (seen.remote as { hostname: string }).hostname,
        `${net}.3`,
        "the server sees the new address",
      );

      const done = await clientPeer.next((e) => e.event === "done");
      assert.equal(done.bytes, TOTAL);
      assert.equal(done.received, done.sent, "the echo differs from what was sent");
      await serverPeer.next((e) => e.event === "done");
      console.log(
        `link back -> resumed: ${upToData} ms; address change -> resumed: ${changeToData} ms`,
      );
      // The targets are 100 ms and 1 s; the bounds leave room for a busy CI
      // machine while still failing without the policy: the backoff after
      // failed dials grows to seconds, and heartbeats alone notice a lost
      // address only after the 2.5 s dead-link time. BENCHMARKS.md has the
      // measured figures.
      assert.ok(upToData <= 1000, `data flowed again ${upToData} ms after the link came back`);
      assert.ok(
        changeToData <= 1500,
        `data flowed again ${changeToData} ms after the address change`,
      );
    } finally {
      await Promise.all(peers.map((p) => p.close()));
      await ip("netns", "del", client).catch(() => {});
      await ip("netns", "del", server).catch(() => {});
    }
  },
});
