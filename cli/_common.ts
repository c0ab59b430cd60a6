/**
 * What the command-line entry points share: usage errors, argument checks,
 * logging to stderr in words, and running a service until SIGINT/SIGTERM (or SIGHUP on a terminal).
 *
 * @module
 */

import { configure, getLogger, type Logger, type LogLevel, type LogRecord } from "@logtape/logtape";
import { X509Certificate } from "node:crypto";
import { errorMessage, isIpv4, isNotCapable, parsePortText } from "../lib/_util.ts";

/** A mistake in how the command was called: one line, exit code 2. */
export class UsageError extends Error {}

/**
 * A failure the service logged already, as it happened: exit code 1, and
 * not its line again (a relay that Redis refused printed the same line
 * twice, as a log line and as the error it exited with).
 */
export class LoggedError extends Error {}

/**
 * A `parseArgs` (node:util) refusal in our words: one line that names the
 * flag and what to do, instead of Node's sentence about positionals.
 */
export function flagError(error: unknown): UsageError {
  const message = errorMessage(error).split("\n")[0];
  const flag = /^(?:Unknown option|Option) '(-[^' ]+)/.exec(message)?.[1];
  if (flag !== undefined) {
    if (/^Unknown option/.test(message)) {
      // "-1" where a number was meant (a port, say) reads as a flag.
      if (/^-\d+$/.test(flag)) {
        return new UsageError(`${flag}: negative numbers are not taken (a port, a count?)`);
      }
      return new UsageError(`unknown flag ${flag}`);
    }
    if (/argument missing/.test(message)) return new UsageError(`${flag} needs a value`);
    if (/argument is ambiguous/.test(message)) {
      return new UsageError(
        `${flag} needs a value; for one that starts with "-", write ${flag}=VALUE`,
      );
    }
    if (/does not take an argument/.test(message)) return new UsageError(`${flag} takes no value`);
  }
  const positional = /^Unexpected argument '([^']*)'/.exec(message)?.[1];
  if (positional !== undefined) return new UsageError(`unexpected argument "${positional}"`);
  return new UsageError(message);
}

/** Log levels a user may pick. */
export const LOG_LEVELS = ["debug", "info", "warning", "error"] as const;

/** Parses a port number 1-65535 (or 0 when `allowZero`), naming `what` in the error. */
export function parsePort(what: string, text: string | undefined, allowZero = false): number {
  if (text === undefined) throw new UsageError(`missing ${what}`);
  const port = parsePortText(text, allowZero);
  if (port === null) {
    throw new UsageError(
      `${what} must be a port number ${allowZero ? 0 : 1}-65535, got "${text}"`,
    );
  }
  return port;
}

/**
 * A host name or IP address to dial or listen on, checked here so that a
 * typo is a usage error naming `what`, not the platform's words at dial time
 * (or never: a target is dialed only when a connection comes).
 */
export function parseHost(what: string, given: string): string {
  if (given.trim() === "") throw new UsageError(`${what} is empty`);
  const bad = () => new UsageError(`${what} must be a host name or an IP address, got "${given}"`);
  // An IPv6 address written as in a URL: the brackets are not part of it,
  // and a zone is written `%25` there (RFC 6874; unbracketed, `%251` is
  // interface 251).
  const bracketed = /^\[(.*)\]$/.exec(given)?.[1];
  const text = bracketed?.replace("%25", "%") ?? given;
  if (text.includes(":")) {
    // IPv6 (a host:port is not one): the URL parser knows its forms; a zone
    // (an interface: eth0, eth0.100, br-lan) may follow, written `%25` in a URL.
    const [address, zone, ...more] = text.split("%");
    let parsed: string;
    try {
      parsed = new URL(`http://[${address}]/`).hostname.slice(1, -1);
    } catch {
      throw bad();
    }
    if (more.length > 0 || (zone !== undefined && !/^[\w.-]{1,64}$/.test(zone))) throw bad();
    // The kernel takes a zone only where an address needs one (it was
    // taken, then failed every connection as "not reached").
    if (zone !== undefined && !/^(fe[89ab]|ff)/.test(parsed)) {
      throw new UsageError(
        `${what}: a zone (%${zone}) is for link-local and multicast addresses only (fe80::/10, ` +
          `ff00::/8), got "${given}"`,
      );
    }
    return zone === undefined ? address : `${address}%${zone}`;
  }
  // Digits and dots are an IPv4 address, four numbers of at most 255, no leading
  // zeros (read as octal by some); else a name (256.1.1.1 and 1.2.3 are neither).
  if (/^[\d.]+$/.test(text)) {
    if (!isIpv4(text)) throw bad();
    return text;
  }
  if (text.length > 253 || !/^[A-Za-z0-9_]([\w.-]*[\w.])?$/.test(text)) throw bad();
  return text;
}

