/**
 * A relay's settings as the relay uses them: {@linkcode RelayOptions} with
 * defaults filled in and ranges checked, once, at construction.
 *
 * @module
 */

import type { RelayOptions } from "./options.ts";

/** A relay's settings with every default filled in. */
export type RelaySettings = Required<Omit<RelayOptions, "secret" | "metricsToken" | "redis">> & {
  secret?: string;
  metricsToken?: string;
  redis?: string;
};

function positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) {
    throw new RangeError(`${name} must be a positive number, got ${value}`);
  }
  return value;
}

/** Fills in defaults and checks ranges; a `RangeError` names a bad setting. */
export function relaySettings(options: RelayOptions = {}): RelaySettings {
  const keepAlive = positive("keepAlive", options.keepAlive ?? 1000);
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
    fadeAfter: positive("fadeAfter", options.fadeAfter ?? keepAlive * 2.5),
    maxSessions: positive("maxSessions", options.maxSessions ?? 10_000),
    maxNodesPerSession: positive("maxNodesPerSession", options.maxNodesPerSession ?? 1000),
    maxMessageBytes: positive("maxMessageBytes", options.maxMessageBytes ?? 65_536),
    maxNicknameLength: positive("maxNicknameLength", options.maxNicknameLength ?? 32),
    rate: positive("rate", options.rate ?? 100),
    authTimeout: positive("authTimeout", options.authTimeout ?? 5000),
    maxQueueBytes: positive("maxQueueBytes", options.maxQueueBytes ?? 1 << 20),
    overflow,
    reclaimWindow: options.reclaimWindow ?? 30_000,
    historyLength: positive("historyLength", options.historyLength ?? 1000),
    historyBytes: positive("historyBytes", options.historyBytes ?? 4 << 20),
    historyAge: positive("historyAge", options.historyAge ?? 120_000),
    chatPage: options.chatPage ?? true,
  };
}

function redisUrl(url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new RangeError(`redis must be a URL like redis://127.0.0.1:6379, got "${url}"`);
  }
  if (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:") {
    throw new RangeError(`redis must be a redis: or rediss: URL, got "${url}"`);
  }
  return url;
}
