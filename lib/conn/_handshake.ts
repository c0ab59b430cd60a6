/**
 * The handshake that opens or resumes a session on a fresh link.
 *
 * ```
 * client                                   server
 *   hello {nonce, window, X25519 pub | resume{id, received}}  ->
 *                                   <-  challenge {32 random bytes}
 *   proof {HMAC(key, transcript)}  ->
 *                                   <-  accept {window, id, pub | received, HMAC} | reject
 * ```
 *
 * `window` is each side's receive window: the most it holds received but
 * unread. It is the same on every link of a session. PROTOCOL.md has the
 * byte layouts and exactly what each HMAC covers.
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
import { concat, peerText } from "../_util.ts";
import { ImmortalError } from "./errors.ts";
import type { FrameReader } from "./_frame_reader.ts";
import { type LinkKeys, SealedLink } from "./_sealed_link.ts";

const encoder = new TextEncoder();
const HMAC = { name: "HMAC", hash: "SHA-256" } as const;

/** Identity and keys of a session, known to both ends. */
export interface SessionSecrets {
  sessionId: Uint8Array;
  /** Hex form of `sessionId`, for maps and logs. */
  id: string;
  resumeKey: CryptoKey;
  /** Whence each link's record keys come (PROTOCOL.md 1.21). */
  sealKey: CryptoKey;
  /** Whether the session's links are sealed. */
  sealed: boolean;
}

/** Imports a pre-shared key (or any secret) as an HMAC key. */
export function hmacKey(raw: Uint8Array): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", raw as Uint8Array<ArrayBuffer>, HMAC, false, [
    "sign",
    "verify",
  ]);
}

function u32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}

/** Smallest receive window a peer may announce: below it, a session could not move a frame. */
const MIN_PEER_WINDOW = 1024;

function checkWindow(window: number): number {
  if (window < MIN_PEER_WINDOW) {
    throw new ImmortalError("protocol", `peer announced a receive window of ${window} bytes`);
  }
  return window;
}

function u64(value: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(value));
  return out;
}

/** Hex encoding for ids in maps and logs. */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sign(key: CryptoKey, label: string, ...parts: Uint8Array[]): Promise<Uint8Array> {
  const mac = await crypto.subtle.sign("HMAC", key, concat(encoder.encode(label), ...parts));
  return new Uint8Array(mac);
}

function verify(
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
    concat(encoder.encode(label), ...parts),
  );
}

async function keyPair(): Promise<{ pair: CryptoKeyPair; pub: Uint8Array }> {
  // The private key never leaves crypto.subtle; a public key is always exportable.
  const pair = await crypto.subtle.generateKey({ name: "X25519" }, false, [
    "deriveBits",
  ]) as CryptoKeyPair;
  return { pair, pub: new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey)) };
}

async function sessionSecrets(
  pair: CryptoKeyPair,
  peerPub: Uint8Array,
  sessionId: Uint8Array,
  clientPub: Uint8Array,
  serverPub: Uint8Array,
  sealed: boolean,
): Promise<SessionSecrets> {
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
  const sharedKey = await hmacKey(shared);
  const resume = await sign(sharedKey, "immortal-v1 resume key", sessionId, clientPub, serverPub);
  const seal = await sign(sharedKey, "immortal-v3 seal key", sessionId, clientPub, serverPub);
  return {
    sessionId,
    id: hex(sessionId),
    resumeKey: await hmacKey(resume),
    sealKey: await hmacKey(seal),
    sealed,
  };
}

/**
 * The record keys of one link: from the session's seal key and this link's
 * transcript (its fresh nonces), so no two links share a key, and a record
 * counter that starts at 0 on each link never repeats a nonce under a key.
 */
async function linkKeys(
  sealKey: CryptoKey,
  transcript: Uint8Array,
  role: "client" | "server",
): Promise<LinkKeys> {
  const toServer = await sign(sealKey, "immortal-v3 seal client to server", transcript);
  const toClient = await sign(sealKey, "immortal-v3 seal server to client", transcript);
  return role === "client"
    ? { send: toServer, receive: toClient }
    : { send: toClient, receive: toServer };
}

/** Seals the link after this handshake, or leaves it plain, as the session is. */
async function decideSealing(
  link: Link,
  secrets: { sealKey: CryptoKey; sealed: boolean },
  transcript: Uint8Array,
  role: "client" | "server",
): Promise<void> {
  if (!(link instanceof SealedLink)) {
    if (secrets.sealed) throw new Error("a sealed session on a link that cannot seal");
    return;
  }
  if (secrets.sealed) link.seal(await linkKeys(secrets.sealKey, transcript, role));
  else link.plain();
}

/** Writes one frame. */
export function sendFrame(link: Link, frame: Frame): Promise<void> {
  return link.write(encodeFrame(frame));
}

function rejectError(code: RejectCode, reason: string): ImmortalError {
  // `busy` is the only refusal that waiting may fix: it alone is `rejected`.
  const mapped = code === "auth" || code === "unknown-session" || code === "protocol"
    ? code
    : code === "encryption"
    ? "auth"
    : code === "version"
    ? "protocol"
    : "rejected";
  return new ImmortalError(mapped, `server refused: ${peerText(reason)}`);
}

