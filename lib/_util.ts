/**
 * The few helpers every layer needs: an abortable delay, reconnect backoff,
 * an error's message, and port validation. One copy here, used everywhere.
 *
 * @module
 */

/**
 * Waits `ms` milliseconds. Resolves `true` when the time is up, `false` at
 * once when `signal` aborts (before or during the wait), so a loop that sleeps
 * between retries stops as soon as its owner is closed. Never rejects.
 */
export function delay(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * `work`, or a rejection with `signal`'s reason the moment it aborts, so a
 * deadline holds even over work that ignores the signal it was given (a
 * dialer passed in by a user, say). A value that arrives after the abort
 * has no taker: `discard` gets it (a link is closed, not leaked).
 */
export function untilAborted<T>(
  work: Promise<T>,
  signal: AbortSignal,
  discard: (late: T) => void,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    work.then((value) => {
      signal.removeEventListener("abort", onAbort);
      if (signal.aborted) discard(value);
      else resolve(value);
    }, (error) => {
      signal.removeEventListener("abort", onAbort);
      reject(error);
    });
  });
}

/**
 * `ms` scaled by a random factor in [0.5, 1) (`random` picks it; tests pass a
 * fixed one). Spreads the retries of many clients that lost the same server
 * at the same moment.
 */
export function jitter(ms: number, random: () => number = Math.random): number {
  return ms * (0.5 + random() / 2);
}

/**
 * Capped exponential backoff with jitter: the delay before failed attempt
 * number `attempt` (0-based) is retried. 0 for the first (a link that just
 * broke often comes straight back), then `initial * 2^(n-1)` capped at `max`,
 * {@linkcode jitter}ed.
 */
export function backoffDelay(
  attempt: number,
  initial: number,
  max: number,
  random: () => number = Math.random,
): number {
  if (attempt <= 0) return 0;
  return jitter(Math.min(max, initial * 2 ** Math.min(attempt - 1, 30)), random);
}

/** The longest delay a timer takes (2^31 - 1 ms): a longer one fires at once (Deno warns, once). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The pause after `failures` consecutive failed `accept` calls (EMFILE and
 * friends). The connection waits in the kernel's queue, so accepting again
 * at once fails at once, for ever: pause (10 ms, growing to 1 s), keep
 * serving what is open, and accept again as soon as descriptors free up.
 */
export function acceptBackoff(failures: number): number {
  return backoffDelay(failures, 10, 1000);
}

/**
 * Whether `error`, or one of its causes, is Deno refusing an access the
 * process was not granted (`NotCapable`: a missing `--allow-net`, say).
 * Not `PermissionDenied`: that is the system's EACCES/EPERM (a firewall
 * rule), which may pass.
 */
export function isNotCapable(error: unknown): boolean {
  // Errors of ours wrap the platform's as their cause (an unreachable server, say).
  for (let e = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    if (e instanceof Deno.errors.NotCapable) return true;
  }
  return false;
}

/** The message of anything thrown: an `Error`'s message, or the value as text. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * `value` as an error message shows it: numbers as they are, anything else
 * with its type, so that `"1000"` (a string) is not shown as the number 1000
 * it looks like. Long strings are cut: a message is not a dump.
 */
export function describeValue(value: unknown): string {
  switch (typeof value) {
    case "number":
    case "undefined":
      return String(value);
    case "string": {
      const shown = value.length > 40 ? `${value.slice(0, 40)}...` : value;
      return `${JSON.stringify(shown)} (a string)`;
    }
    case "boolean":
      return `${value} (a boolean)`;
    case "bigint":
      return `${value}n (a bigint)`;
    case "symbol":
      return `${String(value)} (a symbol)`;
    case "function":
      return "a function";
    default:
      if (value === null) return "null";
      return Array.isArray(value) ? "an array" : "an object";
  }
}

/**
 * Checks a TCP port number and returns it; a `RangeError` names the setting.
 * `allowZero` admits 0 ("pick a free port", for listeners).
 */
export function checkPort(name: string, port: unknown, allowZero = false): number {
  const min = allowZero ? 0 : 1;
  if (typeof port !== "number") {
    throw new TypeError(`${name} must be a number, got ${describeValue(port)}`);
  }
  if (!Number.isInteger(port) || port < min || port > 65535) {
    throw new RangeError(`${name} must be an integer in ${min}..65535, got ${port}`);
  }
  return port;
}

/**
 * Parses a port number written as text (a flag, an environment variable, a
 * config line), or returns `null` when it is not one. Callers word the error.
 */
export function parsePortText(text: string, allowZero = false): number | null {
  if (!/^\d{1,5}$/.test(text)) return null;
  const port = Number(text);
  return port >= (allowZero ? 0 : 1) && port <= 65535 ? port : null;
}

/** `bytes` in base64url (RFC 4648 5), without padding. */
export function base64url(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replace(
    /[+/=]/g,
    (c) => c === "+" ? "-" : c === "/" ? "_" : "",
  );
}

