import assert from "node:assert/strict";
import { SendWindow } from "./_send_window.ts";

const MiB = 1 << 20;

/** Where a simulated transfer is; a second run goes on from where the first ended. */
interface Transfer {
  now: number;
  sent: number;
  acked: number;
  arrived: number;
  consumed: number;
  inFlight: { position: number; at: number }[];
  acks: { position: number; at: number }[];
}

function newTransfer(): Transfer {
  return { now: 0, sent: 0, acked: 0, arrived: 0, consumed: 0, inFlight: [], acks: [] };
}

/**
 * Drives a window over a simulated path: one-way delay `delayMs`, bottleneck
 * `bytesPerMs`, a reader that consumes at `readerBytesPerMs`. Time is
 * simulated in 1 ms steps, so the test needs no clock.
 */
function simulate(
  window: SendWindow,
  { delayMs, bytesPerMs, readerBytesPerMs = Infinity, ms }: {
    delayMs: number;
    bytesPerMs: number;
    readerBytesPerMs?: number;
    ms: number;
  },
  t: Transfer = newTransfer(),
): { delivered: number; peakLimit: number; peakUnacked: number } {
  let peakLimit = 0, peakUnacked = 0;
  const startConsumed = t.consumed;
  for (const end = t.now + ms; t.now < end; t.now++) {
    // Send what the window and the bottleneck allow.
    const room = Math.min(window.limit - (t.sent - t.acked), bytesPerMs);
    if (room > 0) {
      t.sent += room;
      window.sent(t.sent, t.now);
      t.inFlight.push({ position: t.sent, at: t.now + delayMs });
    }
    while (t.inFlight.length > 0 && t.inFlight[0].at <= t.now) {
      t.arrived = t.inFlight.shift()!.position;
    }
    const read = Math.min(t.arrived - t.consumed, readerBytesPerMs);
    if (read > 0) {
      t.consumed += read;
      t.acks.push({ position: t.consumed, at: t.now + delayMs });
    }
    while (t.acks.length > 0 && t.acks[0].at <= t.now) {
      t.acked = t.acks.shift()!.position;
      window.acked(t.acked, t.now);
    }
    peakLimit = Math.max(peakLimit, window.limit);
    peakUnacked = Math.max(peakUnacked, t.sent - t.acked);
  }
  return { delivered: t.consumed - startConsumed, peakLimit, peakUnacked };
}

Deno.test("the window grows to fill a long fat pipe, within its maximum", () => {
  // 50 ms each way at 100 MB/s: a bandwidth-delay product of 10 MB.
  const window = new SendWindow(4 * MiB, 24 * MiB);
  const ms = 5000;
  const { delivered, peakLimit, peakUnacked } = simulate(window, {
    delayMs: 50,
    bytesPerMs: 100_000,
    ms,
  });
  assert.ok(peakLimit > 10_000_000, `the window reached only ${peakLimit} bytes`);
  assert.ok(peakLimit <= 24 * MiB && peakUnacked <= 24 * MiB, "the maximum was passed");
  const rate = delivered / ms / 100_000;
  assert.ok(rate >= 0.8, `the path was used at ${(rate * 100).toFixed(0)}% of its rate`);
});

Deno.test("with a fixed floor-sized window the same path is mostly idle (what the growth buys)", () => {
  const window = new SendWindow(4 * MiB, 4 * MiB);
  const { delivered } = simulate(window, { delayMs: 50, bytesPerMs: 100_000, ms: 5000 });
  assert.ok(delivered / 5000 / 100_000 < 0.5);
});

Deno.test("a slow reader keeps the window at its floor", () => {
  const window = new SendWindow(1 * MiB, 64 * MiB);
  const { peakLimit } = simulate(window, {
    delayMs: 50,
    bytesPerMs: 100_000,
    readerBytesPerMs: 1_000,
    ms: 5000,
  });
  assert.equal(peakLimit, 1 * MiB);
});

Deno.test("the window shrinks back when the path slows down", () => {
  const window = new SendWindow(1 * MiB, 64 * MiB);
  const transfer = newTransfer();
  simulate(window, { delayMs: 50, bytesPerMs: 100_000, ms: 3000 }, transfer);
  const grown = window.limit;
  // The same transfer goes on behind a reader 50 times slower.
  simulate(
    window,
    { delayMs: 50, bytesPerMs: 100_000, readerBytesPerMs: 2_000, ms: 3000 },
    transfer,
  );
  assert.ok(window.limit < grown / 4, `${window.limit} after ${grown}`);
});

Deno.test("a smaller peer maximum caps the window at once", () => {
  const window = new SendWindow(4 * MiB, 64 * MiB);
  simulate(window, { delayMs: 50, bytesPerMs: 100_000, ms: 3000 });
  window.setMax(2 * MiB);
  assert.equal(window.limit, 2 * MiB);
});
