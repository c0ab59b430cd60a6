/**
 * A relay's settings as the relay uses them: {@linkcode RelayOptions} with
 * defaults filled in and ranges checked, once, at construction.
 *
 * @module
 */

import { describeValue, MAX_TIMER_MS } from "../_util.ts";
import type { RelayOptions } from "./options.ts";
import { ipAddresses } from "../link/_forwarded_for.ts";

/** The smallest `maxMessageBytes`: a hello must fit, or every join is refused as too large. */
export const MIN_MESSAGE_BYTES = 512;

/** A relay's settings with every default filled in. */
export type RelaySettings = Required<Omit<RelayOptions, "secret" | "metricsToken" | "redis">> & {
  secret?: string;
  metricsToken?: string;
  redis?: string;
};

function positive(name: string, value: number): number {
  if (typeof value !== "number") {
    throw new TypeError(`${name} must be a number, got ${describeValue(value)}`);
  }
  if (!Number.isFinite(value) || value <= 0) {
    throw new RangeError(`${name} must be a positive number, got ${value}`);
  }
  return value;
}

/** A duration in ms that drives a timer: positive, and short enough for one. */
export function duration(name: string, value: number): number {
  positive(name, value);
  if (value > MAX_TIMER_MS) {
    throw new RangeError(`${name} must be at most ${MAX_TIMER_MS} ms, got ${value}`);
  }
  return value;
}

/**
 * A positive `value` of at least `min`: below, the setting cannot work (a
 * message limit under a hello's size refuses every join as too large).
 */
function atLeast(name: string, value: number, min: number): number {
  positive(name, value);
  if (value < min) throw new RangeError(`${name} must be at least ${min}, got ${value}`);
  return value;
}

/**
 * The lowest `rate`, messages a second: a rate under 0.5 a second gives
 * bursts (twice the rate) under one message, and nothing would ever be taken.
 */
export const MIN_RATE = 0.5;

function atLeastHalf(rate: number): number {
  if (rate < MIN_RATE) {
    throw new RangeError(`rate must be at least 0.5 messages a second, got ${rate}`);
  }
  return rate;
}

/**
 * Keep-alive sweeps per `keepAlive` period. Each node is checked once a
 * period at its own phase (random, set at its join), so the pings of nodes
 * that joined together go out over the period's sweeps, a twentieth at a
 * time, not in one burst whose answers all come back at once.
 */
const SWEEPS_PER_PERIOD = 20;

/** How often the relay sweeps its nodes for keep-alive, ms (see SWEEPS_PER_PERIOD). */
export function sweepEvery(keepAlive: number): number {
  return Math.min(250, Math.max(50, keepAlive / SWEEPS_PER_PERIOD));
}

/** The longest `keepAlive` whose derived fade time (2.5 times it) a timer can hold. */
export const MAX_KEEP_ALIVE_MS = Math.floor(MAX_TIMER_MS / 2.5);

/**
 * `fadeAfter` as given, or 2.5 times `keepAlive`: named as the setting
 * given when too long (a keepAlive of 900,000,000 ms failed as a fadeAfter
 * nobody set).
 */
function fadeAfter(keepAlive: number, given: number | undefined): number {
  if (given !== undefined) {
    duration("fadeAfter", given);
    // A quiet node is pinged a keep-alive after its last word, at the next
    // sweep, and its answer must be in before the sweep after: shorter, a
    // node that stays quiet on purpose faded before its ping's answer.
    const least = keepAlive + 2 * sweepEvery(keepAlive);
    if (given <= least) {
      throw new RangeError(
        `fadeAfter (${given} ms) must be longer than keepAlive (${keepAlive} ms) and two ` +
          `keep-alive sweeps (${least} ms)`,
      );
    }
    return given;
  }
  if (keepAlive > MAX_KEEP_ALIVE_MS) {
    throw new RangeError(
      `keepAlive must be at most ${MAX_KEEP_ALIVE_MS} ms (a node is gone 2.5 times it after ` +
        `its last word), got ${keepAlive}`,
    );
  }
  return keepAlive * 2.5;
}