/** The bytes of `parts`, one after another, in one new buffer. */
export function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Characters that would let a peer's text break a log line or drive a terminal. */
const UNPRINTABLE =
  // deno-lint-ignore no-control-regex
  /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/g;

/**
 * Text a peer chose (a refusal's or an abort's reason), as an error message
 * and a log line may carry it: its control characters (line breaks, escape
 * sequences, bidi overrides) written out as `\uXXXX`, so it cannot forge a
 * log line of its own or colour a terminal.
 */
export function peerText(text: string): string {
  return text.replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** Limits of {@linkcode collectBytes}. */
export interface CollectOptions {
  /** Most bytes taken: past them, `tooLarge()` is thrown. */
  max: number;
  /** The error for a body past `max`. */
  tooLarge: () => Error;
  /** Stops reading: the body is cancelled, and the signal's reason thrown. */
  signal?: AbortSignal;
  /** Told of each piece's size before it is kept; what it throws stops the reading (the body cancelled). */
  onPiece?: (bytes: number) => void;
}

/**
 * A body's bytes, whole. Pieces are copied into one buffer as they come,
 * which doubles as it fills: a chunked body of one-byte chunks would
 * otherwise hold an array object per byte (some 200 bytes of memory per
 * byte sent) until its end. A body that comes in one piece (our server reads
 * a declared length whole) is that piece, not a copy.
 */
export async function collectBytes(
  body: ReadableStream<Uint8Array> | null,
  { max, tooLarge, signal, onPiece }: CollectOptions,
): Promise<Uint8Array<ArrayBuffer>> {
  let only: Uint8Array | null = null;
  let buffer: Uint8Array<ArrayBuffer> | null = null;
  let size = 0;
  if (body === null) return new Uint8Array(0);
  const reader = body.getReader();
  // A body that stalls holds what it sent: cancelled, its read ends at once.
  const stop = () => reader.cancel().catch(() => {});
  if (signal?.aborted) {
    await stop();
    reader.releaseLock();
    throw signal.reason;
  }
  signal?.addEventListener("abort", stop, { once: true });
  try {
    for (;;) {
      signal?.throwIfAborted();
      const { value: piece, done } = await reader.read();
      signal?.throwIfAborted();
      if (done) break;
      if (size + piece.length > max) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      try {
        onPiece?.(piece.length);
      } catch (error) {
        await reader.cancel().catch(() => {});
        throw error;
      }
      if (only === null && buffer === null) {
        only = piece;
        size = piece.length;
        continue;
      }
      if (buffer === null || size + piece.length > buffer.length) {
        const held: Uint8Array = buffer === null ? only! : buffer.subarray(0, size);
        const room = Math.max(16 * 1024, 2 * (buffer === null ? 0 : buffer.length));
        const grown: Uint8Array<ArrayBuffer> = new Uint8Array(
          Math.min(max, Math.max(room, size + piece.length)),
        );
        grown.set(held);
        buffer = grown;
        only = null;
      }
      buffer.set(piece, size);
      size += piece.length;
    }
  } finally {
    signal?.removeEventListener("abort", stop);
    reader.releaseLock();
  }
  // Exactly its size: a body may be kept (an HTTP link's queue counts its
  // length), and a view would hold up to twice that, or 16 KiB for two bytes.
  if (buffer !== null) return size === buffer.length ? buffer : buffer.slice(0, size);
  if (only === null) return new Uint8Array(0);
  return only.buffer instanceof ArrayBuffer ? only as Uint8Array<ArrayBuffer> : only.slice();
}

/** The most of a refusal's body {@linkcode refusalText} reads: a reason is a line or two. */
export const MAX_REFUSAL_BYTES = 64 * 1024;

/**
 * The text of a response that refused us (a status other than the one
 * wanted), for its reason: at most {@linkcode MAX_REFUSAL_BYTES} of it, the
 * rest cancelled unread, and no read past `signal`. A peer that answered a
 * refusal with an endless body held a client's memory without bound, and its
 * read outlived the dial that gave up on it.
 */
export async function refusalText(response: Response, signal?: AbortSignal): Promise<string> {
  const body = response.body;
  if (body === null) return "";
  const reader = body.getReader();
  const stop = () => reader.cancel().catch(() => {});
  signal?.addEventListener("abort", stop, { once: true });
  const kept = new Uint8Array(MAX_REFUSAL_BYTES);
  let size = 0;
  try {
    while (size < kept.length && !signal?.aborted) {
      const { value, done } = await reader.read();
      if (done) break;
      const taken = Math.min(value.length, kept.length - size);
      kept.set(value.subarray(0, taken), size);
      size += taken;
    }
  } catch {
    // A body cut short: its reason is what came.
  } finally {
    signal?.removeEventListener("abort", stop);
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
  return new TextDecoder().decode(kept.subarray(0, size));
}

/**
 * `Deno.listen` whose errors name the address: "cannot listen on
 * 0.0.0.0:2000: Address already in use (os error 98)", of the same class
 * (`Deno.errors.AddrInUse`, ...) with the original as `cause`.
 */
export function listenTcp(
  options: Deno.TcpListenOptions & { reusePort?: boolean },
): Deno.TcpListener {
  try {
    return Deno.listen(options);
  } catch (error) {
    throw namedAddressError(error, options.hostname ?? "0.0.0.0", options.port ?? 0);
  }
}

/** `hostname:port`, an IPv6 address in brackets (`[::1]:4000`): how logs, messages and URLs write it. */
export function hostPort(hostname: string, port: number): string {
  return hostname.includes(":") && !hostname.startsWith("[")
    ? `[${hostname}]:${port}`
    : `${hostname}:${port}`;
}

/** `error` of listening at `hostname:port`, its message prefixed with that address. */
export function namedAddressError(error: unknown, hostname: string, port: number): Error {
  const where = hostPort(hostname, port);
  if (!(error instanceof Error)) return new Error(`cannot listen on ${where}: ${error}`);
  const message = `cannot listen on ${where}: ${error.message}`;
  const Kind = error.constructor as new (message: string, options?: ErrorOptions) => Error;
  try {
    return new Kind(message, { cause: error });
  } catch {
    return new Error(message, { cause: error });
  }
}

/**
 * Checks a certificate and key before anything listens: a Deno HTTP client
 * parses them with the same checks (and messages) as `Deno.listenTls`,
 * synchronously and without any permission. Throws a `TypeError` in our words.
 */
export function checkTlsPair(cert: string, key: string): void {
  // Deno takes a missing one as no client certificate at all: a listener
  // would start and fail every handshake (an unset environment variable, say).
  for (const [name, pem] of [["certificate", cert], ["key", key]]) {
    if (typeof pem !== "string" || pem.trim() === "") {
      const got = typeof pem === "string" ? "an empty one" : `a value of type ${typeof pem}`;
      throw new TypeError(`the TLS ${name} is missing: give its PEM text, got ${got}`);
    }
  }
  try {
    Deno.createHttpClient({ cert, key }).close();
  } catch (error) {
    throw new TypeError(tlsPairProblem(errorMessage(error)), { cause: error });
  }
}

/**
 * What a failed TLS handshake (as the platform words it) says for sure:
 * `wrong-name` (the peer's certificate is for another name), `untrusted`
 * (nobody we trust signed it), `not-tls` (an answer that is not TLS, or the
 * `protocol_version` alert our plain servers send to a TLS client),
 * `refused` (a TLS server sent another alert: it wants a client
 * certificate, shares no cipher, ...), `ca-as-server` (the server shows a CA
 * certificate as its own, which rustls refuses even from a CA we trust: what
 * a lone `openssl req -x509` makes), or nothing certain (an end of file or a
 * reset may be a server shedding load).
 */
export function tlsFailureKind(
  said: string,
): "wrong-name" | "untrusted" | "not-tls" | "refused" | "ca-as-server" | null {
  if (/NotValidForName|not valid for name/i.test(said)) return "wrong-name";
  if (/CaUsedAsEndEntity/i.test(said)) return "ca-as-server";
  // Alerts first: "CertificateRequired" and "BadCertificate" are refusals, not our distrust.
  if (/alert/i.test(said)) return /ProtocolVersion/i.test(said) ? "not-tls" : "refused";
  if (/certificate|UnknownIssuer|Expired/i.test(said)) return "untrusted";
  if (/corrupt message|InvalidContentType|wrong version/i.test(said)) return "not-tls";
  return null;
}

/**
 * Whether `text` is an IPv4 address in dotted form: four numbers of at most
 * 255, without leading zeros (some read those as octal: `010` is 8).
 */
export function isIpv4(text: string): boolean {
  const octets = text.split(".");
  return octets.length === 4 &&
    octets.every((octet) => /^(0|[1-9]\d{0,2})$/.test(octet) && Number(octet) <= 255);
}

/** What to do about a `ca-as-server` certificate, for every error that meets one. */
export const CA_AS_SERVER_ADVICE =
  "it is a CA certificate, which TLS does not take as a server's: " +
  "serve one that CA signed, for the server's name (README, TLS)";

/** A TLS certificate/key problem as Deno words it, in ours. */
function tlsPairProblem(said: string): string {
  if (/KeyMismatch|keys may not be consistent/i.test(said)) {
    return "the TLS key does not belong to the certificate (KeyMismatch)";
  }
  if (/key/i.test(said)) return `the TLS key is unusable: ${said}`;
  return `the TLS certificate is unusable: ${said}`;
}

/** The innermost message of `error` (Deno's fetch puts the useful one in `cause`). */
export function innermostMessage(error: unknown): string {
  let current = error;
  while (current instanceof Error && current.cause !== undefined) current = current.cause;
  return current instanceof Error ? current.message : String(current);
}
