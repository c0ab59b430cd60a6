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
  const lines: string[] = [];
  const metric = (type: "gauge" | "counter", name: string, help: string, value: number) => {
    const full = `immortal_relay_${name}${type === "counter" ? "_total" : ""}`;
    lines.push(`# HELP ${full} ${help}`, `# TYPE ${full} ${type}`, `${full} ${value}`);
  };
  metric("gauge", "sessions", "Sessions with at least one node.", stats.sessions);
  metric("gauge", "nodes", "Nodes joined.", stats.nodes);
  metric("counter", "joins", "Joins accepted.", stats.joins);
  metric("counter", "messages", "Messages accepted from nodes.", stats.messages);
  metric(
    "counter",
    "deliveries",
    "Frames handed to receiving nodes: message copies, and join and leave news.",
    stats.deliveries,
  );
  metric(
    "counter",
    "dropped",
    "Message copies dropped: the receiver's queue was full.",
    stats.dropped,
  );
  metric(
    "counter",
    "slow_disconnects",
    "Nodes disconnected: their queue was full.",
    stats.slowDisconnects,
  );
  metric(
    "counter",
    "faded",
    "Nodes declared gone: silent past the fade time, or their connection broke and did not come back.",
    stats.faded,
  );
  metric("gauge", "rooms", "Rooms kept, with their history, nodes or not.", stats.rooms);
  metric("gauge", "history_messages", "Messages held for recovery.", stats.historyMessages);
  metric("gauge", "history_bytes", "Bytes of messages held for recovery.", stats.historyBytes);
  metric("gauge", "detached", "Nodes whose connection broke, in their grace.", stats.detached);
  metric("counter", "duplicates", "Resent numbered messages dropped.", stats.duplicates);
  metric("counter", "alone", "Numbered messages nobody could hear.", stats.alone);
  metric("counter", "replayed", "Messages replayed to nodes back from a blip.", stats.replayed);
  metric(
    "counter",
    "posts_forwarded",
    "POSTs passed on to the relay of the cluster that holds their stream.",
    stats.forwarded,
  );
  lines.push(
    "# HELP immortal_relay_refused_total Requests and frames refused, by reason.",
    "# TYPE immortal_relay_refused_total counter",
  );
  for (const [reason, value] of Object.entries(stats.refused)) {
    lines.push(`immortal_relay_refused_total{reason="${reason}"} ${value}`);
  }
  if (stats.clusterStoreUp !== undefined) {
    metric(
      "gauge",
      "cluster_store_up",
      "1 while the relay reaches its cluster store (Redis), 0 while it refuses joins for want of it.",
      stats.clusterStoreUp ? 1 : 0,
    );
  }
  if (stats.pipes) {
    metric("gauge", "pipes", "Pipes open.", stats.pipes.open);
    metric(
      "counter",
      "pipes_opened",
      "Pipes opened (a pipe between nodes on two relays of a cluster counts at both).",
      stats.pipes.opened,
    );
    metric(
      "counter",
      "pipe_bytes",
      "Bytes copied through pipes (by each relay of a cluster a pipe crosses).",
      stats.pipes.bytes,
    );
    metric("gauge", "pipe_held_bytes", "Bytes held for pipes.", stats.pipes.heldBytes);
    metric(
      "counter",
      "pipe_requests_relayed",
      "Pipe requests of nodes joined on another relay, sent on to it.",
      stats.pipes.relayed,
    );
  }
  const connections = stats.connections;
  if (connections) {
    metric("gauge", "connections", "Open HTTP connections.", connections.connections);
    metric(
      "gauge",
      "unjoined_connections",
      "Open connections that carry no joined node.",
      connections.unjoined,
    );
    metric(
      "counter",
      "connections_evicted",
      "Unjoined connections closed at the cap.",
      connections.evicted,
    );
    metric(
      "counter",
      "connections_timed_out",
      "Connections closed for sending no request in time.",
      connections.timedOut,
    );
    metric(
      "counter",
      "bad_requests",
      "Malformed or oversized request heads.",
      connections.badRequests,
    );
    metric(
      "counter",
      "accept_failures",
      "Failed accepts (descriptors exhausted, mostly).",
      connections.acceptFailures,
    );
  }
  return lines.join("\n") + "\n";
}

/** The metrics page as a response. */
export function metricsResponse(stats: RelayStats): Response {
  return new Response(metricsText(stats), {
    headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
  });
}
