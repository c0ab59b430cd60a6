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
import { tcpDialer, tlsDialer } from "../lib/link/mod.ts";
import { TunnelClient, TunnelServer } from "../lib/tunnel/mod.ts";
import type { BackoffOptions, SessionOptions } from "../lib/conn/mod.ts";
export type { BackoffOptions, SessionOptions };
import { errorMessage } from "../lib/_util.ts";

const USAGE = `immortal tunnel — TCP forwarding that survives broken links

Usage:
  tunnel server <listenPort> <forwardHost> <forwardPort> [options]
  tunnel client <listenPort> <serverHost> <serverPort> [options]

  server  accepts tunnel clients on <listenPort> and forwards each connection
          to <forwardHost>:<forwardPort>
  client  listens on <listenPort> (127.0.0.1 by default) and carries each
          connection to the tunnel server at <serverHost>:<serverPort>

Options:
  --listen-host HOST  address to listen on (server: 0.0.0.0, client: 127.0.0.1)
  --key KEY           pre-shared key (both ends must use the same)
  --key-file PATH     read the pre-shared key from a file (first line)
  --tls-cert PATH     server: serve TLS with this certificate chain (PEM)
  --tls-key PATH      server: private key of --tls-cert (PEM)
  --tls               client: reach the server over TLS (system roots)
  --tls-ca PATH       client: trust this CA certificate (PEM); implies --tls
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

Permissions: --allow-net for the listen address and the peer, plus
--allow-read for the key, certificate and CA files.`;

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
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    throw new UsageError(errorMessage(error).split("\n")[0]);
  }
  const { values, positionals } = parsed;
  if (values.help) return "help";
  const [role, listen, host, port, ...extra] = positionals;
  if (role === undefined) throw new UsageError("missing command: server or client");
  if (role !== "server" && role !== "client") {
    throw new UsageError(`unknown command "${role}" (use server or client)`);
  }
  if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0]}"`);
  const listenPort = parsePort("<listenPort>", listen);
  const hostWhat = role === "server" ? "<forwardHost>" : "<serverHost>";
  if (host === undefined) throw new UsageError(`missing ${hostWhat}`);
  const peerPort = parsePort(role === "server" ? "<forwardPort>" : "<serverPort>", port);
  const logLevel = parseLogLevel(values["log-level"]!);
  if (values.key !== undefined && values["key-file"] !== undefined) {
    throw new UsageError("give --key or --key-file, not both");
  }
  let key = values.key;
  if (values["key-file"] !== undefined) {
    key = readFileArg("key file", values["key-file"]).split(/\r?\n/)[0];
  }
  if (key !== undefined && key.length === 0) throw new UsageError("the key is empty");
  const tls = _tlsSettings(role, values);
  const statsSeconds = values.stats === undefined ? 0 : Number(values.stats);
  if (!(statsSeconds >= 0) || !Number.isFinite(statsSeconds)) {
    throw new UsageError(`--stats must be a number of seconds, got "${values.stats}"`);
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
    session: _sessionSettings(role, values),
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
  const tunnel = config.role === "server"
    ? _startServer(config, log)
    : await _startClient(config, log);
  const stats = config.statsSeconds > 0
    ? setInterval(() => _printStats(tunnel), config.statsSeconds * 1000)
    : undefined;
  return {
    stopping: "closing the tunnel",
    close() {
      clearInterval(stats);
      return tunnel.close();
    },
  };
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
  log.info("Tunnel server on {listen}{tls}, forwarding to {target}{keyed}", {
    listen: `${config.listenHost}:${config.listenPort}`,
    tls: config.tlsServer ? " (TLS)" : "",
    target: `${config.peerHost}:${config.peerPort}`,
    keyed: config.key ? " (key required)" : "",
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

async function _startClient(config: TunnelCliConfig, log: Logger): Promise<TunnelClient> {
  // Fail fast on a server that is not there (or whose certificate we would
  // refuse), rather than on the first user connection.
  const where = { hostname: config.peerHost, port: config.peerPort };
  const dial = config.tlsClient ? tlsDialer({ ...where, ...config.tlsClient }) : tcpDialer(where);
  try {
    (await dial(AbortSignal.timeout(10_000))).close();
  } catch (error) {
    throw new Error(
      `cannot reach the tunnel server at ${where.hostname}:${where.port}: ${errorMessage(error)}`,
    );
  }
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
    server: `${where.hostname}:${where.port}`,
    tls: config.tlsClient ? " (TLS)" : "",
  });
  return tunnel;
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
  await runService(Deno.args, { usage: USAGE, parse: parseTunnelArgs, start: _start });
}
