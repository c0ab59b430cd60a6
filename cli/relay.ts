/**
 * `immortal-relay`: the firewall-friendly HTTP relay.
 *
 * ```sh
 * deno run --allow-net=0.0.0.0:8080 --allow-env=IMMORTAL_RELAY_SECRET cli/relay.ts --port 8080
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { Logger } from "@logtape/logtape";
import { errorMessage, hostPort } from "../lib/_util.ts";
import { clusterAddress } from "../lib/relay/_cluster_address.ts";
import { loadRelayConfig, RELAY_CONFIG_FILE } from "../lib/relay/config.ts";
import type { OverflowPolicy } from "../lib/relay/options.ts";
import {
  RefusedByRedis,
  serveRelay,
  type ServeRelayOptions,
  serverSettings,
} from "../lib/relay/serve.ts";
import {
  MAX_KEEP_ALIVE_MS,
  MIN_MESSAGE_BYTES,
  MIN_RATE,
  redactedUrl,
  redisUrl,
  relaySettings,
} from "../lib/relay/_settings.ts";
import { canonicalIp } from "../lib/link/_forwarded_for.ts";
import {
  certificateConcerns,
  type FileArgs,
  flagError,
  grantAdvice,
  LoggedError,
  parseHost,
  parseLogLevel,
  parseMillis,
  parsePort,
  parsePositive,
  permissionMessage,
  readFirstLine,
  readPemPair,
  runService,
  type Service,
  UsageError,
  warnSecretFlags,
} from "./_common.ts";

const USAGE = `immortal relay — links hosts that can only make outgoing HTTP(S) connections

Usage:
  relay [options]

Options:
  --port PORT              port to listen on (default 8080)
  --hostname HOST          address to listen on (default 0.0.0.0)
  --reuse-port             share the port with other relay processes on this
                           machine (SO_REUSEPORT; with --redis, one session
                           across them); needs deno run --unstable-net
  --secret SECRET          relay secret nodes must present
  --secret-file PATH       read the secret from a file (first line)
  --open                   run without a secret, open to anyone who can reach
                           it (for development): needed when the relay may not
                           look everywhere a secret may be set (see below)
  --metrics-token TOKEN    what /metrics and the numbers on / and /healthz
                           need (Authorization: Bearer TOKEN); without it,
                           the relay secret
  --metrics-token-file PATH  read the metrics token from a file (first line);
                           or set IMMORTAL_RELAY_METRICS_TOKEN (and give
                           --allow-env=IMMORTAL_RELAY_METRICS_TOKEN)
  --tls-cert PATH          serve HTTPS with this certificate chain (PEM)
  --tls-key PATH           private key of --tls-cert (PEM)
  --keep-alive MS          keep-alive interval (default 10000): a node the
                           relay neither hears from nor writes to is pinged
                           once per interval; a node silent for 2.5 intervals
                           is declared gone (one whose connection broke:
                           after 2.5 s)
  --max-sessions N         most sessions at once (default 10000)
  --max-nodes N            most nodes per session (default 1000)
  --max-message-bytes N    largest message (default 65536)
  --max-nickname N         longest nickname in characters (default 32)
  --rate N                 messages per second per node (default 100)
  --auth-timeout MS        a connection must join within this (default 5000)
  --max-queue-bytes N      bytes queued towards one node (default 1048576)
  --overflow POLICY        full queue: disconnect (default) or drop
  --no-chat-page           do not serve the browser chat page at /chat
  --trusted-proxy ADDRS    reverse proxies in front (IP addresses, comma-
                           separated) whose X-Forwarded-For names the node's
                           address in the log (else the proxy's is logged)
  --redis URL              share sessions with other relay processes through
                           Redis (redis://host:6379, redis://[::1]:6379);
                           needs --allow-net for it
  --cluster-address HOST:PORT  with --redis: where the other relays reach this
                           one for pipes between nodes on different relays
                           (plain HTTP, keyed: a private address; default
                           --hostname, or 127.0.0.1 for 0.0.0.0, on a free
                           port); needs --allow-net for it and the others'
  --redis-timeout MS       with --redis: a command Redis has not answered by
                           then fails (join refused, message resent) (default
                           10000)
  --history-length N       messages each session keeps for nodes back from a
                           blip (default 1000)
  --history-bytes N        bytes of messages each session keeps (default
                           4194304)
  --history-age MS         how long a message is kept for them (default
                           120000)
  --total-history-bytes N  bytes of messages all sessions keep together;
                           past it, sessions nobody is in lose theirs first
                           (default 268435456)
  --header-timeout MS      a connection must send its first request head
                           within this (default 10000)
  --idle-timeout MS        a connection may wait this long between requests,
                           and take this long for a body (default 60000)
  --max-unjoined N         most connections that carry no joined node; at the
                           cap, the source holding the most loses its oldest
                           (default 512; keep it below ulimit -n)
  --log-level LEVEL        debug, info, warning or error (default: info)
  -h, --help               show this help

Settings also come from the environment (IMMORTAL_RELAY_SECRET,
IMMORTAL_RELAY_HOSTNAME, IMMORTAL_RELAY_PORT) and from ${RELAY_CONFIG_FILE}
in the working directory, then the home directory; flags win. The metrics
token comes from IMMORTAL_RELAY_METRICS_TOKEN too (not from the file), read
only with --allow-env for it: without, /metrics takes the relay secret.

An empty secret (--secret "", IMMORTAL_RELAY_SECRET set to nothing, a
"secret =" line, an empty first line in --secret-file) is an error. With no
secret anywhere the relay runs open (for development) and says so; but if it
was not allowed to look where one may be set, it exits naming the place and
the permission to give, unless --open.

Numbers are plain decimal digits (no 1e3), at most ${Number.MAX_SAFE_INTEGER}.

Permissions: --allow-net for the listen address; --allow-read for secret,
certificate and config files; --allow-env for the variables above. Under
deno task, add them to deno.json's permission set instead (permissions.relay,
or permissions.relay-redis): words after the task name go to the relay.
Deno's permission sets take no ~ or $HOME, so "deno task relay" cannot read
~/${RELAY_CONFIG_FILE} unless its full path is added there.`;

/** Where the metrics token may come from when no flag gives it. */
const METRICS_TOKEN_VARIABLE = "IMMORTAL_RELAY_METRICS_TOKEN";

