/**
 * Relay settings from the environment and from `immortal-relay.properties`
 * files, in the spirit of the old `tcpjlib.properties`.
 *
 * Precedence, highest first: what the program passes (flags), environment
 * variables (`IMMORTAL_RELAY_URL`, `IMMORTAL_RELAY_SECRET`,
 * `IMMORTAL_RELAY_HOSTNAME`, `IMMORTAL_RELAY_PORT`), `immortal-relay.properties`
 * in the working directory, then the same file in the home directory.
 *
 * ```properties
 * # immortal-relay.properties
 * url = https://relay.example
 * secret = correct horse battery staple
 * # for the relay itself
 * hostname = 0.0.0.0
 * port = 8080
 * ```
 *
 * @module
 */

import { errorMessage, parsePortText } from "../_util.ts";

/** Relay settings as found; every field is optional. */
export interface RelayConfig {
  /** Where nodes find the relay. */
  url?: string;
  /** The relay secret. */
  secret?: string;
  /** Where the relay listens. */
  hostname?: string;
  /** The relay's port. */
  port?: number;
  /** Where each setting came from, for logs: e.g. `{ secret: "env IMMORTAL_RELAY_SECRET" }`. */
  sources: Partial<Record<"url" | "secret" | "hostname" | "port", string>>;
  /**
   * The url set in the same place as the secret (the environment, or the
   * same file), if one is: the relay that secret is for. `url` may come from
   * elsewhere (a variable over a file's line), and a secret is a bearer
   * credential, for its own relay only.
   */
  secretUrl?: string;
  /**
   * Places not looked at for lack of permission, each with the flag that
   * would let this process look: e.g. `{ place: "env IMMORTAL_RELAY_SECRET",
   * permission: "--allow-env=IMMORTAL_RELAY_SECRET" }`. A secret may be
   * there: say so rather than claim none was set.
   */
  unread: { place: string; permission: string }[];
}

/** Where {@linkcode loadRelayConfig} looks. */
export interface LoadRelayConfigOptions {
  /** Folder searched first. Default: the working directory. */
  cwd?: string;
  /** Folder searched second. Default: `$HOME`. */
  home?: string;
  /** Environment to read. Default: `Deno.env` (only where permission was granted). */
  env?: Record<string, string | undefined>;
  /**
   * Settings the program has already (from its flags): neither taken nor
   * checked here, so a wrong value in a place they override stops nothing.
   */
  given?: readonly ("url" | "secret" | "hostname" | "port")[];
}

/** Name of the configuration file. */
export const RELAY_CONFIG_FILE = "immortal-relay.properties";
const KEYS = ["url", "secret", "hostname", "port"] as const;

/**
 * Reads relay settings from the environment and configuration files. Files
 * and variables this process has no permission for are skipped without a
 * prompt, and listed in `unread`. A malformed file or port throws an `Error`
 * naming the file and line. An empty variable counts as unset, except
 * `IMMORTAL_RELAY_SECRET`: set to nothing, it gives `secret: ""`, as a
 * `secret =` line does, for the caller to refuse.
 *
 * @example Settings from an explicit environment
 * ```ts
 * import { loadRelayConfig } from "@immortal/sockets/relay";
 * import assert from "node:assert/strict";
 *
 * const config = loadRelayConfig({
 *   env: { IMMORTAL_RELAY_URL: "http://127.0.0.1:8080", IMMORTAL_RELAY_PORT: "8080" },
 * });
 * // The environment wins over any immortal-relay.properties file.
 * assert.equal(config.url, "http://127.0.0.1:8080");
 * assert.equal(config.port, 8080);
 * assert.equal(config.sources.port, "env IMMORTAL_RELAY_PORT");
 * assert.throws(() => loadRelayConfig({ env: { IMMORTAL_RELAY_PORT: "70000" } }), /port must be/);
 * ```
 */
