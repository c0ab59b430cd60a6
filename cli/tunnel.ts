/**
 * `immortal-tunnel`: forward TCP connections over immortal sessions.
 *
 * ```sh
 * # on the machine next to the target (here: sshd on port 22)
 * deno run --allow-net=0.0.0.0:2000,127.0.0.1:22 cli/tunnel.ts server 2000 127.0.0.1 22
 * # on your machine
 * deno run --allow-net=127.0.0.1:2001,server.example:2000 cli/tunnel.ts client 2001 server.example 2000
 * scp -P 2001 big.iso user@127.0.0.1:
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { Logger } from "@logtape/logtape";
import {
  flagError,
  parseLogLevel,
  parseMillis,
  parsePort,
  readFileArg,
  readPemCertificate,
  readPemPair,
  runService,
  type Service,
  UsageError,
} from "./_common.ts";
import { TunnelClient, TunnelServer } from "../lib/tunnel/mod.ts";
import {
  type BackoffOptions,
  connect,
  ImmortalError,
  type SessionOptions,
} from "../lib/conn/mod.ts";
import { RelayNode, RelayRefusedError } from "../lib/relay/mod.ts";
export type { BackoffOptions, SessionOptions };
import { delay, errorMessage } from "../lib/_util.ts";

const USAGE = `immortal tunnel — TCP forwarding that survives broken links

Usage:
  tunnel server <listenPort> <forwardHost> <forwardPort> [options]
  tunnel client <listenPort> <serverHost> <serverPort> [options]
  tunnel server --relay URL --session S --name NAME <forwardHost> <forwardPort> [options]
  tunnel client <listenPort> --relay URL --session S --to NAME [options]
  tunnel keygen

  server  accepts tunnel clients on <listenPort> and forwards each connection
          to <forwardHost>:<forwardPort>
  client  listens on <listenPort> (127.0.0.1 by default) and carries each
          connection to the tunnel server at <serverHost>:<serverPort>
  keygen  prints a fresh random key (for --key-file)

  Through a relay, neither end listens for the other: both make outgoing
  HTTP(S) requests only. The server joins session S of the relay as NAME;
  the client reaches NAME there. A key is required (the relay must not be
  able to stand in the middle); make one with "tunnel keygen".

Options:
  --relay URL         the relay (http: or https:) both ends reach
  --session S         the relay session both ends join
  --name NAME         server: the name clients reach it by; client: its own
                      name in the session (default: tunnel-client)
  --to NAME           client: the name of the tunnel server to reach
  --relay-secret S    the relay's secret
  --relay-secret-file PATH  read the relay's secret from a file (first line)
  --proxy URL         reach the relay through this HTTP proxy (default: the
                      HTTPS_PROXY/HTTP_PROXY variables, for HTTP streaming)
  --listen-host HOST  address to listen on (server: 0.0.0.0, client: 127.0.0.1)
  --key KEY           pre-shared key (both ends must use the same)
  --key-file PATH     read the pre-shared key from a file (first line)
  --encrypt           encrypt the session end to end (ChaCha20-Poly1305); the
                      server then takes encrypted sessions only. Always on
                      through a relay
  --tls-cert PATH     server: serve TLS with this certificate chain (PEM)
  --tls-key PATH      server: private key of --tls-cert (PEM)
  --tls               client: reach the server over TLS (Deno's root store)
  --tls-ca PATH       client: trust this CA certificate (PEM); implies --tls
                      (through a relay: the CA of an https: relay)
  --tls-name NAME     client: name the server certificate must carry
                      (default: <serverHost>); implies --tls
  --log-level LEVEL   debug, info, warning or error (default: info)
  --stats SECONDS     print live statistics every SECONDS

Link failure handling (milliseconds; both ends may set their own):
  --heartbeat MS        ping a quiet link this often (default: 1000)
  --dead-link MS        replace a link silent this long (default: 2500)
  --resume-timeout MS   give up on (client) or reap (server) a session whose
                        link stays down this long (default: 120000)
  --backoff-initial MS  client: first delay after a refused dial (default: 100)
  --backoff-max MS      client: longest delay between refused dials (default: 5000)
  --probe-interval MS   client: while nothing answers, dial again this often
                        (default: 50)
  -h, --help          show this help

Permissions: --allow-net for the listen address and the peer (through a
relay: the relay's host and port, and the target or the listen address),
plus --allow-read for the key, secret, certificate and CA files.`;

/** A validated tunnel command line, as {@linkcode parseTunnelArgs} returns it. */
export interface TunnelCliConfig {
  /** Which end of the tunnel to run. */
  role: "server" | "client";
  /** Local port: tunnel clients dial it (server), applications dial it (client). */
  listenPort: number;
  /** Server: the target host; client: the tunnel server's host. */
  peerHost: string;
  /** Server: the target port; client: the tunnel server's port. */
  peerPort: number;
  /** Local address to listen on. */
  listenHost: string;
  /** Pre-shared key, when one was given. */
  key?: string;
  /** Server: certificate and key PEM. */
  tlsServer?: { cert: string; key: string };
  /** Client: TLS settings, when TLS is on. */
  tlsClient?: { caCerts?: string[]; serverName?: string };
  /** How much to log. */
  logLevel: "debug" | "info" | "warning" | "error";
  /** Print statistics this often, in seconds (0: never). */
  statsSeconds: number;
  /** Heartbeat, dead-link, resume and (client) backoff settings; unset ones take the defaults. */
  session: SessionOptions & { backoff?: BackoffOptions };
  /** Through a relay: where, and the names; `peerHost`/`peerPort` are then the target (server). */
  relay?: TunnelRelayConfig;
}

