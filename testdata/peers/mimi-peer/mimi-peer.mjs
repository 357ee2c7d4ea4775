#!/usr/bin/env node
// mimi-peer: an independent MIMI provider written from docs/protocol.md alone (see README.md).
import https from 'node:https';
import fs from 'node:fs';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import { Reader, Writer, DecodeError, hex } from './codec.mjs';
import * as M from './mimi.mjs';

const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    domain: { type: 'string' }, listen: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
    'ds-authority': { type: 'string' }, gateway: { type: 'string' }, 'gateway-domain': { type: 'string' },
    connect: { type: 'string' }, ca: { type: 'string' },
    user: { type: 'string', multiple: true, default: [] }, client: { type: 'string', multiple: true, default: [] },
    requester: { type: 'string' }, 'serve-after': { type: 'string', default: '0' }, 'key-seed': { type: 'string' },
    'expect-key-packages': { type: 'string' }, scheme: { type: 'string', default: 'ed25519' }, 'vk-post-405': { type: 'boolean', default: false },
  },
});
const cmd = positionals[0] ?? 'run';
let failures = 0;
const ok = (what) => console.log(`ok ${what}`);
const fail = (what, why) => { failures++; console.log(`FAIL ${what}: ${why}`); };
async function check(what, fn) {
  try { const r = await fn(); if (r === false) return; ok(what + (typeof r === 'string' ? ` (${r})` : '')); }
  catch (e) { fail(what, e instanceof Error ? e.message : String(e)); }
}
const assert = (c, msg) => { if (!c) throw new Error(msg); };
const now = () => BigInt(Math.floor(Date.now() / 1000));

