// Independent check of docs/attachment-vectors.json, written from
// docs/protocol.md §6.1 and RFC 9420 (§5.1 ExpandWithLabel, §8 Extract),
// on Node.js's built-in crypto only: recomputes every vector from its
// inputs and exits 1 on any difference.
//
//   node check.mjs ../../../docs/attachment-vectors.json
import { createHash, createHmac, createCipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';

const suites = {
  1: { hash: 'sha256', aead: 'aes-128-gcm', nk: 16 },
  2: { hash: 'sha256', aead: 'aes-128-gcm', nk: 16 },
  3: { hash: 'sha256', aead: 'chacha20-poly1305', nk: 32 },
  5: { hash: 'sha512', aead: 'aes-256-gcm', nk: 32 },
  7: { hash: 'sha384', aead: 'aes-256-gcm', nk: 32 },
};
const nn = 12;

// varint is RFC 9420 §2.1.2's variable-length integer.
function varint(n) {
  if (n < 1 << 6) return Buffer.from([n]);
  if (n < 1 << 14) return Buffer.from([0x40 | (n >> 8), n & 0xff]);
  return Buffer.from([0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);
}
const opaque = (b) => Buffer.concat([varint(b.length), b]);
const u16 = (n) => Buffer.from([n >> 8, n & 0xff]);
function u64(n) { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; }

const extract = (hash, salt, ikm) => createHmac(hash, salt).update(ikm).digest();
function expand(hash, prk, info, length) {
  const out = [];
  let t = Buffer.alloc(0);
  for (let i = 1; Buffer.concat(out).length < length; i++) {
    t = createHmac(hash, prk).update(Buffer.concat([t, info, Buffer.from([i])])).digest();
    out.push(t);
  }
  return Buffer.concat(out).subarray(0, length);
}
// ExpandWithLabel(secret, label, context, length) with
// KDFLabel { uint16 length; opaque label<V> = "MLS 1.0 " + label; opaque context<V>; }
function expandWithLabel(hash, secret, label, context, length) {
  const info = Buffer.concat([u16(length), opaque(Buffer.from('MLS 1.0 ' + label)), opaque(context)]);
  return expand(hash, secret, info, length);
}
const b64url = (b) => b.toString('base64url');

const vectors = JSON.parse(readFileSync(process.argv[2], 'utf8'));
let failed = 0;
for (const v of vectors) {
  const s = suites[v.cipher_suite];
  const hex = (k) => Buffer.from(v[k], 'hex');
  const plain = hex('plaintext');
  const got = {};
  got.attachment_hash = createHash(s.hash).update(plain).digest();
  got.attachment_context = Buffer.concat([opaque(got.attachment_hash), u64(v.sender_index)]);
  got.attachment_secret = extract(s.hash, hex('attachment_exporter_secret'), hex('nonce'));
  got.key = expandWithLabel(s.hash, got.attachment_secret, 'key', Buffer.alloc(0), s.nk);
  got.aead_nonce = expandWithLabel(s.hash, got.attachment_secret, 'nonce', Buffer.alloc(0), nn);
  const c = createCipheriv(s.aead, got.key, got.aead_nonce, { authTagLength: 16 });
  got.ciphertext = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
  const ref = `message/external-body; access-type=token; token=${b64url(hex('token'))}; nonce=${b64url(hex('nonce'))}; hash=${b64url(got.attachment_hash)}`;
  for (const [k, val] of Object.entries(got)) {
    if (val.toString('hex') !== v[k]) { console.log(`FAIL suite ${v.cipher_suite} ${k}`); failed++; }
  }
  if (ref !== v.reference) { console.log(`FAIL suite ${v.cipher_suite} reference`); failed++; }
  // A copy's reference: the same, with the attachment_secret as key.
  const refWithKey = `${ref}; key=${b64url(got.attachment_secret)}`;
  if (refWithKey !== v.reference_with_key) { console.log(`FAIL suite ${v.cipher_suite} reference_with_key`); failed++; }
  if (!failed) console.log(`ok suite ${v.cipher_suite}`);
}
process.exit(failed ? 1 : 0);