/** How a tunnel end reaches its peer through a relay. */
export interface TunnelRelayConfig {
  /** The relay's URL. */
  url: string;
  /** The relay session both ends join. */
  session: string;
  /** Server: the name clients reach it by; client: its own name. */
  name: string;
  /** Client: the name of the tunnel server. */
  to?: string;
  /** The relay's secret. */
  secret?: string;
  /** An HTTP proxy to reach the relay through. */
  proxy?: string;
  /** Extra CA certificates for an https: relay. */
  caCerts?: string[];
}

function _tlsSettings(
  role: "server" | "client",
  values: {
    "tls-cert"?: string;
    "tls-key"?: string;
    tls?: boolean;
    "tls-ca"?: string;
    "tls-name"?: string;
  },
): Pick<TunnelCliConfig, "tlsServer" | "tlsClient"> {
  const serverFlags = ["tls-cert", "tls-key"] as const;
  const clientFlags = ["tls", "tls-ca", "tls-name"] as const;
  const wrong = role === "server" ? clientFlags : serverFlags;
  for (const flag of wrong) {
    if (values[flag] !== undefined) {
      throw new UsageError(`--${flag} is for the ${role === "server" ? "client" : "server"}`);
    }
  }
  if (role === "server") {
    const certPath = values["tls-cert"];
    const keyPath = values["tls-key"];
    if (certPath === undefined && keyPath === undefined) return {};
    if (certPath === undefined || keyPath === undefined) {
      throw new UsageError("TLS needs both --tls-cert and --tls-key");
    }
    return { tlsServer: readPemPair(certPath, keyPath) };
  }
  if (!values.tls && values["tls-ca"] === undefined && values["tls-name"] === undefined) return {};
  const tlsClient: { caCerts?: string[]; serverName?: string } = {};
  if (values["tls-ca"] !== undefined) {
    const ca = readPemCertificate("CA file", values["tls-ca"]);
    tlsClient.caCerts = [ca];
  }
  if (values["tls-name"] !== undefined) tlsClient.serverName = values["tls-name"];
  return { tlsClient };
}