/**
 * Parses a positive count or size (a rate too, when not `integer`), naming the
 * flag in the error. Plain decimal digits only: `Number()` would also take
 * `1e3`, `0x10`, ` 5` or `1.0`, and numbers past `Number.MAX_SAFE_INTEGER`,
 * which are no longer exact; a rate may have a decimal fraction (`0.5`).
 */
export function parsePositive(flag: string, text: string, integer = true): number {
  const value = Number(text);
  const digits = integer ? /^\d+$/ : /^\d+(?:\.\d+)?$/;
  if (!digits.test(text) || value <= 0 || value > Number.MAX_SAFE_INTEGER) {
    throw new UsageError(
      integer
        ? `${flag} must be a whole number from 1 to ${Number.MAX_SAFE_INTEGER} in plain digits, got "${text}"`
        : `${flag} must be a positive number up to ${Number.MAX_SAFE_INTEGER} in plain digits (like 100 or 0.5), got "${text}"`,
    );
  }
  return value;
}

/** Longest delay a timer can take (2^31 - 1 ms, about 24.8 days): longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Parses a duration in whole milliseconds, 1 ms to about 24.8 days, naming the flag in the error. */
export function parseMillis(flag: string, text: string, min = 1): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > MAX_TIMER_MS) {
    throw new UsageError(
      `${flag} must be a whole number of milliseconds from ${min} to ${MAX_TIMER_MS}, got "${text}"`,
    );
  }
  return value;
}

/** Checks `--log-level`. */
export function parseLogLevel(text: string): (typeof LOG_LEVELS)[number] {
  if (!(LOG_LEVELS as readonly string[]).includes(text)) {
    throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(", ")}, got "${text}"`);
  }
  return text as (typeof LOG_LEVELS)[number];
}

/**
 * What to do about permissions this process lacks, as one clause for an
 * error line: the deno flags (`--allow-env=A --allow-env=B` merged into
 * `--allow-env=A,B`, since deno keeps one value list per flag), and, given
 * the command's `deno.json` permission set, what to add to it: under
 * `deno task`, words after the task name go to the program, not to deno.
 */
export function grantAdvice(flags: string[], permissionSet?: string): string {
  const values = new Map<string, string[]>();
  for (const flag of flags.flatMap((f) => f.split(" "))) {
    const [name, value] = flag.split("=");
    values.set(name, [...(values.get(name) ?? []), value]);
  }
  const merged = [...values].map(([name, list]) => `${name}=${list.join(",")}`).join(" ");
  if (permissionSet === undefined) return `run with ${merged}`;
  // deno.json expands no $HOME: such a value is named once HOME may be read.
  const additions = [...values]
    .map(([name, list]) => [name, list.filter((value) => !value.includes("$"))] as const)
    .filter(([, list]) => list.length > 0)
    .map(([name, list]) =>
      `${list.join(",")} to permissions.${permissionSet}.${name.replace(/^--allow-/, "")}`
    );
  if (additions.length === 0) return `run with ${merged}`;
  return `run with ${merged}, or add ${additions.join(" and ")} in deno.json`;
}

/**
 * An error's one line, where a permission this process was not given is
 * said with {@linkcode grantAdvice}: Deno's own "run again with the
 * --allow-net flag" names no value, and cannot be acted on under `deno task`.
 */
export function permissionMessage(error: unknown, permissionSet?: string): string {
  const message = errorMessage(error);
  if (!isNotCapable(error)) return message;
  return message.replace(
    /Requires (\w+) access to "([^"]*)"(?:, run again with the --allow-\w+ flag)?/,
    (_, kind, value) =>
      `no ${kind} permission: ${grantAdvice([`--allow-${kind}=${value}`], permissionSet)}`,
  );
}

/** How a command reads the files named on its command line. */
export interface FileArgs {
  /** The command's `deno.json` permission set, for the advice under `deno task`. */
  permissionSet?: string;
  /**
   * Every file the command line names: a missing `--allow-read` is said
   * once for all of them, not one run at a time.
   */
  files?: readonly string[];
}

/**
 * Reads a text file named on the command line. A file that is not there or
 * unreadable is a usage error; a missing `--allow-read` is not the
 * arguments' fault, so it says which flag to add (exit code 1) and, given
 * the command's `deno.json` permission set, what to add to it.
 */
export function readFileArg(what: string, path: string, args: FileArgs = {}): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) {
      const others = [...new Set(args.files)].filter((file) =>
        file !== path &&
        Deno.permissions.querySync({ name: "read", path: file }).state !== "granted"
      );
      throw new Error(
        `no permission to read ${what} ${path}${
          others.length > 0 ? ` (nor ${others.join(", ")})` : ""
        }: ${
          grantAdvice([path, ...others].map((file) => `--allow-read=${file}`), args.permissionSet)
        }`,
      );
    }
    // Deno ends its message with the path ("...: readfile '/x'"), which we named already.
    const reason = errorMessage(error).replace(
      /: \w+ '([^']*)'$/,
      (all, named) => named === path ? "" : all,
    );
    throw new UsageError(`cannot read ${what} ${path}: ${reason}`);
  }
}

/** Largest file a one-line secret or key is read from: a larger one is the wrong file. */
const MAX_LINE_FILE_BYTES = 64 * 1024;

/**
 * The first line of a secret or key file named on the command line (see
 * {@linkcode readFileArg}). A file too large, or not text, is the wrong file
 * (a path mixed up, an archive): a usage error, not a secret made of its
 * first bytes.
 */
export function readFirstLine(what: string, path: string, args: FileArgs = {}): string {
  let size = 0;
  try {
    size = Deno.statSync(path).size;
  } catch {
    // Missing, or no permission: reading it says which, as for any file.
  }
  if (size > MAX_LINE_FILE_BYTES) {
    throw new UsageError(
      `the ${what} ${path} is ${size} bytes, too large for one line: is it the right file?`,
    );
  }
  // Blanks an editor left at the end of the line are no part of a secret: the
  // same key with one and without (the other end's --key) did not match.
  const line = readFileArg(what, path, args).split(/\r?\n/)[0].replace(/\s+$/, "");
  // Decoding put U+FFFD where bytes were not UTF-8; control characters are no secret's either.
  // deno-lint-ignore no-control-regex
  if (/[\uFFFD\x00-\x08\x0E-\x1F\x7F]/.test(line)) {
    throw new UsageError(`the ${what} ${path} is not text: is it the right file?`);
  }
  return line;
}

/** Reads a PEM certificate file named on the command line (`args`: see {@linkcode readFileArg}). */
export function readPemCertificate(what: string, path: string, args: FileArgs = {}): string {
  const pem = readFileArg(what, path, args);
  if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
    throw new UsageError(`${path} holds no PEM certificate`);
  }
  return pem;
}

/**
 * What is wrong with the first certificate of `pem` (the one a TLS server
 * presents) that clients will refuse, in words for a warning at start; none
 * when it looks fine or cannot be parsed (TLS itself says so then). `path`
 * names the file.
 */
export function certificateConcerns(pem: string, path: string): string[] {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch {
    return [];
  }
  const concerns: string[] = [];
  if (cert.ca) {
    concerns.push(
      `${path} is a CA's certificate (CA:TRUE, what "openssl req -x509" alone makes): TLS clients, ` +
        "ours included, refuse it as a server's own; serve a server certificate it signs " +
        "(README: TLS)",
    );
  }
  return concerns;
}

