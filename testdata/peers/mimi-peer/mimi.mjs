// MIMI structures of docs/protocol.md (caddy-mimi wire profile v1) and the RFC 9420 pieces a peer needs.
import crypto from 'node:crypto';
import { Reader, Writer, DecodeError } from './codec.mjs';

export const VERSION = 1;
export const SCHEME_ED25519 = 0x0807, SCHEME_P256 = 0x0403;
export const RESP = { ok: 0, error: 1, group_id: 2, welcome_info: 3, external_commit_info: 4, verification_keys: 5, key_packages: 6, attachment_token: 7, attachment_content: 8, queueing: 9 };
export const PREQ = { deliver_message: 0, connection_request: 1, connection_key_packages: 2, group_key_packages: 3 };
export const ERR = { 1: 'malformed', 2: 'bad_signature', 3: 'unknown_key', 4: 'stale_timestamp', 5: 'replay', 6: 'recipient_mismatch', 7: 'not_found', 8: 'stale_epoch', 9: 'commit_conflict', 10: 'quota_exceeded', 11: 'too_large', 12: 'rate_limited', 13: 'token_required', 14: 'backend_unavailable', 15: 'not_implemented', 16: 'unsupported_media_type', 17: 'wrong_request_type', 18: 'forbidden', 19: 'method_not_allowed', 20: 'unsupported_version', 21: 'in_progress', 22: 'too_early', 23: 'body_timeout', 24: 'invalid_mls', 25: 'group_exists', 26: 'content_mismatch', 27: 'certificate_required', 28: 'bad_certificate' };
export const ERR_STATUS = { 1: 400, 2: 401, 3: 401, 4: 401, 5: 409, 6: 421, 7: 404, 8: 409, 9: 409, 10: 413, 11: 413, 12: 429, 13: 401, 14: 503, 15: 501, 16: 415, 17: 400, 18: 403, 19: 405, 20: 400, 21: 409, 22: 425, 23: 408, 24: 400, 25: 409, 26: 400, 27: 401, 28: 401 };

// ---- signatures (RFC 9420 §5.1.2 SignWithLabel) ----
export function signContent(label, content) {
  return new Writer().opaque(Buffer.from('MLS 1.0 ' + label)).opaque(content).bytes();
}
export function ed25519FromSeed(seed) {
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const priv = crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  return { priv, pub: rawPublic(crypto.createPublicKey(priv)) };
}
export function ed25519Generate() { return ed25519FromSeed(crypto.randomBytes(32)); }
// P-256 provider key: public_key is the uncompressed SEC1 point (65 bytes), §4.1
export function p256Generate() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const j = publicKey.export({ format: 'jwk' });
  return { priv: privateKey, pub: Buffer.concat([Buffer.from([4]), Buffer.from(j.x, 'base64url'), Buffer.from(j.y, 'base64url')]), scheme: SCHEME_P256 };
}
function rawPublic(pubKey) { return Buffer.from(pubKey.export({ format: 'jwk' }).x, 'base64url'); }
export function publicKeyObject(scheme, raw) {
  if (scheme === SCHEME_ED25519) {
    if (raw.length !== 32) throw new Error('Ed25519 public key is not 32 bytes');
    return crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
  }
  if (scheme === SCHEME_P256) {
    let pt = Buffer.from(raw);
    if (pt.length === 33) pt = crypto.ECDH.convertKey(pt, 'prime256v1', undefined, undefined, 'uncompressed');
    if (pt.length !== 65 || pt[0] !== 4) throw new Error('P-256 key is not a SEC1 point');
    return crypto.createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: pt.subarray(1, 33).toString('base64url'), y: pt.subarray(33).toString('base64url') }, format: 'jwk' });
  }
  throw new Error('unsupported signature scheme 0x' + scheme.toString(16));
}
export function signWithLabel(priv, label, content) {
  // Ed25519 signs SignContent itself; ECDSA P-256 signs SHA-256(SignContent) once (ECDSA-with-SHA256), DER.
  if (priv.asymmetricKeyType === 'ec') return crypto.sign('sha256', signContent(label, content), { key: priv, dsaEncoding: 'der' });
  return crypto.sign(null, signContent(label, content), priv);
}
export function verifyWithLabel(scheme, pubRaw, label, content, sig) {
  const key = publicKeyObject(scheme, pubRaw);
  const msg = signContent(label, content);
  if (scheme === SCHEME_ED25519) return crypto.verify(null, msg, key, sig);
  return crypto.verify('sha256', msg, { key, dsaEncoding: 'der' }, sig);
}
export function keyIdOf(scheme, pub) {
  return crypto.createHash('sha256').update(new Writer().u16(scheme).bytes()).update(pub).digest().subarray(0, 16);
}