/** Fills in defaults and checks ranges; a `RangeError` names a bad setting. */
export function relaySettings(options: RelayOptions = {}): RelaySettings {
  const keepAlive = duration("keepAlive", options.keepAlive ?? 10_000);
  const overflow = options.overflow ?? "disconnect";
  if (overflow !== "disconnect" && overflow !== "drop") {
    throw new RangeError(`overflow must be "disconnect" or "drop", got ${overflow}`);
  }
  if (options.secret !== undefined && options.secret.length === 0) {
    throw new RangeError("the relay secret is empty");
  }
  if (options.metricsToken !== undefined && options.metricsToken.length === 0) {
    throw new RangeError("the metrics token is empty");
  }
  return {
    secret: options.secret,
    metricsToken: options.metricsToken,
    redis: redisUrl(options.redis),
    keepAlive,
    fadeAfter: fadeAfter(keepAlive, options.fadeAfter),
    maxSessions: positive("maxSessions", options.maxSessions ?? 10_000),
    maxNodesPerSession: positive("maxNodesPerSession", options.maxNodesPerSession ?? 1000),
    maxMessageBytes: atLeast(
      "maxMessageBytes",
      options.maxMessageBytes ?? 65_536,
      MIN_MESSAGE_BYTES,
    ),
    maxNicknameLength: positive("maxNicknameLength", options.maxNicknameLength ?? 32),
    rate: atLeastHalf(positive("rate", options.rate ?? 100)),
    authTimeout: duration("authTimeout", options.authTimeout ?? 5000),
    maxQueueBytes: positive("maxQueueBytes", options.maxQueueBytes ?? 1 << 20),
    overflow,
    reclaimWindow: options.reclaimWindow ?? 30_000,
    // 0 turns it off.
    rejoinGrace: options.rejoinGrace === 0
      ? 0
      : duration("rejoinGrace", options.rejoinGrace ?? 10_000),
    historyLength: positive("historyLength", options.historyLength ?? 1000),
    historyBytes: positive("historyBytes", options.historyBytes ?? 4 << 20),
    historyAge: duration("historyAge", options.historyAge ?? 120_000),
    totalHistoryBytes: positive("totalHistoryBytes", options.totalHistoryBytes ?? 256 << 20),
    maxForwardedBytes: positive("maxForwardedBytes", options.maxForwardedBytes ?? 64 << 20),
    redisTimeout: duration("redisTimeout", options.redisTimeout ?? 10_000),
    chatPage: options.chatPage ?? true,
    trustedProxies: ipAddresses("trustedProxies", options.trustedProxies ?? []),
  };
}

/**
 * A Redis URL checked whole, here rather than by the Redis client, which
 * throws a stack trace for a path that is no database number and says
 * nothing of a missing host. `name` is what the user gave it as.
 */
export function redisUrl(url: string | undefined, name = "redis"): string | undefined {
  if (url === undefined) return undefined;
  const like = `a URL like redis://127.0.0.1:6379 or rediss://:password@host:6380/2`;
  // Said back without its password: error lines end up in logs.
  const shown = `"${redactedUrl(url)}"`;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // The URL parser also refuses a port past 65535.
    throw new RangeError(`${name} must be ${like}, got ${shown}`);
  }
  if (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:") {
    throw new RangeError(`${name} must be ${like} (redis: or rediss:), got ${shown}`);
  }
  if (parsed.hostname === "") throw new RangeError(`${name} names no host: ${shown}`);
  if (!/^(\/\d*)?$/.test(parsed.pathname)) {
    throw new RangeError(
      // The whole URL, redacted: a password holding "/" put its tail in the path.
      `${name}'s path must be a database number (redis://host:6379/2), got ${shown}`,
    );
  }
  if (parsed.search !== "" || parsed.hash !== "") {
    throw new RangeError(`${name} takes no query or fragment, got ${shown}`);
  }
  return url;
}

/**
 * `url` without its password, for logs and errors: what follows the first
 * `:` after the scheme, up to the last `@`, is masked. Secrecy first: a
 * password may hold `@`, `/`, `?` or `#` (breaking the URL), so an `@`
 * further on (in a path) is taken for the password's end too, and whatever
 * comes before it is masked with it (`https://host:8443/@team`,
 * `https://user@host/a:***@c`). Without an `@`, or a `:` before the last,
 * there is no password to hide. The text is first cleaned as the URL parser
 * cleans it (tabs and newlines dropped, spaces and controls trimmed), so
 * that a password the parser would find is found here too.
 */
export function redactedUrl(url: string): string {
  // (And any Unicode space, a BOM included, which the parser refuses: its error shows the text.)
  // deno-lint-ignore no-control-regex
  const text = url.replace(/[\t\n\r]/g, "").replace(/^[\x00-\x20]+|[\x00-\x20]+$/g, "").trim();
  return text.replace(
    // Slashes after the scheme as the URL parser takes them ("redis:/" and "redis:" parse too).
    /^([a-z][\w+.-]*:\/*)([\s\S]*)@/i,
    (_, scheme: string, userinfo: string) => {
      const colon = userinfo.indexOf(":");
      return colon < 0 ? `${scheme}${userinfo}@` : `${scheme}${userinfo.slice(0, colon)}:***@`;
    },
  );
}
