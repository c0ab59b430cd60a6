/**
 * The handshake that opens or resumes a session on a fresh link.
 *
 * ```
 * client                                   server
 *   hello {nonce, X25519 pub | resume{id, received}}  ->
 *                                   <-  challenge {32 random bytes}
 *   proof {HMAC(key, transcript)}  ->
 *                                   <-  accept {id, pub | received, HMAC} | reject
 * ```
 *
 * - New session: `key` is the pre-shared key (empty proof when there is none).
 *   Both sides derive the resume key from an X25519 exchange, so an
 *   eavesdropper on a plain TCP link cannot hijack the session later.
 * - Resume: `key` is the session's resume key. The server changes nothing
 *   until the proof verifies; its own accept carries a proof too, so the
 *   client knows the byte position it is told is genuine.
 *
 * @module
 */

import { encodeFrame, type Frame, PROTOCOL_VERSION, type RejectCode } from "../frame/mod.ts";
import type { Link } from "../link/mod.ts";
import { ImmortalError } from "./errors.ts";
import type { _FrameReader } from "./frame_reader.ts";

const encoder = new TextEncoder();
const HMAC = { name: "HMAC", hash: "SHA-256" } as const;

/** @internal Identity and resume key of a session, known to both ends. */
export interface _SessionSecrets {
  sessionId: Uint8Array;
  /** Hex form of `sessionId`, for maps and logs. */
  id: string;
  resumeKey: CryptoKey;
}

/** @internal Imports a pre-shared key (or any secret) as an HMAC key. */
export function _hmacKey(raw: Uint8Array): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", raw as Uint8Array<ArrayBuffer>, HMAC, false, [
    "sign",
    "verify",
  ]);
}

function _concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function _u64(value: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(value));
  return out;
}

/** @internal Hex encoding for ids in maps and logs. */
export function _hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function _sign(key: CryptoKey, label: string, ...parts: Uint8Array[]): Promise<Uint8Array> {
  const mac = await crypto.subtle.sign("HMAC", key, _concat(encoder.encode(label), ...parts));
  return new Uint8Array(mac);
}

function _verify(
  key: CryptoKey,
  mac: Uint8Array,
  label: string,
  ...parts: Uint8Array[]
): Promise<boolean> {
  // subtle.verify compares in constant time.
  if (mac.length !== 32) return Promise.resolve(false);
  return crypto.subtle.verify(
    "HMAC",
    key,
    mac as Uint8Array<ArrayBuffer>,
    _concat(encoder.encode(label), ...parts),
  );
}

async function _keyPair(): Promise<{ pair: CryptoKeyPair; pub: Uint8Array }> {
  const pair = await crypto.subtle.generateKey({ name: "X25519" }, true, [
    "deriveBits",
  ]) as CryptoKeyPair;
  return { pair, pub: new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)) };
}

async function _resumeSecrets(
  pair: CryptoKeyPair,
  peerPub: Uint8Array,
  sessionId: Uint8Array,
  clientPub: Uint8Array,
  serverPub: Uint8Array,
): Promise<_SessionSecrets> {
  const peer = await crypto.subtle.importKey(
    "raw",
    peerPub as Uint8Array<ArrayBuffer>,
    { name: "X25519" },
    false,
    [],
  );
  let shared: Uint8Array;
  try {
    shared = new Uint8Array(
      await crypto.subtle.deriveBits({ name: "X25519", public: peer }, pair.privateKey, 256),
    );
  } catch (cause) {
    // A low-order point yields no secret: that is a broken or hostile peer.
    throw new ImmortalError("protocol", "peer sent an invalid X25519 public key", { cause });
  }
  const extracted = await _sign(
    await _hmacKey(shared),
    "immortal-v1 resume key",
    sessionId,
    clientPub,
    serverPub,
  );
  return { sessionId, id: _hex(sessionId), resumeKey: await _hmacKey(extracted) };
}

/** @internal Writes one frame. */
export function _send(link: Link, frame: Frame): Promise<void> {
  return link.write(encodeFrame(frame));
}

function _rejectError(code: RejectCode, reason: string): ImmortalError {
  const mapped = code === "auth" || code === "unknown-session" || code === "protocol"
    ? code
    : "rejected";
  return new ImmortalError(mapped, `server refused: ${reason}`);
}

async function _expect<T extends Frame["type"]>(
  reader: _FrameReader,
  type: T,
): Promise<Extract<Frame, { type: T }>> {
  const frame = await reader.nextFrame();
  if (frame === null) throw new Error("link closed during the handshake");
  if (frame.type === "reject") throw _rejectError(frame.code, frame.reason);
  if (frame.type !== type) {
    throw new ImmortalError("protocol", `expected ${type} during the handshake, got ${frame.type}`);
  }
  return frame as Extract<Frame, { type: T }>;
}

