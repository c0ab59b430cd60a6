// The AEAD behind sealed sessions (PROTOCOL.md 1.21): Web Crypto's AES-GCM
// against node:crypto's ChaCha20-Poly1305, one 256 KiB record each.
//
//   deno bench bench/aead_bench.ts
import { createCipheriv } from "node:crypto";

const RECORD = new Uint8Array(256 * 1024);
const NONCE = new Uint8Array(12);
const KEY = new Uint8Array(32);
const aesKey = await crypto.subtle.importKey("raw", KEY, "AES-GCM", false, ["encrypt"]);

Deno.bench("seal 256 KiB: Web Crypto AES-256-GCM", { group: "aead", baseline: true }, async () => {
  await crypto.subtle.encrypt({ name: "AES-GCM", iv: NONCE }, aesKey, RECORD);
});

Deno.bench("seal 256 KiB: node:crypto ChaCha20-Poly1305", { group: "aead" }, () => {
  const cipher = createCipheriv("chacha20-poly1305", KEY, NONCE, { authTagLength: 16 });
  cipher.update(RECORD);
  cipher.final();
  cipher.getAuthTag();
});
