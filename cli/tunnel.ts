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
  certificateConcerns,
  type FileArgs,
  flagError,
  grantAdvice,
  parseHost,
  parseLogLevel,
  parseMillis,
  parsePort,
  quietly,
  readFirstLine,
  readPemCertificate,
  readPemPair,
  runService,
  type Service,
  UsageError,
  warnSecretFlags,
} from "./_common.ts";
import { TunnelClient, TunnelServer } from "../lib/tunnel/mod.ts";
import { redactedUrl } from "../lib/relay/_settings.ts";
import { CONNECT_WAIT_MS } from "../lib/tunnel/tunnel_client.ts";
import { MIN_HEARTBEAT_MS } from "../lib/conn/_options.ts";
import {
  type BackoffOptions,
  generateKey,
  ImmortalError,
  type SessionOptions,
} from "../lib/conn/mod.ts";
import { type Dialer, urlAddr } from "../lib/link/link.ts";
import {
  loadRelayConfig,
  type RelayConfig,
  RelayConnectError,
  RelayNode,
  RelayRefusedError,
} from "../lib/relay/mod.ts";
export type { BackoffOptions, SessionOptions };
import {
  backoffDelay,
  base64url,
  delay,
  errorMessage,
  hostPort,
  isNotCapable,
  parsePortText,
} from "../lib/_util.ts";

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
  able to stand in the middle); make one, readable by you alone, with
  "(umask 077; deno run cli/tunnel.ts keygen > tunnel.key)".

Options:
  --relay URL         the relay (http: or https:) both ends reach
  --session S         the relay session both ends join
  --name NAME         server: the name clients reach it by; client: its own
                      name in the session (default: tunnel-client)
  --to NAME           client: the name of the tunnel server to reach
  --relay-secret S    the relay's secret (default: IMMORTAL_RELAY_SECRET, then
                      immortal-relay.properties, as the relay reads them,
                      where this process may: --allow-env=IMMORTAL_RELAY_SECRET)
  --relay-secret-file PATH  read the relay's secret from a file (first line)
  --proxy URL         reach the relay through this HTTP proxy (default: the
                      HTTPS_PROXY/HTTP_PROXY variables, for HTTP streaming)
  --relay-wait SECONDS  at start, keep trying this long to reach a relay that
                      does not answer, and (client) for the server to join
                      the session (default: 30)
  --name-wait SECONDS server: while another node holds --name in the session
                      (say, this server's previous run, not yet noticed
                      gone), wait this long for it (default: 90)
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
  --stats SECONDS     log live statistics every SECONDS, when they changed
                      (info level; default 0: never)

Link failure handling (milliseconds; both ends may set their own):
  --heartbeat MS        ping a quiet link this often (default: 1000; at least 10)
  --dead-link MS        replace a link silent this long (default: 2500; at least 10)
  --resume-timeout MS   give up on (client) or reap (server) a session whose
                        link stays down this long (default: 120000)
  --backoff-initial MS  client: first delay after a refused dial, or before
                        rejoining a relay that went away (default: 100; 250
                        for a relay)
  --backoff-max MS      client: longest such delay (default: 5000)
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
  /** Server: what TLS clients will refuse in the certificate, for warnings at start. */
  certificateConcerns?: string[];
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
  /** Secrets given as flags, each with the private way of giving it (for a warning). */
  secretFlags?: Record<string, string>;
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
  /** Server: its claim on its name (see `_nameClaim`); made at start from the key. */
  claim?: string;
  /** The relay's secret. */
  secret?: string;
  /** Where the secret came from when no flag gave it (`env IMMORTAL_RELAY_SECRET`, a properties file's line). */
  secretSource?: string;
  /**
   * No flag gave a secret and none was found: the places not looked at for
   * lack of permission (`--allow-env=IMMORTAL_RELAY_SECRET`), for the hint
   * when the relay wants one.
   */
  secretUnread?: string[];
  /** A secret found for another relay (its url beside it), and not sent to this one: why, for the log. */
  secretElsewhere?: string;
  /** An HTTP proxy to reach the relay through. */
  proxy?: string;
  /** Extra CA certificates for an https: relay. */
  caCerts?: string[];
  /** Client: the delays between its rejoins of the relay (ms), from `--backoff-*`. */
  backoff?: { initial?: number; max?: number };
  /** At start, how long to keep trying to reach the relay (ms); default 30000. */
  startWait?: number;
  /** Server: how long to wait for its name while another node holds it (ms); default 90000. */
  nameWait?: number;
}

/** At start, how long a relay that does not answer is tried: as long as a direct client waits. */
const RELAY_START_WAIT_MS = CONNECT_WAIT_MS;
/** How long a server waits for its name: past the relay's 30 s reservation of a departed node's. */
const NAME_WAIT_MS = 90_000;
/** How often a client waiting for its server to join looks at the session's members. */
const MEMBER_POLL_MS = 200;
/**
 * Between tries for a name reserved for another node (nobody has it): each
 * is a join and a leave that the session's members see, so the pause
 * doubles up to the cap.
 */
const NAME_RETRY_MS = 1000;
const NAME_RETRY_MAX_MS = 8000;
/**
 * How long a session may be up before a server that has not greeted as a
 * tunnel server is worth a warning. A tunnel server greets at once; an
 * immortal server of another kind that never writes gives no other sign.
 */