// ------------------------------------------------------------------ selftest: the document's vectors
async function selftest() {
  const k = M.ed25519FromSeed(Buffer.alloc(32, 1));
  await check('§4.3 public_key', () => assert(hex(k.pub) === '8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c', hex(k.pub)));
  const kid = M.keyIdOf(M.SCHEME_ED25519, k.pub);
  await check('§4.3 key_id', () => assert(hex(kid) === '5d7a6d3a183ff16acd85709e2a0c1ac9', hex(kid)));
  const payload = M.payloads.connectionKeyPackages('mimi://a.example/u/alice', 'mimi://b.example/u/bob');
  await check('§4.3 payload', () => assert(hex(payload) === '186d696d693a2f2f612e6578616d706c652f752f616c696365166d696d693a2f2f622e6578616d706c652f752f626f62', hex(payload)));
  const pr = M.buildProviderRequest({ type: M.PREQ.connection_key_packages, sender: 'a.example', recipient: 'b.example', timestamp: 1790000060n, requestId: Buffer.alloc(16, 0x42), keyId: kid, payload, priv: k.priv });
  await check('§4.3 SignContent', () => assert(hex(M.signContent('MIMI provider request', pr.tbs)) === '1d4d4c5320312e30204d494d492070726f76696465722072657175657374407200010209612e6578616d706c6509622e6578616d706c65000000006ab13bbc1042424242424242424242424242424242105d7a6d3a183ff16acd85709e2a0c1ac930186d696d693a2f2f612e6578616d706c652f752f616c696365166d696d693a2f2f622e6578616d706c652f752f626f62', 'differs'));
  await check('§4.3 ProviderRequest', () => assert(hex(pr.body) === '00010209612e6578616d706c6509622e6578616d706c65000000006ab13bbc1042424242424242424242424242424242105d7a6d3a183ff16acd85709e2a0c1ac930186d696d693a2f2f612e6578616d706c652f752f616c696365166d696d693a2f2f622e6578616d706c652f752f626f624040d3cc8399617403b6a806ba25f0462159dbd514d4ce41ff05cb1c498c9e8e6934b9edf26a0ddd8b97b60b41b8416275547ee5de01f0c4fafba59ec95aa9d20606', hex(pr.body)));
  const vk = M.encodeVerificationKeys([{ key_id: kid, signature_scheme: M.SCHEME_ED25519, public_key: k.pub, not_before: 1790000000n, not_after: 1790000000n + 30n * 86400n }]);
  await check('§4.3 /verification_key answer', () => assert(hex(vk) === '0001054044105d7a6d3a183ff16acd85709e2a0c1ac90807208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c000000006ab13b80000000006ad8c880', hex(vk)));
  // §5.6 client binding
  const leaf = M.ed25519FromSeed(Buffer.alloc(32, 2));
  const tbs = M.clientBindingTBS('mimi://a.example/d/alice/phone', leaf.pub, 1790604800n);
  await check('§5.6 ClientBindingTBS', () => assert(hex(tbs) === '1e6d696d693a2f2f612e6578616d706c652f642f616c6963652f70686f6e65208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394000000006aba7600', hex(tbs)));
  const bsig = M.signWithLabel(k.priv, 'MIMI client binding', tbs);
  const binding = new Writer().u64(1790604800n).opaque(kid).opaque(bsig).bytes();
  await check('§5.6 ClientBinding', () => assert(hex(binding) === '000000006aba7600105d7a6d3a183ff16acd85709e2a0c1ac94040944931172d7bda921c6d015edf0b95d1f7a6a7d354c9ca440a5d532e75e7e7309039e35151361fd7db30ec9627bdd3a9bbde077f0efa9bef0e989b440baae60b', hex(binding)));
  // §3 error example and §5.5 LeafNode signature (RFC 9420 LeafNodeTBS for source key_package)
  await check('§3 error example', () => { const d = M.decodeDSResponse(Buffer.from('000101000100', 'hex')); assert(d.code === 1 && d.message === '', JSON.stringify(d)); });
  await check('§1 varint examples', () => { for (const [h, v] of [['25', 37], ['7bbd', 15293], ['9d7f3e7d', 494878333]]) { assert(new Reader(Buffer.from(h, 'hex')).varint() === v, h); } let threw = false; try { new Reader(Buffer.from('4005', 'hex')).varint(); } catch { threw = true; } assert(threw, '4005 accepted'); });
  // §5.5 signed DS requests: client_signature, sender_index 1, timestamp 1790000060, group 16 bytes of aa
  const gid = Buffer.alloc(16, 0xaa);
  const dl = M.buildDSRequest({ body: M.dsBodies.attachmentDownload(gid, Buffer.alloc(32, 0xbb)), senderIndex: 1, timestamp: 1790000060n, priv: k.priv });
  await check('§5.5 attachment_download DSRequestTBS', () => assert(hex(dl.tbs) === '00011210aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa20bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0100000001000000006ab13bbc', hex(dl.tbs)));
  await check('§5.5 attachment_download DSRequest', () => assert(hex(dl.body) === '00011210aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa20bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0100000001000000006ab13bbc40406d3e7a0ce8d3e46c670a03938f7ed71a71f3280248cca10057211e301e7c075210492f58afe1224fca40c2a48c397cbbf5b13f406bc4e0fc0977f10c54476606', hex(dl.body)));
  const pm = M.privateMessage(gid, 3n, Buffer.alloc(28), Buffer.alloc(40));
  await check('§5.5 send_message MLSMessage', () => assert(hex(pm) === '0001000210aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000000000000301001c000000000000000000000000000000000000000000000000000000002800000000000000000000000000000000000000000000000000000000000000000000000000000000', hex(pm)));
  const sm = M.buildDSRequest({ body: M.dsBodies.sendMessage(pm), senderIndex: 1, timestamp: 1790000060n, priv: k.priv });
  await check('§5.5 send_message DSRequest', () => assert(hex(sm.body) === '00010a0001000210aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000000000000000301001c0000000000000000000000000000000000000000000000000000000028000000000000000000000000000000000000000000000000000000000000000000000000000000000100000001000000006ab13bbc4040fa353e44bdf887f62d4024650ea176b4e8ff6df5134d42506682183c7ddd3b453da11bba40d91a67794c25c0f680e8f519b83cc1b6edd508bc48512f2b581904', hex(sm.body)));
  // §6.2 the forward backend's Mimi-Signature
  await check('§6.2 Mimi-Signature of a PUT', () => {
    const v = M.forwardSignature(Buffer.from('0123456789abcdef0123456789abcdef'), 1790000060, 'PUT', '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 1048576);
    assert(v === 'v1=e552ee47f94be399abc289044b1442529f5387b812e4b4b745edee3e8b219538', v);
  });
  await check('§5.5 LeafNode signature (LeafNodeTBS)', () => {
    const ln = M.decodeLeafNode(new Reader(Buffer.from('201111111111111111111111111111111111111111111111111111111111111111208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c00011e6d696d693a2f2f612e6578616d706c652f642f616c6963652f70686f6e65020001020001000002000101000000006ab13b80000000006b27e280004040d3487a498b8249fe3f158b8c17fe5a19acd9f01019e1fd4d59a77a647a8d0054aeba04a27f7f8d9280c76a65bdcb6976a08bf3c8e9c69f160288f1c8d2c2690a', 'hex')));
    assert(M.verifyWithLabel(M.SCHEME_ED25519, ln.signature_key, 'LeafNodeTBS', ln.tbs, ln.signature), 'LeafNode signature does not verify');
  });
}

// ------------------------------------------------------------------ HTTPS client
function parseHostPort(s, defPort) {
  const m = /^(.*?)(?::(\d+))?$/.exec(s); return { host: m[1], port: m[2] ? Number(m[2]) : defPort };
}
function request({ authority, path, method = 'POST', body = null, headers = {} }) {
  const a = parseHostPort(authority, 443);
  const c = opt.connect ? parseHostPort(opt.connect, 443) : a;
  return new Promise((resolve, reject) => {
    const h = { Host: authority, ...headers };
    if (body) { h['Content-Type'] ??= 'application/octet-stream'; h['Content-Length'] = body.length; }
    const req = https.request({ host: c.host, port: c.port, servername: a.host, method, path, headers: h, ca: caPem, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', agent: false, timeout: 10000 }, (res) => {
      const chunks = []; res.on('data', (d) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), tls: res.socket.getProtocol?.() }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body ?? undefined);
  });
}
function expectDSResponseHeaders(res) {
  assert((res.headers['content-type'] ?? '').toLowerCase() === 'application/octet-stream', 'Content-Type ' + res.headers['content-type']);
  assert(res.headers['cache-control'] === 'no-store', 'Cache-Control ' + res.headers['cache-control']);
  assert(Number(res.headers['content-length']) === res.body.length, 'Content-Length ' + res.headers['content-length']);
}

// ------------------------------------------------------------------ our provider identity and server
let caPem, me, gwKeys = [], dsAuthority;
function setupIdentity() {
  let k, scheme = M.SCHEME_ED25519;
  if (opt.scheme === 'p256') { k = M.p256Generate(); scheme = M.SCHEME_P256; }
  else if (opt.scheme !== 'ed25519') { console.error('--scheme is ed25519 or p256'); process.exit(2); }
  else k = opt['key-seed'] ? M.ed25519FromSeed(Buffer.from(opt['key-seed'], 'hex')) : M.ed25519Generate();
  const t = now();
  me = { priv: k.priv, public_key: k.pub, signature_scheme: scheme, key_id: M.keyIdOf(scheme, k.pub), not_before: t - 3600n, not_after: t - 3600n + 30n * 86400n };
}
function serve() {
  const l = parseHostPort(opt.listen, 443);
  const server = https.createServer({ cert: fs.readFileSync(opt.cert), key: fs.readFileSync(opt.key), minVersion: 'TLSv1.3' }, (req, res) => {
    const chunks = []; req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const path = req.url.split('?')[0];
      console.error(`peer-server: ${req.method} ${req.url} Host=${req.headers.host} body=${hex(body)}`);
      if (path === '/.well-known/mimi/ds-domain' && (req.method === 'GET' || req.method === 'HEAD')) {
        res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'max-age=3600', 'Content-Length': Buffer.byteLength(dsAuthority) });
        return res.end(req.method === 'HEAD' ? undefined : dsAuthority);
      }
      if (path === '/verification_key') {
        let out, status = 200;
        if (req.method === 'POST' && opt['vk-post-405']) { served.post405++; status = 405; out = M.encodeError(19, 'method not allowed'); res.setHeader('Allow', 'GET'); }
        else if (req.method !== 'GET' && req.method !== 'POST') { status = 405; out = M.encodeError(19, 'method not allowed'); res.setHeader('Allow', 'GET, POST'); }
        else if (body.length === 0 || body.equals(Buffer.from('0001', 'hex'))) out = M.encodeVerificationKeys([me]);
        else if (body.length >= 2 && body.readUInt16BE(0) !== 1) { status = 400; out = M.encodeError(20, 'unsupported version'); }
        else { status = 400; out = M.encodeError(1, 'malformed'); }
        if (status === 200) { served.keys++; if (req.method === 'GET') served.get++; }
        res.writeHead(status, { 'Content-Type': 'application/octet-stream', 'Cache-Control': 'no-store', 'Content-Length': out.length });
        return res.end(out);
      }
      res.writeHead(404, { 'Content-Type': 'text/plain' }); res.end('not found\n');
    });
  });
  return new Promise((resolve) => server.listen(l.port, l.host, () => resolve(server)));
}
const served = { keys: 0, get: 0, post405: 0 };