// ---- FQDN / URIs (§1.1) ----
export function isFQDN(s) {
  if (s.length < 1 || s.length > 253) return false;
  const labels = s.split('.');
  for (const l of labels) if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(l)) return false;
  return !/^[0-9]+$/.test(labels[labels.length - 1]);
}
export function isAuthority(s) {
  const m = /^([^:]+)(?::([1-9][0-9]{0,4}))?$/.exec(s);
  return !!m && isFQDN(m[1]) && (m[2] === undefined || Number(m[2]) <= 65535);
}
const PART = '[a-z0-9._-]{1,64}';
export function parseClientURI(s) { const m = new RegExp(`^mimi://([^/]+)/d/(${PART})/(${PART})$`).exec(s); return m && isFQDN(m[1]) ? { provider: m[1], user: m[2], device: m[3] } : null; }
export function parseUserURI(s) { const m = new RegExp(`^mimi://([^/]+)/u/(${PART})$`).exec(s); return m && isFQDN(m[1]) ? { provider: m[1], user: m[2] } : null; }

// ---- DSResponse (§3) ----
export function decodeVerificationKey(r) {
  const key_id = r.opaque(1, 64, 'key_id');
  const signature_scheme = r.u16();
  const public_key = r.opaque(0, 133, 'public_key');
  const not_before = r.u64(), not_after = r.u64();
  return { key_id, signature_scheme, public_key, not_before, not_after };
}
export function encodeVerificationKey(w, k) {
  w.opaque(k.key_id).u16(k.signature_scheme).opaque(k.public_key).u64(k.not_before).u64(k.not_after);
}
export function decodeDSResponse(buf) {
  const r = new Reader(buf, 'DSResponse');
  const version = r.u16();
  if (version !== VERSION) throw new DecodeError('protocol_version ' + version);
  const type = r.u8();
  const out = { type };
  switch (type) {
    case RESP.ok: break;
    case RESP.error: out.code = r.u16(); out.message = r.opaque(0, 256, 'message').toString('utf8'); out.name = ERR[out.code]; break;
    case RESP.group_id: out.group_id = r.opaque(1, 255, 'group_id'); break;
    case RESP.verification_keys: out.keys = r.vector('keys').items(decodeVerificationKey); if (out.keys.length > 16) throw new DecodeError('more than 16 keys'); break;
    case RESP.key_packages: {
      out.key_packages = r.vector('key_packages').items((v) => decodeKeyPackage(v));
      out.missing = r.vector('missing').items((v) => v.opaque(1, 255, 'ClientURI').toString());
      if (out.key_packages.length > 64 || out.missing.length > 64) throw new DecodeError('more than 64 entries');
      break;
    }
    case RESP.queueing: {
      out.status = r.u8(); if (out.status > 1) throw new DecodeError('QueueingStatus ' + out.status);
      out.unknown = r.vector('unknown').items((v) => v.opaque(1, 255, 'ClientURI').toString());
      break;
    }
    default: throw new DecodeError('DSResponse type ' + type + ' not handled by this peer');
  }
  r.end();
  return out;
}
export function encodeVerificationKeys(keys) {
  const inner = new Writer(); for (const k of keys) encodeVerificationKey(inner, k);
  return new Writer().u16(VERSION).u8(RESP.verification_keys).opaque(inner.bytes()).bytes();
}
export function encodeError(code, message) {
  return new Writer().u16(VERSION).u8(RESP.error).u16(code).opaque(Buffer.from(message)).bytes();
}

// ---- ProviderRequest (§4) ----
export function buildProviderRequest({ type, sender, recipient, timestamp, requestId, keyId, payload, priv }) {
  const tbs = new Writer().u16(VERSION).u8(type).opaque(Buffer.from(sender)).opaque(Buffer.from(recipient))
    .u64(timestamp).opaque(requestId).opaque(keyId).opaque(payload).bytes();
  const sig = signWithLabel(priv, 'MIMI provider request', tbs);
  return { tbs, sig, body: Buffer.concat([tbs, new Writer().opaque(sig).bytes()]) };
}
const uriVec = (list) => { const w = new Writer(); for (const u of list) w.opaque(Buffer.from(u)); return w.bytes(); };
export const payloads = {
  groupKeyPackages: (requester, clientIds) => new Writer().opaque(Buffer.from(requester)).opaque(uriVec(clientIds)).bytes(),
  connectionKeyPackages: (requester, userId) => new Writer().opaque(Buffer.from(requester)).opaque(Buffer.from(userId)).bytes(),
  deliverMessage: (groupId, clientIds, mlsMessage) => new Writer().opaque(groupId).opaque(uriVec(clientIds)).raw(mlsMessage).bytes(),
  connectionRequest: (userId, groupId, welcome) => new Writer().opaque(Buffer.from(userId)).opaque(groupId).raw(welcome).bytes(),
};

// ---- DSRequest (§5, §5.1) ----
export const DSREQ = { request_group_id: 0, send_message: 10, attachment_download: 18 };
// A client_signature DSRequest: version, the body (type byte and fields), DSAuthData. DSRequestTBS is every byte
// up to the signature's <V> length; signature = SignWithLabel(key, "MIMI DS request", DSRequestTBS).
export function buildDSRequest({ body, senderIndex, timestamp, priv }) {
  const tbs = new Writer().u16(VERSION).raw(body).u8(1).u32(senderIndex).u64(timestamp).bytes();
  const sig = signWithLabel(priv, 'MIMI DS request', tbs);
  return { tbs, body: Buffer.concat([tbs, new Writer().opaque(sig).bytes()]) };
}
export const dsBodies = {
  attachmentDownload: (groupId, token) => new Writer().u8(DSREQ.attachment_download).opaque(groupId).opaque(token).bytes(),
  sendMessage: (mlsMessage) => new Writer().u8(DSREQ.send_message).raw(mlsMessage).bytes(),
};

