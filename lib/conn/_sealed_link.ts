/**
 * End-to-end encryption of a session's link (PROTOCOL.md 1.21): after the
 * handshake, every byte either way travels in ChaCha20-Poly1305 records, under
 * keys of this link alone (derived from the session's X25519 secret and this
 * link's fresh handshake nonces), so a relay or a TLS-terminating proxy on
 * the way sees only ciphertext, and a changed byte is caught before the
 * session sees it: the link dies, and the session resumes on a new one.
 *
 * The handshake itself stays in the clear (its first two frames each way).
 * The wrapper knows where it ends by counting those frames: it reads them
 * exactly to their last byte, never past it, so not one byte of the first
 * record can slip into the clear. Whether the rest is sealed is decided
 * during the handshake ({@linkcode SealedLink.seal} or
 * {@linkcode SealedLink.plain}); reads and writes past the handshake wait
 * for that decision.
 *
 * ChaCha20-Poly1305 (RFC 8439) from `node:crypto`, not AES-GCM from Web
 * Crypto: Deno's `crypto.subtle` AES-GCM runs at about 230 MB/s on our
 * machine (it would cost a tunnel most of its throughput), while
 * ChaCha20-Poly1305, which Web Crypto does not offer, runs at about 1 GB/s
 * here, and synchronously: no promise per record.
 *
 * @module
 */

import { createCipheriv, createDecipheriv } from "node:crypto";
import type { Link } from "../link/mod.ts";

/** Plaintext frames each way before records start: hello and proof, challenge and accept. */
const HANDSHAKE_FRAMES = 2;
/** Frame header: type (1) and payload length (4). */
const FRAME_HEADER = 5;
/** Largest plaintext of one record. */
export const MAX_RECORD_PLAINTEXT = 256 * 1024;
/** Poly1305 tag. */
const TAG = 16;
const AEAD = "chacha20-poly1305";
/** Record header: the ciphertext's length. */
const RECORD_HEADER = 4;

/** The keys of one link: one per direction, 32 bytes each. */
export interface LinkKeys {
  send: Uint8Array;
  receive: Uint8Array;
}

/** A record failed to open: the bytes were changed on the way (or are not ours). */
export class TamperedError extends Deno.errors.InvalidData {
  constructor(why: string) {
    super(`sealed link: ${why}; the link is dropped, the session resumes on a new one`);
    this.name = "TamperedError";
  }
}

/** Whether `data` is exactly one handshake frame (types 0x10-0x14: hello .. reject). */
function isHandshakeFrame(data: Uint8Array): boolean {
  if (data.length < FRAME_HEADER || data[0] < 0x10 || data[0] > 0x14) return false;
  return new DataView(data.buffer, data.byteOffset).getUint32(1) === data.length - FRAME_HEADER;
}

/** 12-byte nonce: four zero bytes and the record's number, big-endian. */
function nonceOf(counter: number): Uint8Array<ArrayBuffer> {
  const iv = new Uint8Array(12);
  new DataView(iv.buffer).setBigUint64(4, BigInt(counter));
  return iv;
}

function u32(value: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}

/** A link whose bytes after the handshake are sealed, or plain, as the handshake decides. */
export class SealedLink implements Link {
  #inner: Link;
  #decision: PromiseWithResolvers<LinkKeys | null> = Promise.withResolvers();
  #keys: LinkKeys | null | undefined;
  // Handshake reads: the frame being read, to stop exactly at its end.
  #framesIn = 0;
  #header = new Uint8Array(FRAME_HEADER);
  #headerLeft = FRAME_HEADER;
  #payloadLeft = 0;
  #framesOut = 0;
  // Records.
  #sendCounter = 0;
  #receiveCounter = 0;
  #in = new Uint8Array(64 * 1024);
  #inStart = 0;
  #inEnd = 0;
  #plaintext: Uint8Array | null = null;
  #writing: Promise<void> = Promise.resolve();

