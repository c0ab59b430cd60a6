/**
 * The status page a relay serves at `/`: counts only. Room (session) ids are
 * not listed, because on a relay with a secret they are what strangers should
 * not learn; whatever is interpolated into the page goes through
 * {@linkcode escapeHtml}, so no value a node chose can become markup.
 *
 * @module
 */

/** `text` with the five characters that can start or end markup escaped. */
export function escapeHtml(text: string | number): string {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** What the status page shows. */
export interface StatusPageFacts {
  /** Rooms with at least one node (absent: not for this visitor). */
  sessions?: number;
  /** Nodes joined (absent: not for this visitor). */
  nodes?: number;
  /** Whether the relay runs without a secret. */
  open: boolean;
  /** Whether the relay serves the chat page at `/chat`. */
  chatPage: boolean;
}

/**
 * The status page as a response. Its links are relative: a relay a reverse
 * proxy serves under a prefix has its chat page under that prefix too.
 */
export function statusPage(facts: StatusPageFacts): Response {
  const body = `<!doctype html><meta charset="utf-8"><title>immortal relay</title>
<link rel="icon" href="data:,">
<h1>immortal relay</h1>
<p>${
    facts.sessions === undefined
      ? "Its numbers are for those with the metrics token."
      : `${escapeHtml(facts.sessions)} session(s), ${
        escapeHtml(facts.nodes ?? 0)
      } node(s) connected.`
  }${facts.open ? " <strong>This relay is open: it has no secret.</strong>" : ""}</p>
<p>Nodes connect with <code>RelayNode.connect()</code> from <code>@immortal/sockets</code>.
${facts.chatPage ? '<a href="chat">Chat in the browser</a>.' : ""}</p>
<p><a href="healthz">/healthz</a> · <a href="metrics">/metrics</a></p>
`;
  return new Response(body, { headers: { "content-type": "text/html; charset=utf-8" } });
}