// ------------------------------------------------------------------ provider-signed requests
const PATHS = { 0: '/deliver_message', 1: '/connection_request', 2: '/connection_key_packages', 3: '/group_key_packages' };
function signed(type, payload, over = {}) {
  return M.buildProviderRequest({ type, sender: opt.domain, recipient: gatewayDomain, timestamp: now(), requestId: crypto.randomBytes(16), keyId: me.key_id, payload, priv: me.priv, ...over });
}
async function send(type, payload, over = {}, mutate = null) {
  const r = await send1(type, payload, over, mutate);
  // §4.1: a receiver that fetched our keys less than 5 s ago answers an unknown key_id 401 unknown_key
  // without refetching (e.g. after we rotated, or restarted with a new key). Retry once, re-signed, after 5 s.
  if (!over.keyId && r.resp.type === M.RESP.error && r.resp.code === 3 && !retriedUnknownKey) {
    retriedUnknownKey = true;
    console.error(`peer: ${r.resp.message}; retrying once after 5 s (§4.1 refetch rule)`);
    await new Promise((res) => setTimeout(res, 5500));
    return send1(type, payload, over, mutate);
  }
  return r;
}
let retriedUnknownKey = false;
async function send1(type, payload, over = {}, mutate = null) {
  const pr = signed(type, payload, over);
  let body = pr.body; if (mutate) body = mutate(Buffer.from(body));
  const res = await request({ authority: dsAuthorityOfGateway, path: PATHS[type], body });
  expectDSResponseHeaders(res);
  return { res, pr, body, resp: M.decodeDSResponse(res.body) };
}
function expectError(r, code) {
  assert(r.resp.type === M.RESP.error, 'answer type ' + r.resp.type + ', not error');
  assert(r.resp.code === code, `code ${r.resp.code} (${r.resp.name}: ${r.resp.message}), want ${code} (${M.ERR[code]})`);
  assert(r.res.status === M.ERR_STATUS[code], `HTTP ${r.res.status}, want ${M.ERR_STATUS[code]}`);
  return `${r.res.status} ${M.ERR[code]}: ${r.resp.message}`;
}
function expectType(r, type) {
  if (r.resp.type === M.RESP.error) throw new Error(`HTTP ${r.res.status} error ${r.resp.code} ${r.resp.name}: ${r.resp.message}`);
  assert(r.res.status === 200, 'HTTP ' + r.res.status);
  assert(r.resp.type === type, `answer type ${r.resp.type}, want ${type}`);
}
function checkKeyPackage(kp, expectClient) {
  assert(kp.version === 1, 'KeyPackage version ' + kp.version);
  const suite = M.SUITES[kp.cipher_suite]; assert(suite, 'cipher suite ' + kp.cipher_suite + ' not verifiable by this peer');
  const ln = kp.leaf_node;
  assert(ln.leaf_node_source === 1, 'leaf_node_source ' + ln.leaf_node_source);
  assert(ln.credential.credential_type === 1, 'credential type ' + ln.credential.credential_type);
  const id = ln.credential.identity.toString();
  assert(M.parseClientURI(id), 'identity is not a ClientURI: ' + id);
  if (expectClient) assert(id === expectClient, `identity ${id}, want ${expectClient}`);
  const t = now(); assert(ln.lifetime.not_before <= t && t <= ln.lifetime.not_after, 'outside lifetime');
  assert(ln.capabilities.versions.includes(1) && ln.capabilities.cipher_suites.includes(kp.cipher_suite), 'capabilities lack version/suite');
  assert(!kp.init_key.equals(ln.encryption_key), 'init_key equals encryption_key');
  assert(M.verifyWithLabel(suite.scheme, ln.signature_key, 'LeafNodeTBS', ln.tbs, ln.signature), 'LeafNode signature does not verify');
  assert(M.verifyWithLabel(suite.scheme, ln.signature_key, 'KeyPackageTBS', kp.tbs, kp.signature), 'KeyPackage signature does not verify');
  // client binding §5.6, verified with the gateway's published keys
  const ext = ln.extensions.find((e) => e.type === 0xF0A1);
  assert(ext, 'no client binding extension 0xF0A1');
  assert(ln.capabilities.extensions.includes(0xF0A1), 'capabilities.extensions lacks 0xF0A1');
  const b = M.decodeClientBinding(ext.data);
  assert(t <= b.not_after, 'binding expired');
  const pk = gwKeys.find((k) => k.key_id.equals(b.key_id));
  assert(pk, 'binding key_id ' + hex(b.key_id) + ' not among the gateway keys');
  assert(M.verifyWithLabel(pk.signature_scheme, pk.public_key, 'MIMI client binding', M.clientBindingTBS(id, ln.signature_key, b.not_after), b.signature), 'client binding signature does not verify');
  return id;
}

