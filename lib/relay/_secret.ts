/**
 * Secrets and join tokens: the relay secret is compared in constant time, and
 * join tokens are unguessable, because both decide who may act as whom.
 *
 * @module
 */

import { base64url } from "../_util.ts";

/** Compares secrets in time independent of where they differ. */
export function secretsEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/** A fresh join token: 128 random bits, base64url without padding. */
export function newJoinToken(): string {
  return base64url(crypto.getRandomValues(new Uint8Array(16)));
}