// The types RelayCliConfig holds, documented with it: this module is an entry point of its own.
export type { ServeRelayOptions } from "../lib/relay/serve.ts";
export type { OverflowPolicy, RelayOptions } from "../lib/relay/options.ts";

/** How much the relay logs: `--log-level`. */
export type RelayLogLevel = "debug" | "info" | "warning" | "error";

/** The relay command line, parsed and checked: what to serve, and how much to log. */
export interface RelayCliConfig {
  /** The relay server's settings: flags, then environment, then configuration files. */
  serve: ServeRelayOptions;
  /** The lowest level logged. */
  logLevel: RelayLogLevel;
  /** Where the secret came from (a flag, a file, a variable), for the startup log. */
  secretSource?: string;
  /** What TLS clients will refuse in `--tls-cert`, for warnings at start. */
  certificateConcerns?: string[];
  /** Where the metrics token came from, when one was given. */
  metricsTokenSource?: string;
  /** `--open`: no secret, and the user said so. */
  open?: boolean;
  /** Secrets given as flags, each with the private ways of giving it (for a warning). */
  secretFlags?: Record<string, string>;
}

/**
 * Parses and validates the relay command line, merged with
 * {@linkcode loadRelayConfig}'s environment and files; `"help"` for `-h`.
 * Throws a `UsageError` with one line for the user on bad input, and an
 * `Error` naming the permission to give when it may not read a file it was
 * given, or may not look where a secret may be set and found none (unless
 * `--open`).
 */