// ---- §6.2 attachment storage on the legacy backend: Mimi-Signature of a request ----
export function forwardSignature(key, timestamp, method, name, contentLength) {
  return 'v1=' + crypto.createHmac('sha256', key).update(`mimi-attachment-v1\n${timestamp}\n${method}\n${name}\n${contentLength}`).digest('hex');
}

// ---- RFC 9420 structures ----
export const SUITES = { 1: { scheme: SCHEME_ED25519, hash: 'sha256' }, 2: { scheme: SCHEME_P256, hash: 'sha256' }, 3: { scheme: SCHEME_ED25519, hash: 'sha256' } };
function decodeExtensions(r) {
  return r.vector('extensions').items((v) => ({ type: v.u16(), data: v.opaque(0, 0x3fffffff, 'extension_data') }));
}
function decodeCredential(r) {
  const credential_type = r.u16();
  if (credential_type === 1) return { credential_type, identity: r.opaque(0, 0x3fffffff, 'identity') };
  if (credential_type === 2) return { credential_type, certificates: r.vector('certificates').items((v) => v.opaque()) };
  throw new DecodeError('unknown credential type ' + credential_type);
}
const u16list = (r, name) => r.vector(name).items((v) => v.u16());
export function decodeLeafNode(r) {
  const start = r.off;
  const encryption_key = r.opaque(0, 0x3fffffff, 'encryption_key');
  const signature_key = r.opaque(0, 0x3fffffff, 'signature_key');
  const credential = decodeCredential(r);
  const capabilities = { versions: u16list(r, 'versions'), cipher_suites: u16list(r, 'cipher_suites'), extensions: u16list(r, 'extensions'), proposals: u16list(r, 'proposals'), credentials: u16list(r, 'credentials') };
  const leaf_node_source = r.u8();
  let lifetime = null;
  if (leaf_node_source === 1) lifetime = { not_before: r.u64(), not_after: r.u64() };
  else if (leaf_node_source === 3) r.opaque();
  else if (leaf_node_source !== 2) throw new DecodeError('leaf_node_source ' + leaf_node_source);
  const extensions = decodeExtensions(r);
  const tbs = r.buf.subarray(start, r.off); // LeafNodeTBS for source key_package: the fields, nothing appended
  const signature = r.opaque(0, 0x3fffffff, 'leaf signature');
  return { encryption_key, signature_key, credential, capabilities, leaf_node_source, lifetime, extensions, tbs, signature };
}
export function decodeKeyPackage(r) {
  const start = r.off;
  const version = r.u16(), cipher_suite = r.u16();
  const init_key = r.opaque(0, 0x3fffffff, 'init_key');
  const leaf_node = decodeLeafNode(r);
  const extensions = decodeExtensions(r);
  const tbs = r.buf.subarray(start, r.off);
  const signature = r.opaque(0, 0x3fffffff, 'kp signature');
  const encoded = Buffer.from(r.buf.subarray(start, r.off));
  return { version, cipher_suite, init_key, leaf_node, extensions, tbs, signature, encoded };
}
// KeyPackageRef = RefHash("MLS 1.0 KeyPackage Reference", KeyPackage) (RFC 9420 §5.2)
export function keyPackageRef(kp) {
  const input = new Writer().opaque(Buffer.from('MLS 1.0 KeyPackage Reference')).opaque(kp.encoded).bytes();
  return crypto.createHash(SUITES[kp.cipher_suite]?.hash ?? 'sha256').update(input).digest();
}
export function decodeClientBinding(data) {
  const r = new Reader(data, 'ClientBinding');
  const b = { not_after: r.u64(), key_id: r.opaque(1, 64, 'key_id'), signature: r.opaque(1, 256, 'signature') };
  r.end(); return b;
}
export function clientBindingTBS(uri, sigKey, notAfter) {
  return new Writer().opaque(Buffer.from(uri)).opaque(sigKey).u64(notAfter).bytes();
}
// MLSMessage wrappers
export function welcomeMessage(suite, secrets, encryptedGroupInfo) {
  const sw = new Writer();
  for (const s of secrets) sw.opaque(s.newMember).opaque(s.kemOutput).opaque(s.ciphertext);
  return new Writer().u16(1).u16(3).u16(suite).opaque(sw.bytes()).opaque(encryptedGroupInfo).bytes();
}
export function privateMessage(groupId, epoch, senderData, ciphertext) {
  return new Writer().u16(1).u16(2).opaque(groupId).u64(epoch).u8(1).opaque(Buffer.alloc(0)).opaque(senderData).opaque(ciphertext).bytes();
}