const GREETING_WAIT_MS = 5000;
/** How often the wait for the greeting looks at the session. */
const GREETING_CHECK_MS = 250;

function _tlsSettings(
  role: "server" | "client",
  values: {
    "tls-cert"?: string;
    "tls-key"?: string;
    tls?: boolean;
    "tls-ca"?: string;
    "tls-name"?: string;
  },
  fileArgs: FileArgs,
): Pick<TunnelCliConfig, "tlsServer" | "tlsClient" | "certificateConcerns"> {
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
    const tlsServer = readPemPair(certPath, keyPath, fileArgs);
    return { tlsServer, certificateConcerns: certificateConcerns(tlsServer.cert, certPath) };
  }
  if (!values.tls && values["tls-ca"] === undefined && values["tls-name"] === undefined) return {};
  const tlsClient: { caCerts?: string[]; serverName?: string } = {};
  if (values["tls-ca"] !== undefined) {
    const ca = readPemCertificate("CA file", values["tls-ca"], fileArgs);
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
        "relay-wait": { type: "string" },
        "name-wait": { type: "string" },
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
  const fileArgs: FileArgs = {
    // Under deno task, the set a missing --allow-read goes in (as for --allow-net).
    permissionSet: role === "server" ? "tunnel-server" : "tunnel-client",
    files: (["key-file", "relay-secret-file", "tls-cert", "tls-key", "tls-ca"] as const)
      .map((flag) => values[flag])
      .filter((file): file is string => file !== undefined),
  };
  const relay = _relaySettings(role, values, fileArgs);
  const [listen, hostGiven, port] = _positionals(role, relay !== undefined, positionals.slice(1));
  const listenPort = parsePort("<listenPort>", listen, relay !== undefined && role === "server");
  const hostWhat = role === "server" ? "<forwardHost>" : "<serverHost>";
  if (hostGiven === undefined) throw new UsageError(`missing ${hostWhat}`);
  // A client through a relay has no server address (a placeholder here: --to names the server).
  const host = relay !== undefined && role === "client"
    ? hostGiven
    : parseHost(hostWhat, hostGiven);
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
  const keyFile = values["key-file"];
  if (keyFile !== undefined) key = readFirstLine("key file", keyFile, fileArgs);
  if (key !== undefined && key.length === 0) {
    throw new UsageError(
      keyFile === undefined
        ? "the key is empty"
        : `the key file ${keyFile} holds no key (its first line is empty)`,
    );
  }
  if (relay && key === undefined) {
    throw new UsageError(
      "through a relay a key is required (the relay must not be able to stand in the middle): " +
        "make one with tunnel keygen (`deno run cli/tunnel.ts keygen > tunnel.key`) and give " +
        "both ends --key-file tunnel.key",
    );
  }
  if (relay && role === "server" && values["listen-host"] !== undefined) {
    throw new UsageError(
      "a tunnel server on a relay listens nowhere: --listen-host is for direct mode",
    );
  }
  if (relay && (values.tls || values["tls-name"] || values["tls-cert"] || values["tls-key"])) {
    throw new UsageError("through a relay, TLS is the relay's: use an https: --relay URL");
  }
  const tls = relay ? {} : _tlsSettings(role, values, fileArgs);
  if (relay && values["tls-ca"] !== undefined) {
    relay.caCerts = [readPemCertificate("CA file", values["tls-ca"], fileArgs)];
  }
  const sessionSettings = _sessionSettings(role, values);
  // The client's backoff paces its rejoins of the relay too: after a relay
  // restart, that is what the tunnel waits for.
  const { initial, max } = sessionSettings.backoff ?? {};
  if (relay && (initial !== undefined || max !== undefined)) {
    relay.backoff = {
      ...(initial !== undefined ? { initial } : {}),
      ...(max !== undefined ? { max } : {}),
    };
  }
  // 0 (the default) is off.
  const statsSeconds = values.stats === undefined
    ? 0
    : _seconds("--stats", values.stats as string) / 1000;
  return {
    role,
    listenPort,
    peerHost: host,
    peerPort,
    listenHost: values["listen-host"] === undefined
      ? (role === "server" ? "0.0.0.0" : "127.0.0.1")
      : parseHost("--listen-host", values["listen-host"]),
    key,
    ...tls,
    logLevel,
    statsSeconds,
    session: {
      ...sessionSettings,
      encrypt: relay !== undefined || !!values.encrypt,
    },
    ...(relay ? { relay } : {}),
    secretFlags: {
      ...(values.key === undefined ? {} : { "--key": "--key-file" }),
      ...(values["relay-secret"] === undefined ? {} : { "--relay-secret": "--relay-secret-file" }),
    },
  };
}

/** The forms of the command line, to say which one was expected. */
const FORMS = {
  server: "tunnel server <listenPort> <forwardHost> <forwardPort>",
  client: "tunnel client <listenPort> <serverHost> <serverPort>",
  relayServer: "tunnel server --relay URL --session S --name NAME <forwardHost> <forwardPort>",
  relayClient: "tunnel client <listenPort> --relay URL --session S --to NAME",
};

/**
 * The positional arguments as `[listenPort, host, port]`. Through a relay
 * the server listens nowhere (port "0") and the client names no server
 * (the relay config names it). One too many is named as the user wrote it,
 * with the form that was expected.
 */
