/**
 * POSTs that reached the wrong relay of a cluster, passed on to the right
 * one. A node on HTTP streaming holds its response (its event stream, or a
 * pipe link's downstream) on one connection and sends its POSTs on others;
 * behind one port shared by several relays (`--reuse-port`) or a load
 * balancer without stickiness, each connection may land on any relay. A
 * relay that does not hold the stream a POST is for used to answer 404, and
 * the node reconnected until, by luck, both landed on one relay.
 *
 * So, in a cluster, the ids of such streams start with the id of the relay
 * that holds them (`<relay>.<uuid>`), and a relay that receives a POST for
 * another relay's stream sends it on, with the cluster's key, to that
 * relay's cluster address, and answers with its answer (PROTOCOL.md 2.22).
 *
 * @module
 */

import { errorMessage } from "../_util.ts";
import type { Link } from "../link/link.ts";
import type { RelayCluster } from "./_cluster.ts";
import type { Hub } from "./_hub.ts";
import { readBounded } from "../link/_http_link_endpoint.ts";
import { bodyRefusal, refuseRequest, tooLargeReason } from "./_http.ts";
import { HOP_BY_HOP } from "./_http1_response.ts";
import { PIPE_HEADERS } from "./_protocol.ts";
import { secretsEqual } from "./_secret.ts";

/** A stream id that names its relay: a join token (base64url), a dot, a UUID. */
const OWNED_ID =
  /^([A-Za-z0-9_-]{16,64})\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Request headers not passed on: the connection's own (hop by hop), and what fetch sets itself. */
const NOT_FORWARDED = new Set([
  ...HOP_BY_HOP,
  "proxy-connection",
  "proxy-authorization",
  "te",
  "trailer",
  "expect",
  "host",
]);

/** Handles a request on a relay's cluster listener (see `serveRelay`). */
export type PeerHandler = (req: Request, info?: Deno.ServeHandlerInfo) => Promise<Response>;

/** Each relay's handler of requests from the other relays of its cluster. */
export const peerHandlers: WeakMap<object, PeerHandler> = new WeakMap();

/** What a relay does when Redis refuses it for good (its server stops). */
export const clusterRefusals: WeakMap<object, (reason: string) => void> = new WeakMap();

/** A new stream id held by the relay `relayId` (null: not in a cluster). */
export function ownedId(relayId: string | null): string {
  return relayId === null ? crypto.randomUUID() : `${relayId}.${crypto.randomUUID()}`;
}

/**
 * The answer of the relay that holds stream `id`, to `req` passed on to it;
 * null when this relay is the one (or no other is known: the caller answers
 * as for an unknown stream, and `req`'s body is untouched). The body is read
 * first, whole, up to `maxBytes`; from then on every outcome is an answer of
 * its own: `413` past `maxBytes`, `400` for a body cut short, `404` when the
 * relay that held the stream cannot be reached (it is gone, and the stream
 * with it). `holding` hears of the body while this relay holds it: its
 * length once read, minus that once passed on (or not).
 */
export async function forwardToOwner(
  hub: Hub,
  req: Request,
  id: string,
  maxBytes: number,
  holding?: (bytes: number) => void,
): Promise<Response | null> {
  const owner = OWNED_ID.exec(id)?.[1];
  if (owner === undefined) return null;
  const cluster = await hub.cluster;
  if (cluster === null || owner === cluster.id) return null;
  let url: string | null;
  let key: string;
  try {
    url = await cluster.relayUrl(owner);
    key = await cluster.key();
  } catch {
    return null; // Redis is away: as for an unknown stream
  }
  if (url === null) return null;
  // Bodies read to be passed on count toward one bound for the relay, as
  // their bytes come: the id that sends a request here (a relay's, then
  // anything) is a stranger's to choose, and each body may be 1 MiB, read
  // before its owner judges it.
  let held = 0;
  const onPiece = (bytes: number) => {
    const inTransit = forwardedInTransit.get(hub) ?? 0;
    if (inTransit + bytes > hub.settings.maxForwardedBytes) throw new TooMuchInTransit();
    forwardedInTransit.set(hub, inTransit + bytes);
    held += bytes;
  };
  try {
    return await passOn(hub, req, { url, key, maxBytes, holding, onPiece });
  } finally {
    forwardedInTransit.set(hub, (forwardedInTransit.get(hub) ?? held) - held);
  }
}

/** The relay holds its `maxForwardedBytes` of bodies to pass on already. */
class TooMuchInTransit extends Error {}