/** Reads a certificate chain and its private key (PEM) named on the command line. */
export function readPemPair(
  certPath: string,
  keyPath: string,
  args: FileArgs = {},
): { cert: string; key: string } {
  const cert = readPemCertificate("certificate file", certPath, args);
  const key = readFileArg("TLS key file", keyPath, args);
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key)) {
    throw new UsageError(`${keyPath} holds no PEM private key`);
  }
  return { cert, key };
}

function _render(record: LogRecord): string {
  const text = record.message.map((p) => typeof p === "string" ? p : String(p)).join("");
  // Session ids are long; people need only enough to tell sessions apart.
  return text.replace(/\b([0-9a-f]{8})[0-9a-f]{24}\b/g, "$1");
}

/** Categories (joined with ".") whose debug and info records are dropped for now: see {@linkcode quietly}. */
const _quieted = new Map<string, number>();

/**
 * Runs `work` with the debug and info records of `category` dropped: for a
 * command that retries something and says so once in its own words, rather
 * than a library line per attempt. Warnings and errors still show.
 */
export async function quietly<T>(category: readonly string[], work: () => Promise<T>): Promise<T> {
  const key = category.join(".");
  _quieted.set(key, (_quieted.get(key) ?? 0) + 1);
  try {
    return await work();
  } finally {
    const left = _quieted.get(key)! - 1;
    if (left === 0) _quieted.delete(key);
    else _quieted.set(key, left);
  }
}