export function parseRelayArgs(args: string[]): RelayCliConfig | "help" {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        port: { type: "string" },
        hostname: { type: "string" },
        secret: { type: "string" },
        "secret-file": { type: "string" },
        open: { type: "boolean" },
        "metrics-token": { type: "string" },
        "metrics-token-file": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "keep-alive": { type: "string" },
        "max-sessions": { type: "string" },
        "max-nodes": { type: "string" },
        "max-message-bytes": { type: "string" },
        "max-nickname": { type: "string" },
        rate: { type: "string" },
        "auth-timeout": { type: "string" },
        "max-queue-bytes": { type: "string" },
        overflow: { type: "string" },
        "no-chat-page": { type: "boolean" },
        "header-timeout": { type: "string" },
        "idle-timeout": { type: "string" },
        "max-unjoined": { type: "string" },
        "history-length": { type: "string" },
        redis: { type: "string" },
        "trusted-proxy": { type: "string" },
        "reuse-port": { type: "boolean" },
        "cluster-address": { type: "string" },
        "redis-timeout": { type: "string" },
        "history-bytes": { type: "string" },
        "history-age": { type: "string" },
        "total-history-bytes": { type: "string" },
        "log-level": { type: "string", default: "info" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    throw flagError(error);
  }
  const v = parsed.values;
  if (v.help) return "help";
  let file;
  try {
    // What the flags set is not looked for (nor checked) in the environment or the files.
    const given = [
      ...(v.secret !== undefined || v["secret-file"] !== undefined ? ["secret" as const] : []),
      ...(v.hostname !== undefined ? ["hostname" as const] : []),
      ...(v.port !== undefined ? ["port" as const] : []),
    ];
    file = loadRelayConfig({ given });
  } catch (error) {
    throw new UsageError(errorMessage(error));
  }
  if (v.secret !== undefined && v["secret-file"] !== undefined) {
    throw new UsageError("give --secret or --secret-file, not both");
  }
  // Under deno task, the set whose lists a missing permission goes in (see deno.json's tasks).
  const permissionSet = v.redis === undefined ? "relay" : "relay-redis";
  const fileArgs: FileArgs = {
    permissionSet,
    files: [v["secret-file"], v["metrics-token-file"], v["tls-cert"], v["tls-key"]]
      .filter((file): file is string => file !== undefined),
  };
  let secret = v.secret;
  let secretSource = secret !== undefined ? "--secret" : undefined;
  if (v["secret-file"] !== undefined) {
    secret = readFirstLine("secret file", v["secret-file"], fileArgs);
    secretSource = v["secret-file"];
  }
  if (secret === undefined && file.secret !== undefined) {
    secret = file.secret;
    secretSource = file.sources.secret;
  }
  if (secret === "") {
    // Name the place: a file's line, the variable, the flag.
    const where = v["secret-file"] !== undefined
      ? `${secretSource}:1, the first line of the secret file`
      : secretSource;
    throw new UsageError(`the relay secret is empty (${where})`);
  }
  if (v.open && secret !== undefined) {
    throw new UsageError(
      `--open is for a relay without a secret, but one is set (${secretSource}): drop one of them`,
    );
  }
  if (v["metrics-token"] !== undefined && v["metrics-token-file"] !== undefined) {
    throw new UsageError("give --metrics-token or --metrics-token-file, not both");
  }
  const tokenFile = v["metrics-token-file"];
  let metricsToken = tokenFile !== undefined
    ? readFirstLine("metrics token file", tokenFile, fileArgs)
    : v["metrics-token"];
  let tokenSource = tokenFile !== undefined
    ? `${tokenFile}:1, the first line of the metrics token file`
    : "--metrics-token";
  // The variable only where it may be read (no prompt): without it, the relay secret serves.
  if (
    metricsToken === undefined &&
    Deno.permissions.querySync({ name: "env", variable: METRICS_TOKEN_VARIABLE }).state ===
      "granted"
  ) {
    metricsToken = Deno.env.get(METRICS_TOKEN_VARIABLE);
    tokenSource = `env ${METRICS_TOKEN_VARIABLE}`;
  }
  if (metricsToken === "") {
    throw new UsageError(`the metrics token is empty (${tokenSource})`);
  }
  if ((v["tls-cert"] === undefined) !== (v["tls-key"] === undefined)) {
    throw new UsageError("HTTPS needs both --tls-cert and --tls-key");
  }
  const overflow = v.overflow ?? "disconnect";
  if (overflow !== "disconnect" && overflow !== "drop") {
    throw new UsageError(`--overflow must be disconnect or drop, got "${overflow}"`);
  }
  try {
    redisUrl(v.redis, "--redis");
  } catch (error) {
    throw new UsageError(errorMessage(error));
  }
  if (v["cluster-address"] !== undefined) {
    if (v.redis === undefined) {
      throw new UsageError("--cluster-address is for relays sharing sessions: it needs --redis");
    }
    try {
      clusterAddress(v["cluster-address"], "", "--cluster-address");
    } catch (error) {
      throw new UsageError(errorMessage(error));
    }
  }
  const num = (flag: keyof typeof v, integer = true) =>
    v[flag] === undefined ? undefined : parsePositive(`--${flag}`, v[flag] as string, integer);
  // Durations feed timers, which fire at once past 2^31 - 1 ms: bounded, with a sentence.
  const ms = (flag: keyof typeof v) =>
    v[flag] === undefined ? undefined : parseMillis(`--${flag}`, v[flag] as string);
  const serve: ServeRelayOptions = {
    hostname: v.hostname !== undefined
      ? parseHost("--hostname", v.hostname)
      : file.hostname !== undefined
      ? parseHost(`hostname (${file.sources.hostname})`, file.hostname)
      : "0.0.0.0",
    port: v.port !== undefined ? parsePort("--port", v.port, true) : file.port ?? 8080,
    secret,
    metricsToken,
    keepAlive: atMost(
      atLeast(ms("keep-alive"), 100, "--keep-alive", "nodes could not answer in time"),
      MAX_KEEP_ALIVE_MS,
      "--keep-alive",
      "a node is gone 2.5 times it after its last word, and timers end at 2^31 ms",
    ),
    maxSessions: num("max-sessions"),
    maxNodesPerSession: num("max-nodes"),
    maxMessageBytes: atLeast(
      num("max-message-bytes"),
      MIN_MESSAGE_BYTES,
      "--max-message-bytes",
      "a hello must fit",
    ),
    maxNicknameLength: num("max-nickname"),
    rate: atLeast(
      num("rate", false),
      MIN_RATE,
      "--rate",
      "a burst, twice the rate, must hold a message",
    ),
    authTimeout: ms("auth-timeout"),
    maxQueueBytes: num("max-queue-bytes"),
    overflow: overflow as OverflowPolicy,
    chatPage: !v["no-chat-page"],
    trustedProxies: v["trusted-proxy"]?.split(",").map((given) => {
      // Compared with the address a connection comes from: a name never matches.
      const address = canonicalIp(given);
      if (address === null) {
        throw new UsageError(`--trusted-proxy takes IP addresses, got "${given.trim()}"`);
      }
      return address;
    }),
    headerTimeout: ms("header-timeout"),
    idleTimeout: ms("idle-timeout"),
    maxUnjoined: num("max-unjoined"),
    redis: v.redis,
    reusePort: v["reuse-port"] || undefined,
    clusterAddress: v["cluster-address"],
    redisTimeout: ms("redis-timeout"),
    historyLength: num("history-length"),
    historyBytes: num("history-bytes"),
    historyAge: ms("history-age"),
    totalHistoryBytes: num("total-history-bytes"),
  };
  let concerns: string[] = [];
  if (v["tls-cert"] !== undefined) {
    Object.assign(serve, readPemPair(v["tls-cert"], v["tls-key"]!, fileArgs));
    concerns = certificateConcerns(serve.cert!, v["tls-cert"]);
  }
  // Drop unset limits so the relay's own defaults apply.
  for (const key of Object.keys(serve) as (keyof ServeRelayOptions)[]) {
    if (serve[key] === undefined) delete serve[key];
  }
  // parseLogLevel admits exactly the RelayLogLevel names.
  const logLevel = parseLogLevel(v["log-level"]!) as RelayLogLevel;
  // Fail closed: a secret may be where this process was not allowed to look
  // (a service's variable, a config file), and starting open would ignore it.
  const unread = secret === undefined && !v.open
    ? file.unread.filter(({ place }) => !place.startsWith("env ") || /_SECRET$/.test(place))
    : [];
  if (unread.length > 0) {
    throw new Error(
      `no relay secret found, but this relay was not allowed to look at ${
        unread.map((u) => u.place).join(", ")
      }: ${
        grantAdvice(unread.map((u) => u.permission), permissionSet)
      }; or give --open for a relay open to anyone`,
    );
  }
  const secretFlags: Record<string, string> = {};
  if (v.secret !== undefined) secretFlags["--secret"] = "--secret-file or IMMORTAL_RELAY_SECRET";
  if (v["metrics-token"] !== undefined) secretFlags["--metrics-token"] = "--metrics-token-file";
  return {
    serve,
    logLevel,
    secretSource,
    ...(metricsToken !== undefined ? { metricsTokenSource: tokenSource } : {}),
    ...(concerns.length > 0 ? { certificateConcerns: concerns } : {}),
    secretFlags,
    ...(v.open ? { open: true } : {}),
  };
}