function _positionals(
  role: "server" | "client",
  relay: boolean,
  given: string[],
): [string | undefined, string | undefined, string | undefined] {
  const excess = (arg: string, why: string, form: string) =>
    new UsageError(`unexpected argument "${arg}"${why}; expected: ${form}`);
  if (!relay) {
    if (given.length > 3) throw excess(given[3], "", FORMS[role]);
    return [given[0], given[1], given[2]];
  }
  if (role === "client") {
    if (given.length > 1) {
      throw excess(
        given[1],
        ": through a relay the client takes no server address (--to names the server)",
        FORMS.relayClient,
      );
    }
    return [given[0], "-", "0"];
  }
  if (given.length > 2) {
    // Most likely the direct form with --relay added: its <listenPort> is the odd one out.
    const directForm = given.length === 3 && parsePortText(given[0]) !== null &&
      parsePortText(given[2]) !== null;
    throw excess(
      directForm ? given[0] : given[2],
      directForm ? ": through a relay the server listens on no port" : "",
      FORMS.relayServer,
    );
  }
  return ["0", given[0], given[1]];
}

/**
 * A number of seconds from 0 to about 24.8 days (a timer's limit: beyond
 * it, `setInterval` fires every millisecond), as milliseconds. Plain
 * digits, a fraction allowed (`0.3`), as every number of our CLIs.
 */
function _seconds(flag: string, text: string): number {
  const seconds = Number(text);
  // Under a millisecond but not 0 would round to 0, which means "off" or "no wait".
  if (!/^\d+(?:\.\d+)?$/.test(text) || seconds > 2_147_483 || (seconds > 0 && seconds < 0.001)) {
    throw new UsageError(
      `${flag} must be 0 or a number of seconds from 0.001 to 2147483 in plain digits (like 30 or 0.5), got "${text}"`,
    );
  }
  return Math.round(seconds * 1000);
}

/** `text`, given as `flag`, as an http: or https: URL; a usage error if it is none. */
function _httpUrl(flag: string, text: string): URL {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    // Said below.
  }
  if (url?.protocol !== "http:" && url?.protocol !== "https:") {
    throw new UsageError(`${flag} must be an http: or https: URL, got "${text}"`);
  }
  return url;
}

/** The relay flags, checked; undefined without `--relay`. */
function _relaySettings(
  role: "server" | "client",
  values: Record<string, string | boolean | undefined>,
  fileArgs: FileArgs,
): TunnelRelayConfig | undefined {
  const text = (flag: string) => values[flag] as string | undefined;
  const url = text("relay");
  const relayOnly = [
    "session",
    "name",
    "to",
    "relay-secret",
    "relay-secret-file",
    "proxy",
    "relay-wait",
    "name-wait",
  ];
  if (url === undefined) {
    const given = relayOnly.find((flag) => values[flag] !== undefined);
    if (given) throw new UsageError(`--${given} needs --relay`);
    return undefined;
  }
  const parsed = _httpUrl("--relay", url);
  const session = text("session");
  if (session === undefined) throw new UsageError("--relay needs --session");
  if (role === "server" && text("name") === undefined) {
    throw new UsageError("a tunnel server on a relay needs --name (what clients reach it by)");
  }
  if (role === "server" && text("to") !== undefined) throw new UsageError("--to is for the client");
  if (role === "client" && text("name-wait") !== undefined) {
    throw new UsageError("--name-wait is for the server");
  }
  if (role === "client" && text("to") === undefined) {
    throw new UsageError("a tunnel client on a relay needs --to (the server's --name)");
  }
  if (text("relay-secret") !== undefined && text("relay-secret-file") !== undefined) {
    throw new UsageError("give --relay-secret or --relay-secret-file, not both");
  }
  const secretFile = text("relay-secret-file");
  let secret = secretFile !== undefined
    ? readFirstLine("relay secret file", secretFile, fileArgs)
    : text("relay-secret");
  // As the relay and its examples do: IMMORTAL_RELAY_SECRET, then
  // immortal-relay.properties (here, then in the home folder), wherever this
  // process may look without a prompt.
  let secretSource: string | undefined;
  let secretUnread: string[] | undefined;
  let secretElsewhere: string | undefined;
  if (secret === undefined) {
    let found: RelayConfig;
    try {
      // Where a relay listens is not the tunnel's business: a wrong port there stops nothing.
      found = loadRelayConfig({ given: ["hostname", "port"] });
    } catch (error) {
      throw new UsageError(errorMessage(error));
    }
    // A bearer secret goes to the relay it was set for, not to whatever
    // --relay says: with a url beside it, the origins must match.
    let elsewhere = found.secretUrl;
    try {
      if (elsewhere !== undefined && new URL(elsewhere).origin === parsed.origin) {
        elsewhere = undefined;
      }
    } catch {
      // Not a URL: not this relay's either.
    }
    if (found.secret !== undefined && elsewhere !== undefined) {
      secretElsewhere =
        `the secret in ${found.sources.secret} is for ${elsewhere}, set beside it, ` +
        "not this relay: not sent";
    } else if (found.secret !== undefined) {
      secret = found.secret;
      secretSource = found.sources.secret;
      if (secret === "") throw new UsageError(`the relay secret is empty (${secretSource})`);
    } else {
      const unread = found.unread.map((place) => place.permission);
      if (unread.length > 0) secretUnread = unread;
    }
  }
  const proxy = text("proxy");
  // Parsed, not matched: "http://::1:3128" (an IPv6 address needs brackets)
  // failed later, as a relay that could not be reached.
  if (proxy !== undefined) _httpUrl("--proxy", proxy);
  const startWait = text("relay-wait");
  const nameWait = text("name-wait");
  return {
    url,
    session,
    name: text("name") ?? "tunnel-client",
    ...(role === "client" ? { to: text("to") } : {}),
    ...(secret !== undefined ? { secret } : {}),
    ...(secretSource !== undefined ? { secretSource } : {}),
    ...(secretUnread !== undefined ? { secretUnread } : {}),
    ...(secretElsewhere !== undefined ? { secretElsewhere } : {}),
    ...(proxy !== undefined ? { proxy } : {}),
    ...(startWait !== undefined ? { startWait: _seconds("--relay-wait", startWait) } : {}),
    ...(nameWait !== undefined ? { nameWait: _seconds("--name-wait", nameWait) } : {}),
  };
}