/** The link ended in the handshake, where the peer's `expected` frame should have come. */
export class HandshakeCut extends Error {
  /** The frame that never came (`challenge`: the server said nothing at all). */
  readonly expected: Frame["type"];

  /** The link ended before `expected` came. */
  constructor(expected: Frame["type"]) {
    super("link closed during the handshake");
    this.name = "HandshakeCut";
    this.expected = expected;
  }
}

async function expectFrame<T extends Frame["type"]>(
  reader: FrameReader,
  type: T,
): Promise<Extract<Frame, { type: T }>> {
  const frame = await reader.nextFrame();
  if (frame === null) throw new HandshakeCut(type);
  // Only a server refuses: a client's reject is out of place, as any other frame.
  if (frame.type === "reject" && (type === "challenge" || type === "accept")) {
    throw rejectError(frame.code, frame.reason);
  }
  if (frame.type === "hello" && type !== "hello") {
    // A client's own first frame, back: what a plain echo server does.
    throw new ImmortalError(
      "protocol",
      "the server sent our hello back: it echoes, it does not speak the immortal protocol",
    );
  }
  if (frame.type !== type) {
    throw new ImmortalError("protocol", `expected ${type} during the handshake, got ${frame.type}`);
  }
  return frame as Extract<Frame, { type: T }>;
}

/** What a client learns from opening a session. */
export interface Opened {
  secrets: SessionSecrets;
  /** The server's receive window: never have more than this unacknowledged. */
  peerWindow: number;
}

/** What a client learns from resuming a session. */
export interface Resumed {
  /** Bytes the server has received: sending resumes from there. */
  received: number;
  /** The server's receive window. */
  peerWindow: number;
}

/**
 * Client side, new session; `window` is the client's receive window, and
 * `sealed` asks for an encrypted session (the link must be a `SealedLink`).
 */
export async function clientOpen(
  reader: FrameReader,
  psk: CryptoKey | null,
  window: number,
  sealed = false,
): Promise<Opened> {
  const { pair, pub } = await keyPair();
  const hello: Frame = {
    type: "hello",
    version: PROTOCOL_VERSION,
    nonce: randomBytes(16),
    window,
    publicKey: pub,
    sealed,
  };
  await sendFrame(reader.link, hello);
  const challenge = await expectFrame(reader, "challenge");
  const transcript = concat(encodeFrame(hello), encodeFrame(challenge));
  const mac = psk ? await sign(psk, "immortal-v1 new client", transcript) : new Uint8Array(0);
  await sendFrame(reader.link, { type: "proof", mac });
  const accept = await expectFrame(reader, "accept");
  if (!accept.created) {
    throw new ImmortalError("protocol", "server answered a new session with a resume");
  }
  const { sessionId, publicKey } = accept.created;
  if (psk && accept.mac.length === 0) {
    // A server without a key signs nothing; nor does one that is not ours.
    // Either way no key of ours goes away: the advice is to give it one.
    throw new ImmortalError(
      "auth",
      "the server proved no pre-shared key: it has none (it takes anyone), or it is not your " +
        "server; give it the same key",
    );
  }
  if (
    psk &&
    !(await verify(
      psk,
      accept.mac,
      "immortal-v1 new server",
      transcript,
      sessionId,
      publicKey,
      u32(accept.window),
    ))
  ) {
    throw new ImmortalError(
      "auth",
      "the server's answer does not prove our pre-shared key: it holds another key, or the " +
        "answer was changed on the way",
    );
  }
  const secrets = await sessionSecrets(pair, publicKey, sessionId, pub, publicKey, sealed);
  await decideSealing(reader.link, secrets, transcript, "client");
  return { secrets, peerWindow: checkWindow(accept.window) };
}

/** Client side, resume; `window` is the client's receive window. */
export async function clientResume(
  reader: FrameReader,
  secrets: SessionSecrets,
  received: number,
  window: number,
): Promise<Resumed> {
  const hello: Frame = {
    type: "hello",
    version: PROTOCOL_VERSION,
    nonce: randomBytes(16),
    window,
    resume: { sessionId: secrets.sessionId, received },
    sealed: secrets.sealed,
  };
  await sendFrame(reader.link, hello);
  const challenge = await expectFrame(reader, "challenge");
  const transcript = concat(encodeFrame(hello), encodeFrame(challenge));
  const mac = await sign(secrets.resumeKey, "immortal-v1 resume client", transcript);
  await sendFrame(reader.link, { type: "proof", mac });
  // A reject here (`auth`: the resume key is no credential a user can get
  // wrong, so a proof refused was changed on the way, or the answer forged)
  // counts toward the answers a resume believes only on the third.
  const accept = await expectFrame(reader, "accept");
  if (accept.received === undefined) {
    throw new ImmortalError("protocol", "server answered a resume with a new session");
  }
  if (
    !(await verify(
      secrets.resumeKey,
      accept.mac,
      "immortal-v1 resume server",
      transcript,
      u64(accept.received),
      u32(accept.window),
    ))
  ) {
    throw new ImmortalError("auth", "the server's resume answer carries a bad proof");
  }
  await decideSealing(reader.link, secrets, transcript, "client");
  return { received: accept.received, peerWindow: checkWindow(accept.window) };
}