let gatewayDomain, dsAuthorityOfGateway;
async function run() {
  for (const o of ['domain', 'listen', 'cert', 'key', 'gateway', 'ca']) if (!opt[o]) { console.error(`missing --${o}`); process.exit(2); }
  caPem = fs.readFileSync(opt.ca);
  gatewayDomain = opt['gateway-domain'] ?? parseHostPort(opt.gateway, 443).host;
  dsAuthority = opt['ds-authority'] ?? opt.domain;
  setupIdentity();
  const server = await serve();
  console.error(`peer-server: listening on ${opt.listen} as ${opt.domain}, ds authority ${dsAuthority}, key_id ${hex(me.key_id)}`);

  // 1. discovery and the gateway's keys
  dsAuthorityOfGateway = opt.gateway;
  await check('discovery /.well-known/mimi/ds-domain', async () => {
    const res = await request({ authority: opt.gateway, path: '/.well-known/mimi/ds-domain', method: 'GET' });
    assert(res.tls === 'TLSv1.3', 'TLS ' + res.tls);
    assert(res.status === 200, 'HTTP ' + res.status);
    assert(res.headers['content-type'] === 'text/plain; charset=utf-8', 'Content-Type ' + res.headers['content-type']);
    assert(res.headers['cache-control'] === 'max-age=3600', 'Cache-Control ' + res.headers['cache-control']);
    const a = res.body.toString().trim();
    assert(M.isAuthority(a), 'not a DS authority: ' + JSON.stringify(a));
    assert(!/\s$/.test(res.body.toString()), 'trailing white space');
    // the DS authority is where the provider endpoints live; with --connect we still dial the override.
    dsAuthorityOfGateway = a;
    return a;
  });
  await check('discovery HEAD', async () => {
    const res = await request({ authority: opt.gateway, path: '/.well-known/mimi/ds-domain', method: 'HEAD' });
    assert(res.status === 200 && res.body.length === 0, `HTTP ${res.status}, ${res.body.length} bytes`);
  });
  await check('/verification_key POST 0001', async () => {
    const res = await request({ authority: dsAuthorityOfGateway, path: '/verification_key', body: Buffer.from('0001', 'hex') });
    expectDSResponseHeaders(res);
    assert(res.status === 200, 'HTTP ' + res.status);
    const d = M.decodeDSResponse(res.body);
    assert(d.type === M.RESP.verification_keys, 'type ' + d.type);
    assert(d.keys.length >= 1, 'no keys');
    const t = now();
    for (const k of d.keys) {
      assert(k.not_before <= k.not_after && k.not_after - k.not_before <= 90n * 86400n, 'bad validity');
      assert(k.not_after >= t, 'expired key published');
      if (k.signature_scheme === M.SCHEME_ED25519) assert(k.public_key.length === 32, 'Ed25519 key length');
      else if (k.signature_scheme === M.SCHEME_P256) assert(k.public_key.length === 65 && k.public_key[0] === 4, 'P-256 key not uncompressed');
      else throw new Error('unknown scheme ' + k.signature_scheme);
      M.publicKeyObject(k.signature_scheme, k.public_key);
      assert(M.keyIdOf(k.signature_scheme, k.public_key).equals(k.key_id), 'key_id is not SHA-256(scheme||public_key)[:16]');
    }
    for (let i = 1; i < d.keys.length; i++) assert(d.keys[i - 1].not_before >= d.keys[i].not_before, 'not newest first');
    assert(d.keys.some((k) => k.not_before <= t && t <= k.not_after), 'no key valid now');
    gwKeys = d.keys;
    return `${d.keys.length} key(s), current ${hex(d.keys[0].key_id)}`;
  });
  await check('/verification_key GET empty', async () => {
    const res = await request({ authority: dsAuthorityOfGateway, path: '/verification_key', method: 'GET' });
    assert(res.status === 200, 'HTTP ' + res.status);
    const d = M.decodeDSResponse(res.body); assert(d.type === M.RESP.verification_keys && d.keys.length === gwKeys.length, 'differs from POST');
  });
  await check('/verification_key version 0002 -> 400 unsupported_version', async () => {
    const res = await request({ authority: dsAuthorityOfGateway, path: '/verification_key', body: Buffer.from('0002', 'hex') });
    const d = M.decodeDSResponse(res.body); assert(res.status === 400 && d.code === 20, `HTTP ${res.status} code ${d.code}`);
  });

  // 3. provider-signed requests
  const requester = opt.requester ?? `mimi://${opt.domain}/u/peer`;
  const claimed = [];
  const userClaimed = new Map(); // user URI -> the KeyPackages connection_key_packages handed out
  if (opt.client.length) {
    await check('group_key_packages', async () => {
      const foreign = `mimi://${opt.domain}/d/nobody/x`;
      const ids = [...opt.client, foreign];
      const r = await send(M.PREQ.group_key_packages, M.payloads.groupKeyPackages(requester, ids));
      expectType(r, M.RESP.key_packages);
      assert(r.resp.missing.includes(foreign), 'foreign client not in missing: ' + JSON.stringify(r.resp.missing));
      const got = r.resp.key_packages.map((kp) => checkKeyPackage(kp));
      // order of client_ids, each client at most once
      let pos = -1; for (const id of got) { const i = opt.client.indexOf(id); assert(i > pos, 'KeyPackages not in client_ids order: ' + got); pos = i; }
      for (const c of opt.client) assert(got.includes(c) !== r.resp.missing.includes(c), `${c} neither (or both) answered and missing`);
      claimed.push(...r.resp.key_packages);
      if (opt['expect-key-packages']) assert(got.length >= Number(opt['expect-key-packages']), `${got.length} KeyPackages`);
      return `${got.length} KeyPackage(s) verified (leaf, KeyPackage and binding signatures), missing ${JSON.stringify(r.resp.missing)}`;
    });
  }
  for (const u of opt.user) {
    await check(`connection_key_packages ${u}`, async () => {
      const r = await send(M.PREQ.connection_key_packages, M.payloads.connectionKeyPackages(requester, u));
      expectType(r, M.RESP.key_packages);
      assert(r.resp.missing.length === 0, 'missing not empty');
      const up = M.parseUserURI(u);
      const ids = r.resp.key_packages.map((kp) => checkKeyPackage(kp));
      for (const id of ids) { const c = M.parseClientURI(id); assert(c.provider === up.provider && c.user === up.user, `${id} is not a client of ${u}`); }
      for (let i = 1; i < ids.length; i++) assert(Buffer.compare(Buffer.from(ids[i - 1]), Buffer.from(ids[i])) < 0, 'not ordered by client URI');
      claimed.push(...r.resp.key_packages);
      userClaimed.set(u, r.resp.key_packages);
      return `${ids.length} KeyPackage(s) verified`;
    });
  }
  await check('connection_key_packages of an unknown user -> empty list', async () => {
    const r = await send(M.PREQ.connection_key_packages, M.payloads.connectionKeyPackages(requester, `mimi://${gatewayDomain}/u/no-such-user-${crypto.randomBytes(4).toString('hex')}`));
    expectType(r, M.RESP.key_packages); assert(r.resp.key_packages.length === 0 && r.resp.missing.length === 0, 'not empty');
  });
  await check('requester of another provider -> 403 forbidden', async () => {
    const r = await send(M.PREQ.connection_key_packages, M.payloads.connectionKeyPackages(`mimi://${gatewayDomain}/u/mallory`, `mimi://${gatewayDomain}/u/x`));
    return expectError(r, 18);
  });

  // connection_request (§4.2): a Welcome into a connection group this peer hosts, adding the KeyPackages
  // connection_key_packages handed out; then §4 step 8 for a request type whose ids are recorded.
  for (const [u, kps] of userClaimed) {
    if (!kps.length) continue;
    const gid = crypto.randomBytes(16);
    const secrets = kps.map((kp) => ({ newMember: M.keyPackageRef(kp), kemOutput: crypto.randomBytes(32), ciphertext: crypto.randomBytes(48) }));
    const payload = M.payloads.connectionRequest(u, gid, M.welcomeMessage(kps[0].cipher_suite, secrets, crypto.randomBytes(96)));
    let firstConn;
    await check(`connection_request ${u} adding the claimed KeyPackages -> queueing ok`, async () => {
      const r = await send(M.PREQ.connection_request, payload);
      expectType(r, M.RESP.queueing);
      assert(r.resp.status === 0 && r.resp.unknown.length === 0, `status ${r.resp.status} unknown ${JSON.stringify(r.resp.unknown)}`);
      firstConn = r;
      return `group ${hex(gid)}`;
    });
    if (!firstConn) continue;
    await check('connection_request byte-identical retry -> the recorded answer (§4 step 8)', async () => {
      const res = await request({ authority: dsAuthorityOfGateway, path: '/connection_request', body: firstConn.body });
      expectDSResponseHeaders(res);
      assert(res.status === firstConn.res.status && res.body.equals(firstConn.res.body), `HTTP ${res.status} ${hex(res.body)}`);
    });
    await check('connection_request same request_id, other bytes -> 409 replay (§4 step 8)', async () => {
      const r0 = new Reader(firstConn.body); r0.u16(); r0.u8(); r0.opaque(); r0.opaque(); const ts = r0.u64(); const requestId = Buffer.from(r0.opaque());
      return expectError(await send(M.PREQ.connection_request, payload, { requestId, timestamp: ts - 1n }), 5);
    });
  }

  // deliver_message: a Welcome for a group this peer hosts, then an application message
  const recipients = opt.client.length ? opt.client : [];
  if (recipients.length) {
    const groupId = crypto.randomBytes(16);
    const suite = claimed[0]?.cipher_suite ?? 1;
    const secrets = (claimed.length ? claimed : [null]).map((kp) => ({ newMember: kp ? M.keyPackageRef(kp) : crypto.randomBytes(32), kemOutput: crypto.randomBytes(32), ciphertext: crypto.randomBytes(48) }));
    const welcome = M.welcomeMessage(suite, secrets, crypto.randomBytes(96));
    const foreign = `mimi://${opt.domain}/d/peer/phone`;
    let first;
    await check('deliver_message Welcome', async () => {
      const r = await send(M.PREQ.deliver_message, M.payloads.deliverMessage(groupId, [...recipients, foreign], welcome));
      expectType(r, M.RESP.queueing);
      assert(r.resp.status === 1, 'status ' + r.resp.status + ' with a foreign client id, want invalid_client_queue_information(1)');
      assert(JSON.stringify(r.resp.unknown) === JSON.stringify([foreign]), 'unknown ' + JSON.stringify(r.resp.unknown));
      first = r;
      return `group ${hex(groupId)}, unknown ${JSON.stringify(r.resp.unknown)}`;
    });
    await check('deliver_message byte-identical retry -> recorded answer', async () => {
      const res = await request({ authority: dsAuthorityOfGateway, path: '/deliver_message', body: first.body });
      assert(res.status === first.res.status && res.body.equals(first.res.body), `HTTP ${res.status} ${hex(res.body)}`);
    });
    await check('deliver_message same request_id, other bytes -> a request of its own (§4 step 8)', async () => {
      // deliver_message ids are not recorded: the same id with other bytes (here the Welcome
      // to the gateway's clients alone) is processed; by §4.2 step 4 it is the delivery made
      // before (same message, same local clients), so it is answered from its own client_ids.
      const r0 = new Reader(first.body); r0.u16(); r0.u8(); r0.opaque(); r0.opaque(); r0.u64(); const requestId = Buffer.from(r0.opaque());
      const r = await send(M.PREQ.deliver_message, M.payloads.deliverMessage(groupId, recipients, welcome), { requestId, timestamp: now() - 1n });
      expectType(r, M.RESP.queueing);
      assert(r.resp.status === 0 && r.resp.unknown.length === 0, `status ${r.resp.status} unknown ${JSON.stringify(r.resp.unknown)}`);
    });
    await check('deliver_message Welcome naming no client of the gateway, then a message of that group', async () => {
      const g2 = crypto.randomBytes(16);
      const r = await send(M.PREQ.deliver_message, M.payloads.deliverMessage(g2, [foreign], welcome));
      expectType(r, M.RESP.queueing);
      assert(r.resp.status === 1 && r.resp.unknown.length === 1, `status ${r.resp.status} unknown ${JSON.stringify(r.resp.unknown)}`);
      const r2 = await send(M.PREQ.deliver_message, M.payloads.deliverMessage(g2, recipients, M.privateMessage(g2, 0n, crypto.randomBytes(28), crypto.randomBytes(40))));
      if (r2.resp.type === M.RESP.error) return `the Welcome did not record the hub: then ${r2.res.status} ${r2.resp.name}`;
      expectType(r2, M.RESP.queueing);
      return 'the Welcome recorded the hub although it was queued nowhere; the message was then queued';
    });
    const app = M.privateMessage(groupId, 0n, crypto.randomBytes(28), crypto.randomBytes(40));
    await check('deliver_message application message', async () => {
      const r = await send(M.PREQ.deliver_message, M.payloads.deliverMessage(groupId, recipients, app));
      expectType(r, M.RESP.queueing);
      assert(r.resp.status === 0 && r.resp.unknown.length === 0, `status ${r.resp.status} unknown ${JSON.stringify(r.resp.unknown)}`);
    });
    await check('deliver_message duplicate under a new request_id -> same answer', async () => {
      const r = await send(M.PREQ.deliver_message, M.payloads.deliverMessage(groupId, recipients, app));
      expectType(r, M.RESP.queueing); assert(r.resp.status === 0, 'status ' + r.resp.status);
    });
    await check('deliver_message for an unknown group (not a Welcome) -> 404 not_found', async () => {
      const r = await send(M.PREQ.deliver_message, M.payloads.deliverMessage(crypto.randomBytes(16), recipients, app));
      return expectError(r, 7);
    });
  }

  // error answers
  const probe = () => M.payloads.connectionKeyPackages(requester, `mimi://${gatewayDomain}/u/x`);
  await check('corrupted signature -> 401 bad_signature', async () => {
    const r = await send(M.PREQ.connection_key_packages, probe(), {}, (b) => { b[b.length - 1] ^= 0x01; return b; });
    return expectError(r, 2);
  });
  await check('wrong recipient -> 421 recipient_mismatch', async () => expectError(await send(M.PREQ.connection_key_packages, probe(), { recipient: 'elsewhere.localhost' }), 6));
  await check('stale timestamp -> 401 stale_timestamp', async () => expectError(await send(M.PREQ.connection_key_packages, probe(), { timestamp: now() - 400n }), 4));
  await check('unknown key_id -> 401 unknown_key', async () => expectError(await send(M.PREQ.connection_key_packages, probe(), { keyId: crypto.randomBytes(16) }), 3));
  await check('request type not matching the path -> 400 wrong_request_type', async () => {
    const pr = signed(M.PREQ.group_key_packages, M.payloads.groupKeyPackages(requester, ['mimi://x.localhost/d/a/b']));
    const res = await request({ authority: dsAuthorityOfGateway, path: '/connection_key_packages', body: pr.body });
    return expectError({ res, resp: M.decodeDSResponse(res.body) }, 17);
  });
  await check('connection_request whose Welcome adds no KeyPackage of the user -> 404 not_found (§4.2)', async () => {
    const welcome = M.welcomeMessage(1, [{ newMember: crypto.randomBytes(32), kemOutput: crypto.randomBytes(32), ciphertext: crypto.randomBytes(48) }], crypto.randomBytes(64));
    const payload = new Writer().opaque(Buffer.from(`mimi://${gatewayDomain}/u/x`)).opaque(crypto.randomBytes(16)).raw(welcome).bytes();
    return expectError(await send(M.PREQ.connection_request, payload), 7);
  });
  await check('deliver_message whose MLSMessage is a KeyPackage -> 400 malformed', async () => {
    if (!claimed.length) return false; // needs a well-formed KeyPackage to wrap
    const bogus = new Writer().u16(1).u16(5).raw(claimed[0].encoded).bytes(); // a valid mls_key_package MLSMessage
    return expectError(await send(M.PREQ.deliver_message, M.payloads.deliverMessage(crypto.randomBytes(16), [`mimi://${gatewayDomain}/d/x/y`], bogus)), 1);
  });
  await check('ProviderRequest with protocol_version 2 -> 400 unsupported_version', async () => {
    const r = await send1(M.PREQ.connection_key_packages, probe(), {}, (b) => { b[1] = 2; return b; });
    return expectError(r, 20);
  });
  await check('group_key_packages naming a client twice -> 400 malformed (§4.2)', async () => {
    const twice = `mimi://${opt.domain}/d/nobody/twice`;
    return expectError(await send(M.PREQ.group_key_packages, M.payloads.groupKeyPackages(requester, [twice, twice])), 1);
  });

  // the DS endpoints (§5): what a client of any provider sends to the gateway's DS
  await check('request_group_id 00010000 -> group_id(2) of 16 bytes (§5.5)', async () => {
    const res = await request({ authority: dsAuthorityOfGateway, path: '/group_operation', body: Buffer.from('00010000', 'hex') });
    expectDSResponseHeaders(res);
    const d = M.decodeDSResponse(res.body);
    assert(res.status === 200 && d.type === M.RESP.group_id && d.group_id.length === 16, `HTTP ${res.status} ${hex(res.body)}`);
    assert(res.body.subarray(0, 4).equals(Buffer.from('00010210', 'hex')), 'answer does not start 00010210');
  });
  await check('the §5.5 attachment_download example, its timestamp long past -> 401 stale_timestamp', async () => {
    const dl = M.buildDSRequest({ body: M.dsBodies.attachmentDownload(Buffer.alloc(16, 0xaa), Buffer.alloc(32, 0xbb)), senderIndex: 1, timestamp: 1790000060n, priv: M.ed25519FromSeed(Buffer.alloc(32, 1)).priv });
    const res = await request({ authority: dsAuthorityOfGateway, path: '/attachment_download', body: dl.body });
    expectDSResponseHeaders(res);
    return expectError({ res, resp: M.decodeDSResponse(res.body) }, 4);
  });
  await check('a DS request type on another endpoint -> 400 wrong_request_type (§5.4 step 2)', async () => {
    const res = await request({ authority: dsAuthorityOfGateway, path: '/welcome_information', body: Buffer.from('00010000', 'hex') });
    expectDSResponseHeaders(res);
    return expectError({ res, resp: M.decodeDSResponse(res.body) }, 17);
  });
  // §2.3 steps 2 and 4: method, content type and empty body, before any decoding
  const refusal = (what, req, code, extra) => check(what, async () => {
    const res = await request({ authority: dsAuthorityOfGateway, ...req });
    expectDSResponseHeaders(res);
    const out = expectError({ res, resp: M.decodeDSResponse(res.body) }, code);
    if (extra) extra(res);
    return out;
  });
  await refusal('PUT /deliver_message -> 405 method_not_allowed with Allow: POST (§2.3)', { path: '/deliver_message', method: 'PUT', body: Buffer.from('0001', 'hex') }, 19,
    (res) => assert(res.headers.allow === 'POST', 'Allow ' + res.headers.allow));
  await refusal('POST /deliver_message as text/plain -> 415 unsupported_media_type (§2.3)', { path: '/deliver_message', body: Buffer.from('0001', 'hex'), headers: { 'Content-Type': 'text/plain' } }, 16);
  await refusal('POST /deliver_message with an empty body -> 400 malformed (§2.3)', { path: '/deliver_message', headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': 0 } }, 1);
  await refusal('GET /welcome_information without body or content type -> 415 (§2.3)', { path: '/welcome_information', method: 'GET' }, 16);
  await refusal('GET /welcome_information, octet-stream, no body -> 400 malformed (§2.3)', { path: '/welcome_information', method: 'GET', headers: { 'Content-Type': 'application/octet-stream' } }, 1);
  await check('gateway fetched our verification key', () => assert(served.keys > 0, 'no /verification_key request reached the peer'));
  if (opt['vk-post-405']) await check('gateway fell back to GET after our 405 (§4.1)', () => assert(served.post405 > 0 && served.get > 0, `POST 405 ${served.post405}, GET ${served.get}`));

  const linger = Number(opt['serve-after']);
  if (linger > 0) await new Promise((r) => setTimeout(r, linger * 1000));
  server.close();
  console.log(failures ? `${failures} check(s) failed` : 'all checks passed');
  process.exit(failures ? 1 : 0);
}

if (cmd === 'selftest') { await selftest(); console.log(failures ? `${failures} check(s) failed` : 'all checks passed'); process.exit(failures ? 1 : 0); }
else if (cmd === 'run') await run();
else { console.error('usage: mimi-peer.mjs [run|selftest] ...'); process.exit(2); }
