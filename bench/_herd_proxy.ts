// The shared uplink of bench/herd_resume.ts: tests/_fault_proxy.ts in front of
// bench/_herd_server.ts, in a process of its own so that breaking and
// forwarding hundreds of links does not run on the clients' event loop.
//
//   deno run --allow-net=127.0.0.1 bench/_herd_proxy.ts SERVER_PORT
//
// It prints `{"port":N}` once listening, then answers each command line on
// stdin with one JSON line on stdout:
//
//   reset  RST every open link, both ways; answers how many it hit and when;
//   hole   stop forwarding on every open link, silently (no FIN, no RST, the
//          sockets stay open); answers how many it hit and when;
//   lag    answers the event loop's worst lateness since the last fault and
//          how many connections came in since the start;
//   quit   exit.
//
// It also exits when its stdin ends: it must not outlive the bench.
import { FaultProxy } from "../tests/_fault_proxy.ts";
import { watchTimerLateness } from "../tests/_helpers.ts";
import { TextLineStream } from "../tests/_lines.ts";

/** The answer to `reset` and `hole`. */
export interface FaultAnswer {
  /** Links the fault hit; -1 if it failed. */
  hit: number;
  /** When it fired: `performance.timeOrigin + performance.now()`, comparable across processes. */
  t: number;
}

/** The answer to `lag`. */
export interface LagAnswer {
  /** The event loop's worst timer lateness since the last fault (ms). */
  maxLag: number;
  /** Connections that came in since the proxy started. */
  accepted: number;
}

const proxy = await FaultProxy.start({ targetPort: Number(Deno.args[0]) });
let lateness = watchTimerLateness(50);

/** Runs `fault` and answers what it hit; the lateness watch restarts with it. */
function fire(fault: () => number): FaultAnswer {
  lateness[Symbol.dispose]();
  lateness = watchTimerLateness(50);
  let hit = -1;
  try {
    hit = fault();
  } catch (error) {
    // Reported as hit -1 rather than ending the proxy in the middle of a run.
    console.error(`herd proxy: the fault failed: ${error}`);
  }
  return { hit, t: performance.timeOrigin + performance.now() };
}

console.log(JSON.stringify({ port: proxy.port }));

const commands = Deno.stdin.readable
  .pipeThrough(new TextDecoderStream())
  .pipeThrough(new TextLineStream());
for await (const command of commands) {
  switch (command.trim()) {
    case "reset":
      console.log(JSON.stringify(fire(() => proxy.reset())));
      break;
    case "hole":
      console.log(JSON.stringify(fire(() => proxy.blackhole())));
      break;
    case "lag": {
      const answer: LagAnswer = {
        maxLag: Math.round(lateness.max),
        accepted: proxy.acceptedAt.length,
      };
      console.log(JSON.stringify(answer));
      break;
    }
    case "quit":
      console.log(JSON.stringify({ bye: true }));
      Deno.exit(0);
  }
}
// stdin ended: the bench is gone.
Deno.exit(0);