  /**
   * Ends the sending of the link under it, after the records on their way;
   * there only where that link can (see {@linkcode Link.closeWrite}).
   */
  readonly closeWrite?: () => Promise<void>;

  /** Wraps `inner`; nothing is decided yet. */
  constructor(inner: Link) {
    this.#inner = inner;
    if (inner.closeWrite) {
      this.closeWrite = async () => {
        await this.#writing;
        await inner.closeWrite!();
      };
    }
  }

  get localAddr(): Deno.Addr | undefined {
    return this.#inner.localAddr;
  }

  get remoteAddr(): Deno.Addr | undefined {
    return this.#inner.remoteAddr;
  }

  get peer(): string | undefined {
    return this.#inner.peer;
  }

  /** Whether the bytes after the handshake are sealed (undefined until decided). */
  get sealed(): boolean | undefined {
    return this.#keys === undefined ? undefined : this.#keys !== null;
  }

  /** Seals everything after the handshake with `keys`. */
  seal(keys: LinkKeys): void {
    this.#keys ??= keys;
    this.#decision.resolve(keys);
  }

  /** Leaves everything after the handshake in the clear. */
  plain(): void {
    this.#keys ??= null;
    this.#decision.resolve(null);
  }

  read(buffer: Uint8Array): Promise<number | null> {
    // A plain session past its handshake reads straight through: every
    // unsealed session on a listener goes through here.
    if (this.#keys === null && this.#framesIn >= HANDSHAKE_FRAMES) return this.#inner.read(buffer);
    return this.#readSlowly(buffer);
  }

  async #readSlowly(buffer: Uint8Array): Promise<number | null> {
    if (this.#framesIn < HANDSHAKE_FRAMES) return await this.#readHandshake(buffer);
    const keys = this.#keys ?? await this.#decision.promise;
    if (keys === null) return await this.#inner.read(buffer);
    return await this.#readSealed(buffer, keys.receive);
  }

  write(data: Uint8Array): Promise<void> {
    if (this.#framesOut < HANDSHAKE_FRAMES) {
      // Each handshake write is exactly one handshake frame: anything else
      // would go out in the clear, so it is refused rather than sent.
      if (!isHandshakeFrame(data)) {
        return Promise.reject(new Error("sealed link: only handshake frames go out in the clear"));
      }
      this.#framesOut++;
      return this.#inner.write(data);
    }
    const keys = this.#keys;
    if (keys === null) return this.#inner.write(data);
    if (keys === undefined) {
      return Promise.reject(new Error("sealed link: a write past the handshake before sealing"));
    }
    // Sealed now, synchronously: records are numbered in the order of the
    // calls, and go out in that order.
    const records = Math.ceil(data.length / MAX_RECORD_PLAINTEXT);
    const out = new Uint8Array(data.length + records * (RECORD_HEADER + TAG));
    let at = 0;
    for (let offset = 0; offset < data.length; offset += MAX_RECORD_PLAINTEXT) {
      const part = data.subarray(offset, offset + MAX_RECORD_PLAINTEXT);
      const header = u32(part.length + TAG);
      const cipher = createCipheriv(AEAD, keys.send, nonceOf(this.#sendCounter++), {
        authTagLength: TAG,
      });
      cipher.setAAD(header, { plaintextLength: part.length });
      out.set(header, at);
      out.set(cipher.update(part), at + RECORD_HEADER);
      cipher.final();
      out.set(cipher.getAuthTag(), at + RECORD_HEADER + part.length);
      at += RECORD_HEADER + part.length + TAG;
    }
    const written = this.#writing.then(() => this.#inner.write(out));
    this.#writing = written.catch(() => {});
    return written;
  }

  close(): void {
    this.#inner.close();
    // A read waiting for a decision that will never come ends.
    this.#decision.resolve(null);
  }

  /** Reads a handshake frame, never past its last byte. */
  async #readHandshake(buffer: Uint8Array): Promise<number | null> {
    const inHeader = this.#headerLeft > 0;
    const want = inHeader ? this.#headerLeft : this.#payloadLeft;
    const n = await this.#inner.read(buffer.subarray(0, Math.min(buffer.length, want)));
    if (n === null) return null;
    if (inHeader) {
      this.#header.set(buffer.subarray(0, n), FRAME_HEADER - this.#headerLeft);
      this.#headerLeft -= n;
      if (this.#headerLeft === 0) {
        this.#payloadLeft = new DataView(this.#header.buffer).getUint32(1);
        if (this.#payloadLeft === 0) this.#frameRead();
      }
    } else {
      this.#payloadLeft -= n;
      if (this.#payloadLeft === 0) this.#frameRead();
    }
    return n;
  }

  #frameRead(): void {
    this.#framesIn++;
    this.#headerLeft = FRAME_HEADER;
  }

  async #readSealed(buffer: Uint8Array, key: Uint8Array): Promise<number | null> {
    while (this.#plaintext === null || this.#plaintext.length === 0) {
      const record = await this.#nextRecord();
      if (record === null) return null;
      const sealedLength = record.body.length - TAG;
      try {
        const decipher = createDecipheriv(AEAD, key, nonceOf(this.#receiveCounter++), {
          authTagLength: TAG,
        });
        decipher.setAAD(record.header, { plaintextLength: sealedLength });
        decipher.setAuthTag(record.body.subarray(sealedLength));
        const opened = decipher.update(record.body.subarray(0, sealedLength));
        decipher.final();
        this.#plaintext = opened;
      } catch {
        throw new TamperedError("a record does not open (changed on the way)");
      }
    }
    const plaintext = this.#plaintext;
    const n = Math.min(plaintext.length, buffer.length);
    buffer.set(plaintext.subarray(0, n));
    this.#plaintext = plaintext.subarray(n);
    return n;
  }

