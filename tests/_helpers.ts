// Shared test helpers: deterministic data, hashing, waiting on events, log capture.
import { createHash } from "node:crypto";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import type { ImmortalConn } from "../mod.ts";

/** Deterministic pseudo-random bytes (xorshift32), fast enough for hundreds of MiB. */
export function* pattern(
  seed: number,
  size: number,
  chunkSize = 256 * 1024,
): Generator<Uint8Array> {
  let x = (seed | 0) || 0x9e3779b9;
  for (let sent = 0; sent < size; sent += chunkSize) {
    const n = Math.min(chunkSize, size - sent);
    const words = new Uint32Array(Math.ceil(n / 4));
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x;
    }
    yield new Uint8Array(words.buffer, 0, n);
  }
}

/** Writes `size` pattern bytes, then half-closes; resolves to their SHA-256 (hex). */
export async function sendPattern(
  conn: Pick<ImmortalConn, "write" | "closeWrite">,
  seed: number,
  size: number,
): Promise<string> {
  const hash = createHash("sha256");
  for (const chunk of pattern(seed, size)) {
    hash.update(chunk);
    await conn.write(chunk);
  }
  await conn.closeWrite();
  return hash.digest("hex");
}

/** Reads to end of stream (any `read`-shaped conn); resolves to the byte count and SHA-256 (hex). */
export async function receiveAll(
  conn: { read(buffer: Uint8Array): Promise<number | null> },
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(256 * 1024);
  let bytes = 0;
  for (;;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    hash.update(buffer.subarray(0, n));
    bytes += n;
  }
  return { bytes, sha256: hash.digest("hex") };
}

/** SHA-256 (hex) of the pattern, without sending it. */
export function patternHash(seed: number, size: number): string {
  const hash = createHash("sha256");
  for (const chunk of pattern(seed, size)) hash.update(chunk);
  return hash.digest("hex");
}

/** Resolves with the next event of `type` on `target`, or rejects after `timeoutMs`. */
export function nextEvent<E extends Event>(
  target: EventTarget,
  type: string,
  timeoutMs = 10_000,
): Promise<E> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(type, on);
      reject(new Error(`no ${type} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (event: Event) => {
      clearTimeout(timer);
      target.removeEventListener(type, on);
      resolve(event as E);
    };
    target.addEventListener(type, on);
  });
}

/** Rejects if `promise` takes longer than `ms`; the timer never outlives the call. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Captures LogTape records of the `immortal` category while `fn` runs. */
export async function withLogs<T>(fn: (records: LogRecord[]) => Promise<T>): Promise<T> {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { capture: (record) => records.push(record) },
    loggers: [
      { category: ["immortal"], lowestLevel: "debug", sinks: ["capture"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
    ],
  });
  try {
    return await fn(records);
  } finally {
    await reset();
  }
}

/**
 * How many events matching `pattern` the log lines tell of, where a
 * `LogLimiter` said some at once and counted the rest ("3 more in the last
 * 10 s; the last: …").
 */
export function eventsLogged(lines: string[], pattern: RegExp): { said: number; total: number } {
  let said = 0;
  let total = 0;
  for (const line of lines) {
    if (!pattern.test(line)) continue;
    const more = line.match(/^([\d,]+) more in the last \d+ s; the last: /);
    if (more === null) said++;
    total += more === null ? 1 : Number(more[1].replaceAll(",", ""));
  }
  return { said, total };
}

/** A record's message with its properties filled in. */
export function renderRecord(record: LogRecord): string {
  return record.message.map((part) => typeof part === "string" ? part : String(part)).join("");
}

/**
 * Polls `condition` (which may ask something, a server say) every `everyMs`
 * until it holds; rejects after `timeoutMs`. Only for states the code under
 * test announces by no event.
 */
export async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 30_000,
  everyMs = 10,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`${what}: not so within ${timeoutMs} ms`);
    await delay(everyMs);
  }
}

/**
 * Measures how late timers run: `max` is the longest gap between ticks of an
 * `everyMs` interval beyond `everyMs` itself, i.e. the longest time the event
 * loop (or the whole process, on a busy machine) could not run a due timer.
 * A bound on how soon a timer-driven check of the code under test fires must
 * allow for it, or the test measures the machine's load, not the code.
 */
export function watchTimerLateness(everyMs = 4): { readonly max: number } & Disposable {
  let last = performance.now();
  let max = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    max = Math.max(max, now - last - everyMs);
    last = now;
  }, everyMs);
  return {
    get max() {
      return max;
    },
    [Symbol.dispose]: () => clearInterval(timer),
  };
}

/** Waits `ms` (only where a test needs real time to pass, never to wait for an event). */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A loopback port that was free a moment ago (for child processes that must bind it themselves). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}