/** Parses and validates the command line (exported for tests). */
export function parseTunnelArgs(args: string[]): TunnelCliConfig | "help" {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        "listen-host": { type: "string" },
        key: { type: "string" },
        "key-file": { type: "string" },
        encrypt: { type: "boolean" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        tls: { type: "boolean" },
        "tls-ca": { type: "string" },
        "tls-name": { type: "string" },
        "log-level": { type: "string", default: "info" },
        stats: { type: "string" },
        heartbeat: { type: "string" },
        "dead-link": { type: "string" },
        "resume-timeout": { type: "string" },
        "backoff-initial": { type: "string" },
        "backoff-max": { type: "string" },
        "probe-interval": { type: "string" },
        relay: { type: "string" },
        session: { type: "string" },
        name: { type: "string" },
        to: { type: "string" },
        "relay-secret": { type: "string" },
        "relay-secret-file": { type: "string" },
        proxy: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    throw flagError(error);
  }
  const { values, positionals } = parsed;
  if (values.help) return "help";
  const [role] = positionals;
  if (role === undefined) throw new UsageError("missing command: server, client or keygen");
  if (role !== "server" && role !== "client") {
    throw new UsageError(`unknown command "${role}" (use server, client or keygen)`);
  }
  const relay = _relaySettings(role, values);
  // Through a relay the server listens nowhere, and the client names no server.
  const [listen, host, port, ...extra] = relay
    ? (role === "server" ? ["0", ...positionals.slice(1)] : [...positionals.slice(1), "-", "0"])
    : positionals.slice(1);
  if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
  const listenPort = parsePort("<listenPort>", listen, relay !== undefined && role === "server");
  const hostWhat = role === "server" ? "<forwardHost>" : "<serverHost>";
  if (host === undefined) throw new UsageError(`missing ${hostWhat}`);
  const peerPort = parsePort(
    role === "server" ? "<forwardPort>" : "<serverPort>",
    port,
    relay !== undefined && role === "client",
  );
  const logLevel = parseLogLevel(values["log-level"]!);
  if (values.key !== undefined && values["key-file"] !== undefined) {
    throw new UsageError("give --key or --key-file, not both");
  }
  let key = values.key;
  if (values["key-file"] !== undefined) {
    key = readFileArg("key file", values["key-file"]).split(/\r?\n/)[0];
  }
  if (key !== undefined && key.length === 0) throw new UsageError("the key is empty");
  if (relay && key === undefined) {
    throw new UsageError(
      "through a relay a key is required (the relay must not be able to stand in the middle): " +
        "make one with `tunnel keygen > tunnel.key` and give both ends --key-file tunnel.key",
    );
  }
  if (relay && (values.tls || values["tls-name"] || values["tls-cert"] || values["tls-key"])) {
    throw new UsageError("through a relay, TLS is the relay's: use an https: --relay URL");
  }
  const tls = relay ? {} : _tlsSettings(role, values);
  if (relay && values["tls-ca"] !== undefined) {
    relay.caCerts = [readPemCertificate("CA file", values["tls-ca"])];
  }
  const statsSeconds = values.stats === undefined ? 0 : Number(values.stats);
  // setInterval takes at most 2^31-1 ms; beyond it fires every millisecond.
  if (!(statsSeconds >= 0 && statsSeconds <= 2_147_483)) {
    throw new UsageError(
      `--stats must be a number of seconds from 0 (off) to 2147483, got "${values.stats}"`,
    );
  }
  return {
    role,
    listenPort,
    peerHost: host,
    peerPort,
    listenHost: values["listen-host"] ?? (role === "server" ? "0.0.0.0" : "127.0.0.1"),
    key,
    ...tls,
    logLevel,
    statsSeconds,
    session: {
      ..._sessionSettings(role, values),
      encrypt: relay !== undefined || !!values.encrypt,
    },
    ...(relay ? { relay } : {}),
  };
}