/** What each relay holds of them now. */
const forwardedInTransit = new WeakMap<Hub, number>();

/** Reads `req`'s body and passes the request on to the relay at `url`: {@linkcode forwardToOwner}. */
async function passOn(
  hub: Hub,
  req: Request,
  { url, key, maxBytes, holding, onPiece }: {
    url: string;
    key: string;
    maxBytes: number;
    holding?: (bytes: number) => void;
    onPiece: (bytes: number) => void;
  },
): Promise<Response> {
  const cluster = (await hub.cluster)!;
  let body: Uint8Array<ArrayBuffer>;
  try {
    body = await readBounded(req, maxBytes, { onPiece });
  } catch (error) {
    if (error instanceof TooMuchInTransit) {
      return refuseRequest(
        hub,
        503,
        "unavailable",
        "too many requests being passed on: try again",
      );
    }
    // As on a single relay: a body cut short is the client gone, no refusal to count.
    return error instanceof RangeError
      ? refuseRequest(hub, 413, "too-large", tooLargeReason(maxBytes))
      : bodyRefusal(hub, error, "bad-request");
  }
  const headers = new Headers();
  for (const [name, value] of req.headers) {
    if (!NOT_FORWARDED.has(name)) headers.set(name, value);
  }
  const target = new URL(new URL(req.url).pathname, url);
  let answer: Response;
  holding?.(body.length);
  try {
    answer = await fetchWithClusterKey(cluster, key, (key) => {
      headers.set(PIPE_HEADERS.cluster, key);
      return fetch(target, {
        method: req.method,
        headers,
        body,
        // A relay answers; it never redirects (the key must go nowhere else).
        redirect: "manual",
        // A POST waiting on the other relay (its backpressure) ends with this relay.
        signal: hub.closing,
      });
    });
  } catch {
    answer = Response.error();
  } finally {
    holding?.(-body.length);
  }
  if (
    answer.type === "error" || answer.type === "opaqueredirect" ||
    answer.status >= 300 && answer.status < 400
  ) {
    await answer.body?.cancel();
    return refuseRequest(hub, 404, "no-such-stream", "unknown or closed stream");
  }
  hub.countForwarded();
  // The owner's answer as it is: its status, its JSON refusal, nothing of the connection's.
  return new Response(answer.body, {
    status: answer.status,
    headers: { "content-type": answer.headers.get("content-type") ?? "application/octet-stream" },
  });
}

/** Whether `req` comes from a relay of the cluster: it shows the cluster's key. */
export async function fromClusterPeer(hub: Hub, req: Request): Promise<boolean> {
  const cluster = await hub.cluster;
  const key = req.headers.get(PIPE_HEADERS.cluster);
  if (cluster === null || key === null) return false;
  try {
    if (secretsEqual(key, await cluster.key())) return true;
    // After Redis lost its state, the cluster's key may be a new one.
    return secretsEqual(key, await cluster.key(true));
  } catch {
    return false; // Redis is away: no key to compare with
  }
}

/**
 * `request(key)` to another relay of `cluster`, with the cluster's `key`;
 * when that relay refuses the key (401), once more with the key read from
 * Redis again, if it changed: after Redis lost its state, the relay that
 * asked first made a new one, and the key this relay keeps is stale.
 */
export async function fetchWithClusterKey(
  cluster: RelayCluster,
  key: string,
  request: (key: string) => Promise<Response>,
): Promise<Response> {
  const answer = await request(key);
  if (answer.status !== 401) return answer;
  const fresh = await changedKey(cluster, key);
  if (fresh === null) return answer;
  await answer.body?.cancel();
  return await request(fresh);
}

/**
 * {@linkcode fetchWithClusterKey} for a WebSocket link `open(key)` opens to
 * another relay (a refusal is an error naming the status it answered).
 */
export async function openWithClusterKey(
  cluster: RelayCluster,
  key: string,
  open: (key: string) => Promise<Link>,
): Promise<Link> {
  try {
    return await open(key);
  } catch (error) {
    if (!/answered 401\b/.test(errorMessage(error))) throw error;
    const fresh = await changedKey(cluster, key);
    if (fresh === null) throw error;
    return await open(fresh);
  }
}

/** The cluster's key read from Redis again, if it is not `key` any more; null if it is (or Redis is away). */
async function changedKey(cluster: RelayCluster, key: string): Promise<string | null> {
  const fresh = await cluster.reloadKey().catch(() => key);
  return fresh === key ? null : fresh;
}