async function start(config: RelayCliConfig, log: Logger): Promise<Service> {
  // Deno ends the process, not just the call, when Deno.listen is asked for
  // reusePort without --unstable-net (which also defines listenDatagram).
  if (config.serve.reusePort && !("listenDatagram" in Deno)) {
    throw new Error(
      "--reuse-port needs Deno's --unstable-net flag: deno run --unstable-net ... cli/relay.ts",
    );
  }
  if (config.serve.reusePort && config.serve.redis === undefined) {
    // Legitimate for handing the port over in a restart; a quiet trap for
    // running several (two split a session of six nodes 3 and 3, silently).
    log.warn(
      "--reuse-port without --redis: relays that share this port share no sessions, so nodes " +
        "of one session that reach different processes do not hear each other",
    );
  }
  const listening = Promise.withResolvers<Deno.NetAddr>();
  let server;
  try {
    server = serveRelay({ ...config.serve, onListen: listening.resolve });
  } catch (error) {
    // In our words already: a listen error names the address, a TLS one the certificate;
    // a missing --allow-net is said so that it can be given under deno task too.
    throw new Error(
      permissionMessage(error, config.serve.redis === undefined ? "relay" : "relay-redis"),
    );
  }
  const addr = await listening.promise;
  const scheme = config.serve.cert ? "https" : "http";
  log.info("Relay listening on {url} (chat page: {chat})", {
    url: `${scheme}://${hostPort(addr.hostname, addr.port)}`,
    chat: config.serve.chatPage === false ? "off" : "/chat",
  });
  if (config.serve.secret === undefined && config.open) {
    log.warning("NO RELAY SECRET (--open): this relay is OPEN to anyone who can reach it.");
  } else if (config.serve.secret === undefined) {
    log.warning(
      "NO RELAY SECRET: this relay is OPEN to anyone who can reach it. Fine for local development; " +
        "set --secret, --secret-file or IMMORTAL_RELAY_SECRET anywhere else.",
    );
  } else {
    log.info("Relay secret required (from {source})", { source: config.secretSource });
    // Properties files and docker's --env-file take a value as written, quotes and all.
    if (/^(["']).*\1$/s.test(config.serve.secret)) {
      log.warning(
        "The relay secret from {source} starts and ends with a quote: the quotes are part of " +
          "it, and nodes must send them too (remove them if they were meant as quoting)",
        { source: config.secretSource },
      );
    }
  }
  if (config.metricsTokenSource !== undefined) {
    log.info("/metrics takes the metrics token (from {source})", {
      source: config.metricsTokenSource,
    });
  }
  warnSecretFlags(log, config.secretFlags ?? {});
  for (const concern of config.certificateConcerns ?? []) log.warning(concern);
  // What a refusal in the log is measured against; checked already, by serveRelay.
  const limits = relaySettings(config.serve);
  log.info(
    "Limits: {sessions} sessions of {nodes} nodes; messages up to {bytes} bytes, {rate} a second a node; " +
      "{queue} bytes queued for a node, then {overflow}; keep-alive every {keepAlive} ms",
    {
      sessions: limits.maxSessions,
      nodes: limits.maxNodesPerSession,
      bytes: limits.maxMessageBytes,
      rate: limits.rate,
      queue: limits.maxQueueBytes,
      overflow: limits.overflow === "drop" ? "its messages are dropped" : "it is disconnected",
      keepAlive: limits.keepAlive,
    },
  );
  const http = serverSettings(config.serve);
  log.info(
    "Kept for nodes coming back: {length} messages or {historyBytes} bytes a session " +
      "({totalHistoryBytes} in all), for {age} ms; connections without a joined node: " +
      "{unjoined} at most, {idle} ms idle",
    {
      length: limits.historyLength,
      historyBytes: limits.historyBytes,
      totalHistoryBytes: limits.totalHistoryBytes,
      age: limits.historyAge,
      unjoined: http.maxUnjoined,
      idle: http.idleTimeout,
    },
  );
  if (config.serve.redis !== undefined) {
    log.info("Sessions shared through Redis at {redis}; other relays reach this one at {peer}", {
      redis: redactedUrl(config.serve.redis),
      peer: hostPort(server.clusterAddr!.hostname, server.clusterAddr!.port),
    });
  }
  return {
    stopping: "shutting the relay down",
    close: () => server.shutdown(),
    // Redis refusing this relay for good (a wrong password, say) ends it:
    // exit 1. The relay logged why as it happened, at error level.
    failed: server.finished.then(
      () => new Promise<never>(() => {}),
      (error) => {
        if (!(error instanceof RefusedByRedis)) throw error;
        throw new LoggedError(errorMessage(error), { cause: error });
      },
    ),
  };
}

/** `value` (when given) if at most `max`; else a usage error naming `flag`, and why. */
function atMost(value: number | undefined, max: number, flag: string, why: string) {
  if (value !== undefined && value > max) {
    throw new UsageError(`${flag} must be at most ${max} (${why}), got ${value}`);
  }
  return value;
}

/** `value` (when given) if at least `min`; else a usage error naming `flag`, and why. */
function atLeast(value: number | undefined, min: number, flag: string, why: string) {
  if (value !== undefined && value < min) {
    throw new UsageError(`${flag} must be at least ${min} (${why}), got ${value}`);
  }
  return value;
}

if (import.meta.main) {
  await runService(Deno.args, { usage: USAGE, parse: parseRelayArgs, start });
}