/** The relay flags, checked; undefined without `--relay`. */
function _relaySettings(
  role: "server" | "client",
  values: Record<string, string | boolean | undefined>,
): TunnelRelayConfig | undefined {
  const text = (flag: string) => values[flag] as string | undefined;
  const url = text("relay");
  const relayOnly = ["session", "name", "to", "relay-secret", "relay-secret-file", "proxy"];
  if (url === undefined) {
    const given = relayOnly.find((flag) => values[flag] !== undefined);
    if (given) throw new UsageError(`--${given} needs --relay`);
    return undefined;
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`--relay must be an http: or https: URL, got "${url}"`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new UsageError(`--relay must be an http: or https: URL, got "${url}"`);
  }
  const session = text("session");
  if (session === undefined) throw new UsageError("--relay needs --session");
  if (role === "server" && text("name") === undefined) {
    throw new UsageError("a tunnel server on a relay needs --name (what clients reach it by)");
  }
  if (role === "server" && text("to") !== undefined) throw new UsageError("--to is for the client");
  if (role === "client" && text("to") === undefined) {
    throw new UsageError("a tunnel client on a relay needs --to (the server's --name)");
  }
  if (text("relay-secret") !== undefined && text("relay-secret-file") !== undefined) {
    throw new UsageError("give --relay-secret or --relay-secret-file, not both");
  }
  const secretFile = text("relay-secret-file");
  const secret = secretFile !== undefined
    ? readFileArg("relay secret file", secretFile).split(/\r?\n/)[0]
    : text("relay-secret");
  const proxy = text("proxy");
  if (proxy !== undefined && !/^https?:\/\//.test(proxy)) {
    throw new UsageError(`--proxy must be an http: or https: URL, got "${proxy}"`);
  }
  return {
    url,
    session,
    name: text("name") ?? "tunnel-client",
    ...(role === "client" ? { to: text("to") } : {}),
    ...(secret !== undefined ? { secret } : {}),
    ...(proxy !== undefined ? { proxy } : {}),
  };
}

/** The link-failure flags as session options; relations between them are checked too. */
function _sessionSettings(
  role: "server" | "client",
  values: Record<string, string | boolean | undefined>,
): SessionOptions & { backoff?: BackoffOptions } {
  const ms = (flag: string) => {
    const text = values[flag];
    return typeof text === "string" ? parseMillis(`--${flag}`, text) : undefined;
  };
  const session: SessionOptions & { backoff?: BackoffOptions } = {
    heartbeatInterval: ms("heartbeat"),
    deadLinkTimeout: ms("dead-link"),
    resumeTimeout: ms("resume-timeout"),
  };
  const backoff = {
    initial: ms("backoff-initial"),
    max: ms("backoff-max"),
    probeInterval: ms("probe-interval"),
  };
  const backoffFlags = ["backoff-initial", "backoff-max", "probe-interval"];
  if (role === "server") {
    const given = backoffFlags.find((flag) => values[flag] !== undefined);
    if (given) throw new UsageError(`--${given} is a client option`);
  } else {
    session.backoff = backoff;
  }
  const heartbeat = session.heartbeatInterval ?? 1000;
  const deadLink = session.deadLinkTimeout ?? 2500;
  if (deadLink <= heartbeat) {
    throw new UsageError(
      `--dead-link (${deadLink} ms) must be longer than --heartbeat (${heartbeat} ms)`,
    );
  }
  if ((backoff.max ?? 5000) < (backoff.initial ?? 100)) {
    throw new UsageError("--backoff-max must not be shorter than --backoff-initial");
  }
  return session;
}