/** Sends `["immortal", ...]` logs to stderr as timestamped lines. */
async function _setupLogging(level: LogLevel): Promise<void> {
  await configure({
    filters: {
      quieted: (record) =>
        !["trace", "debug", "info"].includes(record.level) ||
        !_quieted.has(record.category.join(".")),
    },
    sinks: {
      stderr: (record) =>
        console.error(
          `${new Date(record.timestamp).toISOString()} ${record.level.padEnd(7)} ${
            _render(record)
          }`,
        ),
    },
    loggers: [
      { category: ["immortal"], lowestLevel: level, sinks: ["stderr"], filters: ["quieted"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

/**
 * Warns of each secret given as a flag's value (`flags` maps the flag to the
 * private ways of giving it): any user of the machine can read a command
 * line (`ps`, `/proc`).
 */
export function warnSecretFlags(log: Logger, flags: Record<string, string>): void {
  for (const [flag, instead] of Object.entries(flags)) {
    log.warn(
      "{flag} is on the command line, where any user of this machine can read it (ps); {instead} keeps it private",
      { flag, instead },
    );
  }
}

/** What a command started and keeps up until SIGINT/SIGTERM (or SIGHUP on a terminal). */
export interface Service {
  /** Logged after the signal's name, e.g. "closing the tunnel". */
  readonly stopping: string;
  /** Stops the service cleanly. */
  close(): Promise<void>;
  /** Rejects if the service fails for good after it started (the command then exits 1). */
  readonly failed?: Promise<never>;
}

/** A long-running command: its help text, how it reads its arguments, and how it starts. */
export interface ServiceCommand<C extends { logLevel: LogLevel }> {
  usage: string;
  parse(args: string[]): C | "help";
  /**
   * Starts the service. A start that waits (for a relay, say) gives up when
   * `stopping` aborts, on SIGINT/SIGTERM (or SIGHUP on a terminal): it may then reject with anything,
   * and the command exits 0 as after any clean stop.
   */
  start(config: C, log: Logger, stopping: AbortSignal): Promise<Service>;
}

/**
 * The signals that stop a service cleanly. SIGHUP only on a terminal: there
 * it means the terminal closed, and the default would end the service
 * without a word to its peers. Without one, SIGHUP keeps its meaning to
 * whoever started it: `nohup` ignores it (a handler would undo that), and a
 * service manager may send it for other reasons.
 */
export function stopSignals(onTerminal: boolean): Deno.Signal[] {
  return onTerminal ? ["SIGINT", "SIGTERM", "SIGHUP"] : ["SIGINT", "SIGTERM"];
}

/**
 * Listens for SIGINT/SIGTERM (and SIGHUP on a terminal) from now on. Listening starts before the service
 * does: a signal that arrives while it starts (say, right after it logged
 * that it listens) is then a clean stop, not the default kill.
 */
function _stopSignal(): { signal: Promise<Deno.Signal>; dispose(): void } {
  const stop = Promise.withResolvers<Deno.Signal>();
  const signals = stopSignals(Deno.stdin.isTerminal() || Deno.stderr.isTerminal());
  const handlers = signals.map((signal) => {
    const handler = () => stop.resolve(signal);
    Deno.addSignalListener(signal, handler);
    return handler;
  });
  return {
    signal: stop.promise,
    dispose: () => signals.forEach((s, i) => Deno.removeSignalListener(s, handlers[i])),
  };
}

async function _serve<C extends { logLevel: LogLevel }>(
  args: string[],
  command: ServiceCommand<C>,
): Promise<number> {
  const config = command.parse(args);
  if (config === "help") {
    console.log(command.usage);
    return 0;
  }
  await _setupLogging(config.logLevel);
  const log = getLogger(["immortal", "cli"]);
  const stop = _stopSignal();
  // A signal while the service starts ends its start: a start may wait for
  // a minute (a relay not up yet), and Ctrl-C must not wait with it.
  const starting = new AbortController();
  stop.signal.then(() => starting.abort());
  try {
    let service: Service;
    try {
      service = await command.start(config, log, starting.signal);
    } catch (error) {
      if (!starting.signal.aborted) throw error;
      log.info("{signal}: stopping", { signal: await stop.signal });
      return 0;
    }
    let signal: Deno.Signal;
    try {
      signal = await (service.failed ? Promise.race([stop.signal, service.failed]) : stop.signal);
    } catch (error) {
      await service.close();
      throw error;
    }
    log.info("{signal}: {stopping}", { signal, stopping: service.stopping });
    await service.close();
    return 0;
  } finally {
    stop.dispose();
  }
}

/**
 * Runs a long-running command from parsing to a clean exit on SIGINT/SIGTERM (and SIGHUP on a terminal).
 * Usage errors print one line and exit 2; any other failure prints one line
 * and exits 1 (no stack trace for users).
 */
export async function runService<C extends { logLevel: LogLevel }>(
  args: string[],
  command: ServiceCommand<C>,
): Promise<never> {
  let code: number;
  try {
    code = await _serve(args, command);
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`error: ${error.message}\nRun with --help for usage.`);
      code = 2;
    } else if (error instanceof LoggedError) {
      code = 1;
    } else {
      console.error(`error: ${errorMessage(error)}`);
      code = 1;
    }
  }
  Deno.exit(code);
}