  /** The next whole record from the link, or null at its end. */
  async #nextRecord(): Promise<{ header: Uint8Array; body: Uint8Array } | null> {
    if (!(await this.#fill(RECORD_HEADER))) return null;
    const length = new DataView(this.#in.buffer, this.#inStart).getUint32(0);
    if (length <= TAG || length > MAX_RECORD_PLAINTEXT + TAG) {
      throw new TamperedError(`a record of ${length} bytes`);
    }
    if (!(await this.#fill(RECORD_HEADER + length))) {
      throw new TamperedError("the link ended inside a record");
    }
    // Views, not copies: the record is opened (copied out) before the next
    // read moves what is buffered.
    const header = this.#in.subarray(this.#inStart, this.#inStart + RECORD_HEADER);
    const body = this.#in.subarray(
      this.#inStart + RECORD_HEADER,
      this.#inStart + RECORD_HEADER + length,
    );
    this.#inStart += RECORD_HEADER + length;
    return { header, body };
  }

  /** Reads until `n` bytes are buffered; false at the end of the link (with none buffered). */
  async #fill(n: number): Promise<boolean> {
    if (this.#inEnd - this.#inStart >= n) return true;
    if (this.#inStart > 0) {
      this.#in.copyWithin(0, this.#inStart, this.#inEnd);
      this.#inEnd -= this.#inStart;
      this.#inStart = 0;
    }
    if (this.#in.length < n) {
      const bigger = new Uint8Array(Math.max(n, this.#in.length * 2));
      bigger.set(this.#in.subarray(0, this.#inEnd));
      this.#in = bigger;
    }
    while (this.#inEnd < n) {
      const got = await this.#inner.read(this.#in.subarray(this.#inEnd));
      if (got === null) {
        if (this.#inEnd === 0) return false;
        throw new TamperedError("the link ended inside a record");
      }
      this.#inEnd += got;
    }
    return true;
  }
}