async function _start(config: TunnelCliConfig, log: Logger): Promise<Service> {
  let node: RelayNode | undefined;
  let tunnel: TunnelServer | TunnelClient;
  let client: ReturnType<typeof _startClient> | undefined;
  if (config.relay) {
    node = await _joinRelay(config.relay, log);
    try {
      tunnel = config.role === "server"
        ? _startRelayServer(config, config.relay, node, log)
        : await _startRelayClient(config, config.relay, node, log);
    } catch (error) {
      await node.close();
      throw error;
    }
  } else if (config.role === "server") {
    tunnel = _startServer(config, log);
  } else {
    client = _startClient(config, log);
    tunnel = client.tunnel;
  }
  const stats = config.statsSeconds > 0
    ? setInterval(() => _printStats(tunnel), config.statsSeconds * 1000)
    : undefined;
  return {
    stopping: "closing the tunnel",
    failed: client?.failed,
    async close() {
      client?.stop();
      clearInterval(stats);
      await tunnel.close();
      await node?.close();
    },
  };
}

/** Joins the relay session as the tunnel end's name; refusals and failures in one line. */
async function _joinRelay(relay: TunnelRelayConfig, log: Logger): Promise<RelayNode> {
  let node: RelayNode;
  try {
    node = await RelayNode.connect(relay.url, {
      session: relay.session,
      nickname: relay.name,
      secret: relay.secret,
      proxy: relay.proxy,
      caCerts: relay.caCerts,
    });
  } catch (error) {
    if (error instanceof RelayRefusedError) {
      throw new Error(`the relay at ${relay.url} refused us: ${error.message}`);
    }
    throw new Error(`cannot reach the relay at ${relay.url}: ${errorMessage(error)}`);
  }
  log.info("Joined session {session} of the relay at {url} as {name} ({transport})", {
    session: relay.session,
    url: relay.url,
    name: node.nickname,
    transport: node.transport,
  });
  return node;
}

function _startRelayServer(
  config: TunnelCliConfig,
  relay: TunnelRelayConfig,
  node: RelayNode,
  log: Logger,
): TunnelServer {
  if (node.nickname !== relay.name) {
    throw new Error(
      `the name "${relay.name}" is taken in session ${relay.session} (another tunnel server?)`,
    );
  }
  const tunnel = new TunnelServer({
    port: 0,
    acceptor: node.pipeAcceptor(),
    ...config.session,
    key: config.key,
    target: { hostname: config.peerHost, port: config.peerPort },
  });
  log.info("Tunnel server {name} on the relay, forwarding to {target} (key required, encrypted)", {
    name: relay.name,
    target: `${config.peerHost}:${config.peerPort}`,
  });
  return tunnel;
}

async function _startRelayClient(
  config: TunnelCliConfig,
  relay: TunnelRelayConfig,
  node: RelayNode,
  log: Logger,
): Promise<TunnelClient> {
  const to = relay.to!;
  if (!node.members.some((member) => member.nickname === to)) {
    throw new Error(`no tunnel server "${to}" in session ${relay.session} of ${relay.url}`);
  }
  // Fail fast on a server that refuses us (or our key), rather than on the
  // first user connection.
  const dialer = node.pipeDialer(to);
  try {
    await (await connect({ ...config.session, key: config.key, dialer })).close();
  } catch (error) {
    throw new Error(`tunnel server ${to}: ${errorMessage(error)}`);
  }
  const tunnel = new TunnelClient({
    hostname: config.listenHost,
    port: config.listenPort,
    ...config.session,
    key: config.key,
    dialer,
    server: { hostname: to, port: 0 },
  });
  log.info("Tunnel client on {listen}, via the relay to {to}", {
    listen: `${config.listenHost}:${config.listenPort}`,
    to,
  });
  return tunnel;
}

/**
 * A fresh random key: 32 bytes in hex. Hex, not base64: a key that began
 * with "-" would read as a flag after --key.
 */
function generateKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function _startServer(config: TunnelCliConfig, log: Logger): TunnelServer {
  const tunnel = new TunnelServer({
    hostname: config.listenHost,
    port: config.listenPort,
    ...config.session,
    key: config.key,
    tls: config.tlsServer,
    target: { hostname: config.peerHost, port: config.peerPort },
  });
  log.info("Tunnel server on {listen}{tls}, forwarding to {target}{keyed}{sealed}", {
    listen: `${config.listenHost}:${config.listenPort}`,
    tls: config.tlsServer ? " (TLS)" : "",
    target: `${config.peerHost}:${config.peerPort}`,
    keyed: config.key ? " (key required)" : "",
    sealed: config.session.encrypt ? " (encrypted sessions only)" : "",
  });
  if (!config.key) {
    // An open proxy to the target is rarely what anyone meant: say it loudly.
    log.warn(
      "NO KEY: this tunnel server is OPEN. Anyone who can reach {listen} may use it to reach {target}; give both ends --key-file",
      {
        listen: `${config.listenHost}:${config.listenPort}`,
        target: `${config.peerHost}:${config.peerPort}`,
      },
    );
  }
  return tunnel;
}

/**
 * Starts the client: it listens at once, even while the server is down (a
 * tunnel is often started before its far end), and opens its session at
 * once. A server that answers but cannot be used — another kind of server,
 * TLS on one side only, a refused key — is fatal: `failed` rejects.
 */
function _startClient(
  config: TunnelCliConfig,
  log: Logger,
): { tunnel: TunnelClient; failed: Promise<never>; stop(): void } {
  const where = { hostname: config.peerHost, port: config.peerPort };
  const server = `${where.hostname}:${where.port}`;
  const tunnel = new TunnelClient({
    hostname: config.listenHost,
    port: config.listenPort,
    ...config.session,
    key: config.key,
    tls: config.tlsClient,
    server: where,
  });
  log.info("Tunnel client on {listen}, via the server at {server}{tls}", {
    listen: `${config.listenHost}:${config.listenPort}`,
    server,
    tls: config.tlsClient ? " (TLS)" : "",
  });
  const failed = Promise.withResolvers<never>();
  const stopping = new AbortController();
  (async () => {
    for (;;) {
      try {
        await tunnel.open();
        if (!stopping.signal.aborted) {
          log.info("Tunnel server {server} answered: the tunnel is up", { server });
        }
        return;
      } catch (error) {
        if (stopping.signal.aborted) return;
        // Nothing answering, or a busy server, may change; anything else will not.
        if (
          error instanceof ImmortalError &&
          (error.code === "unreachable" || error.code === "rejected")
        ) {
          log.warn(
            "Tunnel server {server} still not available ({reason}); listening anyway, local connections wait for it",
            { server, reason: error.message },
          );
          // Never a busy loop, whatever the backoff settings make open() do.
          if (!(await delay(1000, stopping.signal))) return;
          continue;
        }
        failed.reject(
          new Error(`the tunnel server at ${server} cannot be used: ${errorMessage(error)}`),
        );
        return;
      }
    }
  })();
  return { tunnel, failed: failed.promise, stop: () => stopping.abort() };
}

function _printStats(tunnel: TunnelServer | TunnelClient): void {
  if (tunnel instanceof TunnelClient) {
    for (const session of tunnel.sessions) {
      const st = session.stats;
      console.error(
        `stats ${session.sessionId.slice(0, 8)} ${st.state}: ${st.bytesWritten} B out, ` +
          `${st.bytesRead} B in, ${st.reconnects} reconnects, ${st.replayedBytes} B replayed, ` +
          `rtt ${st.rttMs?.toFixed(1) ?? "-"} ms`,
      );
    }
  }
  console.error(`stats ${tunnel.connections} open connection(s)`);
}

if (import.meta.main) {
  if (Deno.args[0] === "keygen") {
    if (Deno.args.length > 1 && !["-h", "--help"].includes(Deno.args[1])) {
      console.error(`error: keygen takes no arguments, got "${Deno.args[1]}"`);
      Deno.exit(2);
    }
    console.log(Deno.args.length > 1 ? "tunnel keygen: prints a fresh random key" : generateKey());
    Deno.exit(0);
  }
  await runService(Deno.args, { usage: USAGE, parse: parseTunnelArgs, start: _start });
}