/** What the server learned from a verified hello + proof. */
export type ServerHello =
  | { kind: "new"; secrets: SessionSecrets; accept: Frame; peerWindow: number }
  | {
    kind: "resume";
    sessionId: string;
    received: number;
    transcript: Uint8Array;
    resumeKey: CryptoKey;
    peerWindow: number;
  };

/** Finds the secrets of a live session by hex id. */
export type SessionLookup = (id: string) => SessionSecrets | undefined;

/**
 * Server side: reads hello and proof, verifies them, and either
 * prepares a new session or identifies the session to resume. Refusals are
 * sent to the client and thrown as {@linkcode ImmortalError}. With
 * `resumesOnly`, only a resume of a session it accepts (by id) is taken;
 * anything else is refused `busy` as soon as the hello is read.
 */
export async function serverHandshake(
  reader: FrameReader,
  psk: CryptoKey | null,
  lookup: SessionLookup,
  window: number,
  requireSealed = false,
  resumesOnly?: (sessionId: string) => boolean,
): Promise<ServerHello> {
  const refuse = async (code: RejectCode, reason: string): Promise<never> => {
    await sendFrame(reader.link, { type: "reject", code, reason }).catch(() => {});
    throw new ImmortalError(
      code === "auth" || code === "unknown-session" ? code : "rejected",
      reason,
    );
  };
  const hello = await expectFrame(reader, "hello");
  if (hello.version !== PROTOCOL_VERSION) {
    return refuse(
      "version",
      `protocol version ${hello.version} is not supported (this server speaks ${PROTOCOL_VERSION})`,
    );
  }
  if (hello.window < MIN_PEER_WINDOW) {
    return refuse("protocol", `a receive window of ${hello.window} bytes is too small`);
  }
  const sealed = hello.sealed === true;
  let known: SessionSecrets | undefined;
  if (hello.resume) {
    known = lookup(hex(hello.resume.sessionId));
    if (!known) {
      return refuse("unknown-session", "no such session (it ended or the server restarted)");
    }
    if (known.sealed !== sealed) {
      return refuse("encryption", "a resume must be sealed exactly when its session is");
    }
  }
  // Told before any work (a key exchange, a proof): a link let in past its
  // source's limits for its sessions' resumes may bring nothing else.
  if (resumesOnly !== undefined && !(hello.resume && resumesOnly(hex(hello.resume.sessionId)))) {
    return refuse("busy", "too many handshakes from your address: try again");
  }
  if (!hello.resume && requireSealed && !sealed) {
    return refuse(
      "encryption",
      "this server takes encrypted sessions only (the client's encrypt option, --encrypt)",
    );
  }
  const challenge: Frame = { type: "challenge", nonce: randomBytes(32) };
  await sendFrame(reader.link, challenge);
  const proof = await expectFrame(reader, "proof");
  const transcript = concat(encodeFrame(hello), encodeFrame(challenge));
  if (hello.resume) {
    if (!(await verify(known!.resumeKey, proof.mac, "immortal-v1 resume client", transcript))) {
      return refuse("auth", "resume proof is invalid");
    }
    await decideSealing(reader.link, known!, transcript, "server");
    return {
      kind: "resume",
      sessionId: hex(hello.resume.sessionId),
      received: hello.resume.received,
      transcript,
      resumeKey: known!.resumeKey,
      peerWindow: hello.window,
    };
  }
  if (psk && !(await verify(psk, proof.mac, "immortal-v1 new client", transcript))) {
    return refuse("auth", "pre-shared key missing or wrong");
  }
  const { pair, pub } = await keyPair();
  const sessionId = randomBytes(16);
  const secrets = await sessionSecrets(
    pair,
    hello.publicKey!,
    sessionId,
    hello.publicKey!,
    pub,
    sealed,
  );
  await decideSealing(reader.link, secrets, transcript, "server");
  const mac = psk
    ? await sign(psk, "immortal-v1 new server", transcript, sessionId, pub, u32(window))
    : new Uint8Array(0);
  return {
    kind: "new",
    secrets,
    accept: { type: "accept", created: { sessionId, publicKey: pub }, window, mac },
    peerWindow: hello.window,
  };
}

/** Server's proof in its answer to a resume. */
export async function resumeAccept(
  resumeKey: CryptoKey,
  transcript: Uint8Array,
  received: number,
  window: number,
): Promise<Frame> {
  const mac = await sign(
    resumeKey,
    "immortal-v1 resume server",
    transcript,
    u64(received),
    u32(window),
  );
  return { type: "accept", received, window, mac };
}

function randomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n));
}