/** The link-failure flags as session options; relations between them are checked too. */
function _sessionSettings(
  role: "server" | "client",
  values: Record<string, string | boolean | undefined>,
): SessionOptions & { backoff?: BackoffOptions } {
  const ms = (flag: string, min?: number) => {
    const text = values[flag];
    return typeof text === "string" ? parseMillis(`--${flag}`, text, min) : undefined;
  };
  const session: SessionOptions & { backoff?: BackoffOptions } = {
    // The session's own floor (a timer finer than 10 ms is not kept anyway):
    // said as a usage error naming the flag, not the library's option.
    heartbeatInterval: ms("heartbeat", MIN_HEARTBEAT_MS),
    deadLinkTimeout: ms("dead-link", MIN_HEARTBEAT_MS),
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

async function _start(
  config: TunnelCliConfig,
  log: Logger,
  stopping: AbortSignal,
): Promise<Service> {
  await _checkNetPermissions(config);
  warnSecretFlags(log, config.secretFlags ?? {});
  if (config.session.encrypt && config.key === undefined) {
    // The key is what authenticates the key exchange: without it, one that
    // stands in the middle exchanges keys with each end and reads all.
    log.warn(
      "--encrypt without a key is unauthenticated: an active man in the middle can read and " +
        "change the tunnel's traffic. Give both ends --key-file (make a key with tunnel keygen)",
    );
  }
  let node: RelayNode | undefined;
  let tunnel: TunnelServer | TunnelClient;
  let client: ReturnType<typeof _startClient> | undefined;
  let relayClient: ReturnType<typeof _startRelayClient> | undefined;
  if (config.relay && config.role === "client") {
    relayClient = _startRelayClient(config, config.relay, log, stopping);
    tunnel = relayClient.tunnel;
  } else if (config.relay) {
    node = await _joinAsName(
      { ...config.relay, claim: await _nameClaim(config.key!, config.relay) },
      log,
      stopping,
    );
    _joined(config.relay, node, log);
    try {
      tunnel = _startRelayServer(config, config.relay, node, log);
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
  const printStats = _statsPrinter(tunnel, log);
  const stats = config.statsSeconds > 0
    ? setInterval(printStats, config.statsSeconds * 1000)
    : undefined;
  const closing = new AbortController();
  const dropped = node && config.relay
    ? _nodeDropped(node, config.relay, config.role === "server", closing.signal)
    : null;
  // A relay client's node comes later: its end, as a server's, is the command's.
  const relayDropped = relayClient?.node.then(
    (joined) => _nodeDropped(joined, config.relay!, false, closing.signal),
    () => new Promise<never>(() => {}), // not joined: `failed` says why
  );
  const failed = [client?.failed, dropped, relayClient?.failed, relayDropped].filter(
    (p): p is Promise<never> => p != null,
  );
  return {
    stopping: "closing the tunnel",
    failed: failed.length > 0 ? Promise.race(failed) : undefined,
    async close() {
      closing.abort();
      client?.stop();
      clearInterval(stats);
      await tunnel.close();
      await node?.close();
      await relayClient?.close();
    },
  };
}

/**
 * Rejects when the relay ends the node's membership for good while the
 * tunnel runs (it came back with another secret, say): no pipe can come or
 * go any more, so the command says why and exits, rather than wait for ever.
 * Never settles when the tunnel itself closes the node (`closing`).
 */
async function _nodeDropped(
  node: RelayNode,
  relay: TunnelRelayConfig,
  keepsName: boolean,
  closing: AbortSignal,
): Promise<never> {
  let why = "it ended our membership";
  for await (const event of node.events) {
    // A relay back with another secret: where ours came from, as at the join.
    if (event.type === "error") why = event.message + _secretHint(relay, event.code);
    // Cut off long enough for the relay to call us gone, we came back to
    // find our name taken (another server with this key claimed it): under
    // the suffix the relay gave, no client reaches us. Say so and stop, as
    // a server that never got its name does.
    if (
      keepsName && event.type === "state" && event.state === "connected" &&
      node.nickname !== relay.name
    ) {
      throw new Error(
        `the name "${relay.name}" was taken in session ${relay.session} while the relay could not reach us ` +
          `(by another tunnel server with this key?): as "${node.nickname}" no client reaches this one`,
      );
    }
  }
  if (closing.aborted) return await new Promise<never>(() => {});
  throw new Error(`the relay at ${redactedUrl(relay.url)} dropped us: ${why}`);
}

/**
 * Checks, before anything starts, that the process may use every address
 * the command needs. Deno would otherwise refuse each use later: a client
 * would take the refusal for an unreachable server and retry for ever, a
 * server would fail every connection to its target. Where Deno may ask the
 * user (a terminal, no --no-prompt), it asks now rather than mid-tunnel.
 */
async function _checkNetPermissions(config: TunnelCliConfig): Promise<void> {
  const needs: { host: string; what: string }[] = [];
  if (!(config.relay && config.role === "server")) {
    needs.push({ host: hostPort(config.listenHost, config.listenPort), what: "listen on" });
  }
  if (config.relay) {
    const relay = urlAddr(new URL(config.relay.url));
    needs.push({ host: hostPort(relay.hostname, relay.port), what: "reach the relay at" });
  }
  if (config.role === "server") {
    needs.push({
      host: hostPort(config.peerHost, config.peerPort),
      what: "reach the forward target",
    });
  } else if (!config.relay) {
    needs.push({
      host: hostPort(config.peerHost, config.peerPort),
      what: "reach the tunnel server at",
    });
  }
  const missing: string[] = [];
  for (const { host, what } of needs) {
    const descriptor = { name: "net", host } as const;
    let { state } = await Deno.permissions.query(descriptor);
    if (state === "prompt") ({ state } = await Deno.permissions.request(descriptor));
    if (state !== "granted") missing.push(`${what} ${host}`);
  }
  if (missing.length > 0) {
    // The whole list the command needs: Deno takes one value list per flag.
    // Under `deno task tunnel:server` (or :client) the flags are deno.json's.
    throw new Error(
      `no net permission to ${missing.join(", or to ")}: ${
        grantAdvice(needs.map((need) => `--allow-net=${need.host}`), `tunnel-${config.role}`)
      }`,
    );
  }
}

/** Thrown when a signal ends a start that was waiting: the command then exits 0. */
const STOPPED = new Error("stopped while starting");

/** Waits `ms` during a start; a signal meanwhile ends the start ({@linkcode STOPPED}). */
async function _pause(ms: number, stopping: AbortSignal): Promise<void> {
  if (!(await delay(ms, stopping))) throw STOPPED;
}

/**
 * `tunnel.open()`, with a warning (once) when the session is up but the
 * server has not answered as a tunnel server after a while: waiting in
 * silence would look like a hang.
 */
async function _openTunnel(tunnel: TunnelClient, log: Logger, server: string): Promise<void> {
  // Counted from when the session is first seen up: the dial before it may
  // take its own while (the client started before its server), and says so.
  let upSince: number | null = null;
  let warned = false;
  const watch = setInterval(() => {
    if (warned) return;
    if (tunnel.sessions.length === 0) {
      upSince = null;
      return;
    }
    upSince ??= performance.now();
    if (performance.now() - upSince < GREETING_WAIT_MS) return;
    warned = true;
    log.warn(
      "{server} took the session but has not answered as a tunnel server after {seconds} s: is it one? Still waiting",
      { server, seconds: _secondsText(GREETING_WAIT_MS) },
    );
  }, GREETING_CHECK_MS);
  try {
    await tunnel.open();
  } finally {
    clearInterval(watch);
  }
}

/**
 * A session the server ended before it greeted (`closed`, `aborted`): a
 * server stopping or restarting, worth another try, where a server that
 * answered wrongly (`protocol`, `auth`, `tls`) is not.
 */
function _endedBeforeGreeting(error: unknown): error is ImmortalError {
  return error instanceof ImmortalError && (error.code === "closed" || error.code === "aborted");
}

/** Milliseconds as seconds for a log line: `30`, `0.3`. */
function _secondsText(ms: number): string {
  return String(Math.round(ms / 100) / 10);
}

/**
 * A tunnel server's claim on its name: whoever has the tunnel key may serve
 * the name anyway, so the key is what proves it. A server restarted after a
 * crash gets its name back as soon as the relay has the old one gone,
 * instead of after the relay's reservation (30 s). Base64url of an
 * HMAC-SHA-256 keyed by the tunnel key over the session and the name.
 */
async function _nameClaim(
  key: string,
  relay: Pick<TunnelRelayConfig, "session" | "name">,
): Promise<string> {
  const encoder = new TextEncoder();
  const hmac = await crypto.subtle.importKey(
    "raw",
    encoder.encode(key),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = new Uint8Array(
    await crypto.subtle.sign(
      "HMAC",
      hmac,
      encoder.encode(`immortal tunnel name claim\n${relay.session}\n${relay.name}`),
    ),
  );
  return base64url(mac);
}

/** One try at joining (a relay node's own retries are ours here), given up on a signal. */
async function _connectNode(relay: TunnelRelayConfig, stopping: AbortSignal): Promise<RelayNode> {
  try {
    return await RelayNode.connect(relay.url, {
      session: relay.session,
      nickname: relay.name,
      secret: relay.secret,
      proxy: relay.proxy,
      caCerts: relay.caCerts,
      claim: relay.claim,
      retries: 1,
      ...(relay.backoff ? { backoff: relay.backoff } : {}),
      signal: stopping,
    });
  } catch (error) {
    // Given up on the signal (before this try, too): the dial in flight with it.
    if (stopping.aborted) throw STOPPED;
    throw error;
  }
}

/** What to do about a relay that wants another secret than the one given (or none). */
function _secretHint(relay: TunnelRelayConfig, code: string): string {
  if (code !== "unauthorized") return "";
  if (relay.secretSource !== undefined) return ` (the secret came from ${relay.secretSource})`;
  if (relay.secret !== undefined) return "";
  if (relay.secretElsewhere !== undefined) return ` (${relay.secretElsewhere})`;
  const looked = relay.secretUnread?.filter((flag) => flag.includes("IMMORTAL_RELAY_SECRET"));
  return "; give it with --relay-secret-file" +
    (looked?.length
      ? `, or in IMMORTAL_RELAY_SECRET (${
        grantAdvice(looked, relay.to === undefined ? "tunnel-server" : "tunnel-client")
      })`
      : "");
}

/** Whether reaching the relay may work later: nothing answered, or it was briefly unable to take us. */
function _mayComeUp(error: unknown): boolean {
  if (isNotCapable(error)) return false;
  if (error instanceof RelayRefusedError) return error.code === "unavailable";
  return error instanceof RelayConnectError &&
    ["unreachable", "timeout", "broken"].includes(error.code);
}

/**
 * Joins the relay session under the tunnel end's name. A relay that does
 * not answer yet is tried for `startWait`, as a direct client waits for
 * its server (boot order), with one line saying so; refusals, a server that
 * is no relay, and the end of the wait are one line each.
 */
async function _joinRelay(
  relay: TunnelRelayConfig,
  log: Logger,
  stopping: AbortSignal,
): Promise<RelayNode> {
  const wait = relay.startWait ?? RELAY_START_WAIT_MS;
  const deadline = performance.now() + wait;
  for (let attempt = 1;; attempt++) {
    try {
      // After the first try, the node's line per transport per try is no news.
      return attempt === 1
        ? await _connectNode(relay, stopping)
        : await quietly(["immortal", "relay", "node"], () => _connectNode(relay, stopping));
    } catch (error) {
      if (error === STOPPED) throw error;
      if (error instanceof RelayRefusedError && error.code !== "unavailable") {
        throw new Error(
          `the relay at ${redactedUrl(relay.url)} refused us: ${error.message}${
            _secretHint(relay, error.code)
          }`,
        );
      }
      const remaining = deadline - performance.now();
      if (!_mayComeUp(error) || remaining <= 0) {
        const waited = attempt > 1 ? ` (tried for ${_secondsText(wait)} s)` : "";
        throw new Error(
          `cannot reach the relay at ${redactedUrl(relay.url)}${waited}: ${errorMessage(error)}`,
        );
      }
      if (attempt === 1) {
        log.warn("Relay at {url} not reachable ({reason}); trying again for {seconds} s", {
          url: redactedUrl(relay.url),
          reason: errorMessage(error),
          seconds: _secondsText(wait),
        });
      }
      const pause = Math.min(remaining, backoffDelay(attempt, 250, 2000));
      await _pause(pause, stopping);
    }
  }
}

/**
 * Joins the relay session as exactly the server's name. A relay that finds
 * the name held gives a suffixed one (`lab-echo(1)`), which no client would
 * reach. The holder may be another tunnel server, or this one's previous
 * run: a server that stopped with a bye frees its name at once; a crashed
 * one holds it until the relay notices it gone, and then the relay keeps it
 * reserved for its return (which this server's claim is, if it has the
 * same key). So: while the holder is a member, stay joined under the
 * suffix and watch for it to leave (one join the session sees, not one a
 * second); once it has, try the name (at once, then backing off while it
 * stays reserved for another), for `nameWait` in all.
 */
async function _joinAsName(
  relay: TunnelRelayConfig,
  log: Logger,
  stopping: AbortSignal,
): Promise<RelayNode> {
  let node = await _joinRelay(relay, log, stopping);
  if (node.nickname === relay.name) return node;
  const wait = relay.nameWait ?? NAME_WAIT_MS;
  const deadline = performance.now() + wait;
  if (wait > 0) {
    log.warn(
      'The name "{name}" is held in session {session} (by another tunnel server, or one that just stopped); waiting for it for up to {seconds} s',
      { name: relay.name, session: relay.session, seconds: _secondsText(wait) },
    );
  }
  let retry = NAME_RETRY_MS;
  for (;;) {
    const held = () => node.members.some((member) => member.nickname === relay.name);
    const heldByMember = held();
    try {
      while (held() && performance.now() < deadline) {
        await _pause(Math.min(MEMBER_POLL_MS, Math.max(0, deadline - performance.now())), stopping);
      }
    } finally {
      // Stopped (Ctrl-C) while waiting too: it leaves (the session hears
      // "left"), not vanishes (heard "gone" 2.5 s later).
      await node.close();
    }
    const remaining = deadline - performance.now();
    if (remaining <= 0) {
      throw new Error(
        `the name "${relay.name}" is taken in session ${relay.session}` +
          (wait > 0 ? ` (still, after ${_secondsText(wait)} s)` : "") +
          ": is another tunnel server using it? Stop it, or give this one another --name",
      );
    }
    if (heldByMember) {
      retry = NAME_RETRY_MS; // it just left: its name may be ours at once (a claim)
    } else {
      // Reserved for someone else: try again now and then, not every second.
      await _pause(Math.min(remaining, retry), stopping);
      retry = Math.min(retry * 2, NAME_RETRY_MAX_MS);
    }
    // Each try joins (and leaves, if the name is still held): the node's own lines are no news.
    node = await quietly(["immortal", "relay", "node"], () => _joinRelay(relay, log, stopping));
    if (node.nickname === relay.name) return node;
  }
}

function _startRelayServer(
  config: TunnelCliConfig,
  relay: TunnelRelayConfig,
  node: RelayNode,
  log: Logger,
): TunnelServer {
  const tunnel = new TunnelServer({
    port: 0,
    acceptor: node.pipeAcceptor(),
    ...config.session,
    key: config.key,
    target: { hostname: config.peerHost, port: config.peerPort },
  });
  log.info("Tunnel server {name} on the relay, forwarding to {target} (key required, encrypted)", {
    name: relay.name,
    target: hostPort(config.peerHost, config.peerPort),
  });
  return tunnel;
}

/** Says that `node` joined the relay session (and where its secret came from, if no flag gave it). */
function _joined(relay: TunnelRelayConfig, node: RelayNode, log: Logger): void {
  log.info("Joined session {session} of the relay at {url} as {name} ({transport}{secret})", {
    session: relay.session,
    url: redactedUrl(relay.url),
    name: node.nickname,
    transport: node.transport,
    secret: relay.secretSource === undefined ? "" : `; relay secret from ${relay.secretSource}`,
  });
}

/**
 * Starts a client through a relay. It listens at once, as a direct client
 * does (a tunnel is often started before its far end, and an application
 * that connects meanwhile waits, up to 30 s, rather than be refused); then
 * it joins the relay, waits for the server to join the session (both for
 * `--relay-wait`), and opens its session, to fail on a server that refuses
 * us (or our key) now rather than on the first user connection. Any of
 * that failing is fatal: `failed` rejects. Until the server is there, a
 * connection's tries find it unreachable, as a direct client's find a
 * server that is down.
 */
function _startRelayClient(
  config: TunnelCliConfig,
  relay: TunnelRelayConfig,
  log: Logger,
  stopping: AbortSignal,
): {
  tunnel: TunnelClient;
  /** The joined node, once the tunnel is up. */
  node: Promise<RelayNode>;
  failed: Promise<never>;
  close(): Promise<void>;
} {
  const to = relay.to!;
  let dial: Dialer | null = null;
  let notYet = `the relay at ${redactedUrl(relay.url)} is not reached yet`;
  const tunnel = new TunnelClient({
    hostname: config.listenHost,
    port: config.listenPort,
    ...config.session,
    key: config.key,
    // A name that refuses us fails the start at once (`refused`).
    dialer: (signal) =>
      dial !== null ? dial(signal) : Promise.reject(new ImmortalError("unreachable", notYet)),
    server: { hostname: to, port: 0 },
  });
  log.info("Tunnel client on {listen}, via the relay at {url} to {to}", {
    listen: hostPort(config.listenHost, config.listenPort),
    url: redactedUrl(relay.url),
    to,
  });
  const starting = (async () => {
    const node = await _joinRelay(relay, log, stopping);
    _joined(relay, node, log);
    try {
      const present = () => node.members.some((member) => member.nickname === to);
      if (!present()) {
        // Boot order: the server may join a moment later. A wrong name
        // still fails, after the wait.
        const wait = relay.startWait ?? RELAY_START_WAIT_MS;
        notYet = `no tunnel server "${to}" in session ${relay.session} yet`;
        log.warn(
          "No tunnel server {to} in session {session} yet; waiting up to {seconds} s for it",
          { to, session: relay.session, seconds: _secondsText(wait) },
        );
        const deadline = performance.now() + wait;
        while (!present() && performance.now() < deadline) {
          await _pause(MEMBER_POLL_MS, stopping);
        }
        if (!present()) {
          throw new Error(
            `no tunnel server "${to}" in session ${relay.session} of ${redactedUrl(relay.url)}`,
          );
        }
      }
      dial = node.pipeDialer(to);
      // The session stays the tunnel's: a probe session opened and closed
      // showed in the server's log as one that failed.
      for (let tries = 1, ended = 0;; tries++) {
        const started = performance.now();
        try {
          await _openTunnel(tunnel, log, `Tunnel server ${to}`);
          break;
        } catch (error) {
          if (stopping.aborted) throw STOPPED;
          // An early local connection's opening may have been under way, its
          // wait nearly spent while the server was not there yet: a try that
          // did not get a whole wait of its own gets one.
          const shortened = performance.now() - started < CONNECT_WAIT_MS;
          if (
            tries === 1 && shortened && error instanceof ImmortalError &&
            error.code === "unreachable"
          ) continue;
          // A server stopping as we came: it may be back, as long as the
          // start waits for a server to join.
          if (
            _endedBeforeGreeting(error) &&
            ++ended * 1000 < (relay.startWait ?? RELAY_START_WAIT_MS)
          ) {
            if (ended === 1) {
              log.warn(
                "Tunnel server {to} ended the session before answering ({reason}); trying again",
                {
                  to,
                  reason: errorMessage(error),
                },
              );
            }
            await _pause(1000, stopping);
            continue;
          }
          throw new Error(`tunnel server ${to}: ${errorMessage(error)}`);
        }
      }
      // The session went through: the whole path works, as in direct mode's line.
      log.info("Tunnel server {to} answered through the relay: the tunnel is up", { to });
      return node;
    } catch (error) {
      await node.close();
      throw error;
    }
  })();
  // Stopped while starting is no failure: the command is closing.
  const failed = starting.then(
    () => new Promise<never>(() => {}),
    (error) => error === STOPPED ? new Promise<never>(() => {}) : Promise.reject(error),
  );
  return {
    tunnel,
    node: starting,
    failed,
    async close() {
      const node = await starting.catch(() => null);
      await node?.close();
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
  log.info("Tunnel server on {listen}{tls}, forwarding to {target}{keyed}{sealed}", {
    listen: hostPort(config.listenHost, config.listenPort),
    tls: config.tlsServer ? " (TLS)" : "",
    target: hostPort(config.peerHost, config.peerPort),
    keyed: config.key ? " (key required)" : "",
    sealed: config.session.encrypt ? " (encrypted sessions only)" : "",
  });
  for (const concern of config.certificateConcerns ?? []) log.warn(concern);
  if (!config.key) {
    // An open proxy to the target is rarely what anyone meant: say it loudly.
    log.warn(
      "NO KEY: this tunnel server is OPEN. Anyone who can reach {listen} may use it to reach {target}; give both ends --key-file",
      {
        listen: hostPort(config.listenHost, config.listenPort),
        target: hostPort(config.peerHost, config.peerPort),
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
  const server = hostPort(where.hostname, where.port);
  const tunnel = new TunnelClient({
    hostname: config.listenHost,
    port: config.listenPort,
    ...config.session,
    key: config.key,
    tls: config.tlsClient,
    server: where,
  });
  log.info("Tunnel client on {listen}, via the server at {server}{tls}{sealed}", {
    listen: hostPort(config.listenHost, config.listenPort),
    server,
    tls: config.tlsClient ? " (TLS)" : "",
    // As the server's line says it: which end insists on it is worth seeing at both.
    sealed: config.session.encrypt ? " (encrypted sessions)" : "",
  });
  const failed = Promise.withResolvers<never>();
  const stopping = new AbortController();
  (async () => {
    for (let tries = 1, ended = 0;; tries++) {
      try {
        await _openTunnel(tunnel, log, `The server at ${server}`);
        if (!stopping.signal.aborted) {
          log.info("Tunnel server {server} answered: the tunnel is up", { server });
        }
        return;
      } catch (error) {
        if (stopping.signal.aborted) return;
        if (_endedBeforeGreeting(error)) {
          // Once, then quietly: a server that takes sessions and ends them
          // on and on would otherwise say so every second.
          const line =
            "The tunnel server {server} ended the session before answering ({reason}); trying again";
          const fields = { server, reason: errorMessage(error) };
          if (++ended === 1) log.warn(line, fields);
          else log.debug(line, fields);
          if (!(await delay(1000, stopping.signal))) return;
          continue;
        }
        // Nothing answering, or a busy server, may change; anything else will not
        // (a permission Deno refused is "permission").
        if (
          error instanceof ImmortalError &&
          (error.code === "unreachable" || error.code === "rejected")
        ) {
          // Once: it is tried until it answers, and says so then.
          if (tries === 1) {
            log.info(
              "Listening anyway: the tunnel server {server} is tried until it answers",
              { server },
            );
          }
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

/**
 * What `--stats` prints each interval: the statistics, but only when they
 * changed since they were last printed. An idle tunnel, or a client whose
 * server is down, would otherwise repeat the same lines for ever. The round
 * trip time alone does not count as a change: it moves at every heartbeat.
 */
function _statsPrinter(tunnel: TunnelServer | TunnelClient, log: Logger): () => void {
  let last: string | undefined;
  return () => {
    const lines: string[] = [];
    const changes: string[] = [];
    // Per session at either end: a server's sessions are its clients'.
    for (const session of tunnel.sessions) {
      const st = session.stats;
      // The session's bytes carry the streams' framing too: so "on the session".
      const counts = `stats ${session.sessionId.slice(0, 8)} ${st.state}: ` +
        `${st.bytesWritten} B out, ${st.bytesRead} B in on the session, ` +
        `${st.reconnects} reconnects, ${st.replayedBytes} B replayed`;
      changes.push(counts);
      lines.push(`${counts}, rtt ${st.rttMs?.toFixed(1) ?? "-"} ms`);
    }
    const { sent, received } = tunnel.forwarded;
    const open = `stats ${tunnel.connections} open connection(s); ` +
      `connections sent ${sent} B, received ${received} B`;
    changes.push(open);
    lines.push(open);
    const now = changes.join("\n");
    if (now === last) return;
    last = now;
    // Log lines like the others: with when, and a level a log filter knows.
    for (const line of lines) log.info("{line}", { line });
  };
}

if (import.meta.main) {
  if (Deno.args[0] === "keygen") {
    if (Deno.args.length > 1 && !["-h", "--help"].includes(Deno.args[1])) {
      console.error(
        `error: keygen takes no arguments, got "${Deno.args[1]}"\nRun with --help for usage.`,
      );
      Deno.exit(2);
    }
    console.log(Deno.args.length > 1 ? "tunnel keygen: prints a fresh random key" : generateKey());
    Deno.exit(0);
  }
  await runService(Deno.args, { usage: USAGE, parse: parseTunnelArgs, start: _start });
}
