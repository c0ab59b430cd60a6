/**
 * Frame definitions shared by the encoder and the decoder.
 *
 * Wire format of every frame: `type: u8 | length: u32 big-endian | payload`.
 * Positions are unsigned 64-bit integers on the wire; in memory they are JS
 * numbers, which are exact up to 2^53 bytes (8 PiB) — far beyond any session.
 *
 * @module
 */

/** Size in bytes of the fixed frame header (`type` + `length`). */
export const FRAME_HEADER_SIZE = 5;

/** The default and hard upper bound for a frame's payload (1 MiB). */
export const MAX_FRAME_PAYLOAD = 1 << 20;

/** Longest reason text carried by `close` and `reject` frames, in bytes. */
export const MAX_REASON_BYTES = 1024;

/** Protocol version spoken by this implementation (sent in `hello`). */
export const PROTOCOL_VERSION = 3;

/** Magic bytes that open every `hello` frame: "IMRT". */
export const HELLO_MAGIC: Uint8Array = new Uint8Array([0x49, 0x4d, 0x52, 0x54]);
/** Bit of the hello's `kind` byte that marks a sealed (encrypted) session. */
export const SEALED_BIT = 0x80;

/** Numeric frame type codes as they appear on the wire. */
export const FrameCode = {
  data: 0x01,
  ack: 0x02,
  ping: 0x03,
  pong: 0x04,
  fin: 0x05,
  close: 0x06,
  bye: 0x07,
  hello: 0x10,
  challenge: 0x11,
  proof: 0x12,
  accept: 0x13,
  reject: 0x14,
} as const;

/** Application bytes at the sender's current byte position. */
export interface DataFrame {
  /** Frame kind. */
  type: "data";
  /** The bytes; never empty. */
  data: Uint8Array;
}

/** Cumulative acknowledgement: the peer has consumed every byte before `position`. */
export interface AckFrame {
  /** Frame kind. */
  type: "ack";
  /** Byte position consumed so far (a consumed FIN counts as one position). */
  position: number;
}

/** Heartbeat request; the peer echoes `stamp` in a `pong`. */
export interface PingFrame {
  /** Frame kind. */
  type: "ping";
  /** Opaque 64-bit float echoed back (the sender's clock, for RTT). */
  stamp: number;
}

/** Heartbeat answer echoing a ping's stamp. */
export interface PongFrame {
  /** Frame kind. */
  type: "pong";
  /** The stamp of the ping being answered. */
  stamp: number;
}

/** The sender will write no more: its stream ends at `position`. */
export interface FinFrame {
  /** Frame kind. */
  type: "fin";
  /** Number of bytes the sender wrote in total. */
  position: number;
}

/** The sender aborts the whole session. */
export interface CloseFrame {
  /** Frame kind. */
  type: "close";
  /** Human-readable reason. */
  reason: string;
}

/** The client confirms the session is complete; the server may forget it. */
export interface ByeFrame {
  /** Frame kind. */
  type: "bye";
}

/** First frame of every link, sent by the client. */
export interface HelloFrame {
  /** Frame kind. */
  type: "hello";
  /** Protocol version of the client. */
  version: number;
  /** Fresh client randomness (16 bytes). */
  nonce: Uint8Array;
  /**
   * Most bytes the client will hold received but unread (its receive cap); the
   * server never has more than this unacknowledged. 0 when `version` is not
   * ours (the rest of the frame is then not read).
   */
  window: number;
  /** For a new session: the client's ephemeral X25519 public key (32 bytes). */
  publicKey?: Uint8Array;
  /** For a resume: which session, and how many bytes the client has received. */
  resume?: { sessionId: Uint8Array; received: number };
  /**
   * The session is (new) or was (resume) sealed: every byte after the
   * handshake travels in encrypted records (PROTOCOL.md 1.21).
   */
  sealed?: boolean;
}

/** Server's fresh nonce that the client must prove a key over. */
export interface ChallengeFrame {
  /** Frame kind. */
  type: "challenge";
  /** 32 random bytes. */
  nonce: Uint8Array;
}

/** Client's HMAC proof over the handshake transcript (empty when it has no key). */
export interface ProofFrame {
  /** Frame kind. */
  type: "proof";
  /** HMAC-SHA-256 (32 bytes) or empty. */
  mac: Uint8Array;
}

/** Server accepts a new session or a resume. */
export interface AcceptFrame {
  /** Frame kind. */
  type: "accept";
  /** For a new session: its id and the server's X25519 public key. */
  created?: { sessionId: Uint8Array; publicKey: Uint8Array };
  /** For a resume: how many bytes the server has received. */
  received?: number;
  /** Most bytes the server will hold received but unread (its receive cap). */
  window: number;
  /** Server's HMAC proof (32 bytes), or empty for an unkeyed new session. */
  mac: Uint8Array;
}

/** Server refuses the handshake. */
export interface RejectFrame {
  /** Frame kind. */
  type: "reject";
  /** Why the server refused. */
  code: RejectCode;
  /** Human-readable reason. */
  reason: string;
}

/** Reasons a server refuses a handshake. */
export type RejectCode =
  | "auth"
  | "unknown-session"
  | "busy"
  | "version"
  | "protocol"
  | "encryption";

/** Wire values of {@linkcode RejectCode}. */
export const REJECT_CODES: readonly RejectCode[] = [
  "auth",
  "unknown-session",
  "busy",
  "version",
  "protocol",
  "encryption",
];

/** Any frame of the immortal protocol. */
export type Frame =
  | DataFrame
  | AckFrame
  | PingFrame
  | PongFrame
  | FinFrame
  | CloseFrame
  | ByeFrame
  | HelloFrame
  | ChallengeFrame
  | ProofFrame
  | AcceptFrame
  | RejectFrame;
