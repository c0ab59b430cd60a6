/**
 * The relay's counters in the Prometheus text format, served at `/metrics`.
 * Labels come only from the closed set of refusal reasons: a label never
 * carries a room id or a nickname, which would leak them and let nodes grow
 * the series without bound.
 *
 * @module
 */

import type { RelayStats } from "./_hub.ts";

/** `stats` in the Prometheus text exposition format (version 0.0.4). */
export function metricsText(stats: RelayStats): string {
  const lines = [
    "# HELP immortal_relay_sessions Sessions with at least one node.",
    "# TYPE immortal_relay_sessions gauge",
    `immortal_relay_sessions ${stats.sessions}`,
    "# HELP immortal_relay_nodes Nodes joined.",
    "# TYPE immortal_relay_nodes gauge",
    `immortal_relay_nodes ${stats.nodes}`,
  ];
  const counters: [string, string, number][] = [
    ["joins", "Joins accepted.", stats.joins],
    ["messages", "Messages accepted from nodes.", stats.messages],
    ["deliveries", "Message copies handed to receiving nodes.", stats.deliveries],
    ["dropped", "Message copies dropped: the receiver's queue was full.", stats.dropped],
    ["slow_disconnects", "Nodes disconnected: their queue was full.", stats.slowDisconnects],
    ["faded", "Nodes declared gone after missing keep-alives.", stats.faded],
  ];
  for (const [name, help, value] of counters) {
    lines.push(
      `# HELP immortal_relay_${name}_total ${help}`,
      `# TYPE immortal_relay_${name}_total counter`,
      `immortal_relay_${name}_total ${value}`,
    );
  }
  lines.push(
    "# HELP immortal_relay_refused_total Requests and frames refused, by reason.",
    "# TYPE immortal_relay_refused_total counter",
  );
  for (const [reason, value] of Object.entries(stats.refused)) {
    lines.push(`immortal_relay_refused_total{reason="${reason}"} ${value}`);
  }
  return lines.join("\n") + "\n";
}

/** The metrics page as a response. */
export function metricsResponse(stats: RelayStats): Response {
  return new Response(metricsText(stats), {
    headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
  });
}