export function loadRelayConfig(options: LoadRelayConfigOptions = {}): RelayConfig {
  const config: RelayConfig = { sources: {}, unread: [] };
  const given = new Set(options.given ?? []);
  // The url of each place (the environment, a file), set there or not.
  const urls = new Map<string, string>();
  let secretPlace: string | undefined;
  const set = (
    key: (typeof KEYS)[number],
    value: string,
    source: string,
    place: string,
  ) => {
    if (key === "url") urls.set(place, value);
    // The program's own, or a higher source's: not ours to take, nor to check.
    if (given.has(key) || config.sources[key] !== undefined) return;
    if (key === "secret") secretPlace = place;
    if (key === "port") {
      const port = parsePortText(value, true);
      if (port === null) throw new Error(`${source}: port must be 0-65535, got "${value}"`);
      config.port = port;
    } else {
      config[key] = value;
    }
    config.sources[key] = source;
  };
  const env = options.env ?? grantedEnv(config.unread);
  for (const key of KEYS) {
    const name = `IMMORTAL_RELAY_${key.toUpperCase()}`;
    const value = env[name];
    // An empty variable is no setting, except the secret: one set to nothing (a
    // service's IMMORTAL_RELAY_SECRET=$UNSET) is kept, empty, for the caller to
    // refuse as it refuses "secret =", never read as no secret and an open relay.
    if (value !== undefined && (value !== "" || key === "secret")) {
      set(key, value, `env ${name}`, "env");
    }
  }
  const home = options.home ?? grantedEnv([]).HOME;
  const cwd = options.cwd ?? workingDirectory();
  if (cwd === undefined) {
    const place = `./${RELAY_CONFIG_FILE}`;
    config.unread.push({ place, permission: `--allow-read=${place}` });
  }
  if (home === undefined && options.home === undefined) {
    config.unread.push({
      place: `~/${RELAY_CONFIG_FILE}`,
      permission: `--allow-env=HOME --allow-read=$HOME/${RELAY_CONFIG_FILE}`,
    });
  }
  for (const dir of [cwd, home]) {
    if (!dir) continue;
    const path = `${dir.replace(/\/$/, "")}/${RELAY_CONFIG_FILE}`;
    const text = readIfAllowed(path, config.unread);
    if (text === null) continue;
    // A key set twice in one file: the last line wins (as in Java's
    // .properties, and as someone who adds a line to change a value expects).
    const lines = new Map<(typeof KEYS)[number], [value: string, lineNo: number]>();
    for (const [lineNo, line] of text.split(/\r?\n/).entries()) {
      const trimmed = line.trim();
      if (trimmed === "" || trimmed.startsWith("#") || trimmed.startsWith("!")) continue;
      const match = /^([\w.-]+)\s*[=:]\s*(.*)$/.exec(trimmed);
      if (!match) throw new Error(`${path}:${lineNo + 1}: expected "key = value"`);
      const key = match[1].replace(/^relay\./, "");
      if (!(KEYS as readonly string[]).includes(key)) {
        throw new Error(
          `${path}:${lineNo + 1}: unknown key "${match[1]}" (use ${KEYS.join(", ")})`,
        );
      }
      lines.set(key as (typeof KEYS)[number], [match[2], lineNo + 1]);
    }
    for (const [key, [value, lineNo]] of lines) set(key, value, `${path}:${lineNo}`, path);
  }
  const secretUrl = secretPlace === undefined ? undefined : urls.get(secretPlace);
  if (secretUrl !== undefined) config.secretUrl = secretUrl;
  return config;
}

/** The variables this process may read; those it may not go to `unread`. */
function grantedEnv(unread: RelayConfig["unread"]): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const name of [...KEYS.map((k) => `IMMORTAL_RELAY_${k.toUpperCase()}`), "HOME"]) {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state === "granted") {
      out[name] = Deno.env.get(name);
    } else if (name !== "HOME") {
      unread.push({ place: `env ${name}`, permission: `--allow-env=${name}` });
    }
  }
  return out;
}

function workingDirectory(): string | undefined {
  try {
    return Deno.cwd();
  } catch {
    return undefined; // no read permission for it
  }
}

function readIfAllowed(path: string, unread: RelayConfig["unread"]): string | null {
  if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") {
    unread.push({ place: path, permission: `--allow-read=${path}` });
    return null;
  }
  try {
    return Deno.readTextFileSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw new Error(`cannot read ${path}: ${errorMessage(error)}`);
  }
}