/** @internal Client side, new session. Resolves to the session's secrets. */
export async function _clientOpen(
  reader: _FrameReader,
  psk: CryptoKey | null,
): Promise<_SessionSecrets> {
  const { pair, pub } = await _keyPair();
  const hello: Frame = {
    type: "hello",
    version: PROTOCOL_VERSION,
    nonce: _random(16),
    publicKey: pub,
  };
  await _send(reader.link, hello);
  const challenge = await _expect(reader, "challenge");
  const transcript = _concat(encodeFrame(hello), encodeFrame(challenge));
  const mac = psk ? await _sign(psk, "immortal-v1 new client", transcript) : new Uint8Array(0);
  await _send(reader.link, { type: "proof", mac });
  const accept = await _expect(reader, "accept");
  if (!accept.created) {
    throw new ImmortalError("protocol", "server answered a new session with a resume");
  }
  const { sessionId, publicKey } = accept.created;
  if (
    psk &&
    !(await _verify(psk, accept.mac, "immortal-v1 new server", transcript, sessionId, publicKey))
  ) {
    throw new ImmortalError("auth", "the server could not prove it holds the pre-shared key");
  }
  return _resumeSecrets(pair, publicKey, sessionId, pub, publicKey);
}

/** @internal Client side, resume. Resolves to how many bytes the server has received. */
export async function _clientResume(
  reader: _FrameReader,
  secrets: _SessionSecrets,
  received: number,
): Promise<number> {
  const hello: Frame = {
    type: "hello",
    version: PROTOCOL_VERSION,
    nonce: _random(16),
    resume: { sessionId: secrets.sessionId, received },
  };
  await _send(reader.link, hello);
  const challenge = await _expect(reader, "challenge");
  const transcript = _concat(encodeFrame(hello), encodeFrame(challenge));
  const mac = await _sign(secrets.resumeKey, "immortal-v1 resume client", transcript);
  await _send(reader.link, { type: "proof", mac });
  const accept = await _expect(reader, "accept");
  if (accept.received === undefined) {
    throw new ImmortalError("protocol", "server answered a resume with a new session");
  }
  if (
    !(await _verify(
      secrets.resumeKey,
      accept.mac,
      "immortal-v1 resume server",
      transcript,
      _u64(accept.received),
    ))
  ) {
    throw new ImmortalError("auth", "the server's resume answer carries a bad proof");
  }
  return accept.received;
}

/** @internal What the server learned from a verified hello + proof. */
export type _ServerHello =
  | { kind: "new"; secrets: _SessionSecrets; accept: Frame }
  | {
    kind: "resume";
    sessionId: string;
    received: number;
    transcript: Uint8Array;
    resumeKey: CryptoKey;
  };

/** @internal Finds the resume key of a live session by hex id. */
export type _SessionLookup = (id: string) => CryptoKey | undefined;

/**
 * @internal Server side: reads hello and proof, verifies them, and either
 * prepares a new session or identifies the session to resume. Refusals are
 * sent to the client and thrown as {@linkcode ImmortalError}.
 */
export async function _serverHandshake(
  reader: _FrameReader,
  psk: CryptoKey | null,
  lookup: _SessionLookup,
): Promise<_ServerHello> {
  const refuse = async (code: RejectCode, reason: string): Promise<never> => {
    await _send(reader.link, { type: "reject", code, reason }).catch(() => {});
    throw new ImmortalError(
      code === "auth" || code === "unknown-session" ? code : "rejected",
      reason,
    );
  };
  const hello = await _expect(reader, "hello");
  if (hello.version !== PROTOCOL_VERSION) {
    return refuse(
      "version",
      `protocol version ${hello.version} is not supported (this server speaks ${PROTOCOL_VERSION})`,
    );
  }
  let resumeKey: CryptoKey | undefined;
  if (hello.resume) {
    resumeKey = lookup(_hex(hello.resume.sessionId));
    if (!resumeKey) {
      return refuse("unknown-session", "no such session (it ended or the server restarted)");
    }
  }
  const challenge: Frame = { type: "challenge", nonce: _random(32) };
  await _send(reader.link, challenge);
  const proof = await _expect(reader, "proof");
  const transcript = _concat(encodeFrame(hello), encodeFrame(challenge));
  if (hello.resume) {
    if (!(await _verify(resumeKey!, proof.mac, "immortal-v1 resume client", transcript))) {
      return refuse("auth", "resume proof is invalid");
    }
    return {
      kind: "resume",
      sessionId: _hex(hello.resume.sessionId),
      received: hello.resume.received,
      transcript,
      resumeKey: resumeKey!,
    };
  }
  if (psk && !(await _verify(psk, proof.mac, "immortal-v1 new client", transcript))) {
    return refuse("auth", "pre-shared key missing or wrong");
  }
  const { pair, pub } = await _keyPair();
  const sessionId = _random(16);
  const secrets = await _resumeSecrets(pair, hello.publicKey!, sessionId, hello.publicKey!, pub);
  const mac = psk
    ? await _sign(psk, "immortal-v1 new server", transcript, sessionId, pub)
    : new Uint8Array(0);
  return {
    kind: "new",
    secrets,
    accept: { type: "accept", created: { sessionId, publicKey: pub }, mac },
  };
}

/** @internal Server's proof in its answer to a resume. */
export async function _resumeAccept(
  resumeKey: CryptoKey,
  transcript: Uint8Array,
  received: number,
): Promise<Frame> {
  const mac = await _sign(resumeKey, "immortal-v1 resume server", transcript, _u64(received));
  return { type: "accept", received, mac };
}

function _random(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}
