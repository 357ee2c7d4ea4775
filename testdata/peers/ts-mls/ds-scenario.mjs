#!/usr/bin/env node
// ds-scenario: an independent MLS peer (ts-mls, RFC 9420 in TypeScript)
// plays a group scenario and writes, as JSON, every request its clients
// would send to a MIMI Delivery Service (docs/protocol.md §5), with the
// members' signature private keys, so that the requests can be
// client-signed and submitted to the gateway by the Go tests
// (caddymodule/integration/tsmls_test.go). See README.md here and
// testdata/mls/README.md for the transcript's layout.
//
//   node ds-scenario.mjs --suite 1|2 [--provider NAME] [--out FILE]
//
// The keys are random: every run gives other bytes. The program checks its
// own run as it goes (every member agrees on each epoch, every
// application message is decrypted by the members it was sent to, each
// exported private key gives the member's public key) and exits non-zero
// when a check fails.

import { createPrivateKey, createPublicKey, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import {
  acceptAll,
  createApplicationMessage,
  createCommit,
  createGroup,
  createGroupInfoWithExternalPub,
  createProposal,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  joinGroupExternal,
  processMessage,
} from "ts-mls";
import { encode } from "ts-mls/codec/tlsEncoder.js";
import { groupContextEncoder } from "ts-mls/groupContext.js";
import { makeKeyPackageRef } from "ts-mls/keyPackage.js";
import { ratchetTreeEncoder } from "ts-mls/ratchetTree.js";

const SUITES = {
  1: "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
  2: "MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
};

const { values: opts } = parseArgs({
  options: {
    suite: { type: "string", default: "1" },
    provider: { type: "string", default: "ts.localhost" },
    out: { type: "string" },
  },
});
const suite = Number(opts.suite);
if (!SUITES[suite]) {
  console.error(`ds-scenario: --suite must be 1 or 2, not ${opts.suite}`);
  process.exit(2);
}

const hex = (b) => Buffer.from(b).toString("hex");
const text = (s) => new TextEncoder().encode(s);
const fail = (msg) => {
  throw new Error(`ds-scenario: ${msg}`);
};
const eq = (a, b) => Buffer.from(a).equals(Buffer.from(b));

const impl = await getCiphersuiteImpl(getCiphersuiteFromName(SUITES[suite]));

const mlsHex = (m) => hex(encodeMlsMessage({ version: "mls10", ...m }));
const groupInfoHex = (groupInfo) => mlsHex({ wireformat: "mls_group_info", groupInfo });
const publicHex = (publicMessage) => mlsHex({ wireformat: "mls_public_message", publicMessage });

// signaturePrivateKey returns a ts-mls signature private key in the form of
// the MLS test vectors (the 32-byte seed for Ed25519, the big-endian scalar
// for ECDSA), checked against the public key.
async function signaturePrivateKey(priv, pub) {
  let raw;
  if (suite === 1) {
    // ts-mls keeps WebCrypto's PKCS#8 (48 bytes); the seed is its tail.
    raw = priv.length === 32 ? priv : priv.subarray(priv.length - 32);
    const k = createPrivateKey({ key: Buffer.from(priv.length === 32 ? pkcs8Ed25519(priv) : priv), format: "der", type: "pkcs8" });
    const derived = createPublicKey(k).export({ format: "der", type: "spki" }).subarray(-32);
    if (!eq(derived, pub)) fail("the exported Ed25519 key does not give the member's public key");
  } else {
    raw = priv;
    // ts-mls 1.6.4 writes P-256 public keys compressed (33 bytes), where
    // RFC 9420 §5.1.1 asks for the uncompressed point.
    const { p256 } = await import("@noble/curves/nist.js");
    if (!eq(p256.getPublicKey(raw, pub.length === 33), pub))
      fail("the exported P-256 key does not give the member's public key");
  }
  return hex(raw);
}

function pkcs8Ed25519(seed) {
  return Buffer.concat([Buffer.from("302e020100300506032b657004220420", "hex"), Buffer.from(seed)]);
}

// Clients: each a device of a user of the provider (MIMI client URIs).
const clients = new Map();
async function newClient(name, user, device) {
  const identityText = `mimi://${opts.provider}/d/${user}/${device}`;
  const kp = await generateKeyPackage(
    { credentialType: "basic", identity: text(identityText) },
    defaultCapabilities(),
    defaultLifetime,
    [],
    impl,
  );
  const pub = kp.publicPackage.leafNode.signaturePublicKey;
  const c = {
    name,
    kp,
    state: undefined,
    json: {
      name,
      identity: hex(text(identityText)),
      identity_text: identityText,
      credential_type: "basic",
      signature_public_key: hex(pub),
      signature_private_key: await signaturePrivateKey(kp.privatePackage.signaturePrivateKey, pub),
      key_package: mlsHex({ wireformat: "mls_key_package", keyPackage: kp.publicPackage }),
      key_package_ref: hex(await makeKeyPackageRef(kp.publicPackage, impl.hash)),
      leaf_index: null,
    },
  };
  clients.set(name, c);
  return c;
}

const A = await newClient("A", "alice", "phone");
const B = await newClient("B", "bob", "phone");
const C = await newClient("C", "carol", "phone");
const A2 = await newClient("A2", "alice", "laptop");

const members = () => [...clients.values()].filter((c) => c.state && c.state.groupActiveState.kind === "active");
const leafOf = (c) => c.state.privatePath.leafIndex;

const requests = [];
const epochs = [];
let seq = 0;

// recordEpoch records the epoch every member is now in, after checking
// that all agree on it; signer signs the GroupInfo the DS will serve.
async function recordEpoch(causedBy, note, groupInfo, signer) {
  const ms = members();
  const ref = ms[0].state;
  for (const m of ms) {
    if (m.state.groupContext.epoch !== ref.groupContext.epoch) fail(`${m.name} is in epoch ${m.state.groupContext.epoch}`);
    if (!eq(m.state.keySchedule.epochAuthenticator, ref.keySchedule.epochAuthenticator))
      fail(`${m.name} disagrees on epoch ${ref.groupContext.epoch}`);
    m.json.leaf_index = leafOf(m);
  }
  epochs.push({
    epoch: Number(ref.groupContext.epoch),
    caused_by_seq: causedBy,
    note,
    members: ms.map((m) => ({ leaf_index: leafOf(m), client: m.name })).sort((x, y) => x.leaf_index - y.leaf_index),
    ratchet_tree: hex(encode(ratchetTreeEncoder)(ref.ratchetTree)),
    tree_hash: hex(ref.groupContext.treeHash),
    group_context: hex(encode(groupContextEncoder)(ref.groupContext)),
    epoch_authenticator: hex(ref.keySchedule.epochAuthenticator),
    group_info: groupInfoHex(groupInfo),
    group_info_signer: signer.name,
    group_info_signer_leaf_index: leafOf(signer),
  });
}

// apply has every member but the sender process a PublicMessage.
async function apply(sender, msg, others) {
  for (const m of others) {
    const r = await processMessage(msg, m.state, emptyPskIndex, acceptAll, impl);
    if (r.kind !== "newState") fail(`${m.name} got ${r.kind} for ${sender.name}'s handshake`);
    m.state = r.newState;
  }
}

// commit has c commit extraProposals (and its pending proposals, by
// reference) as request type typ; the others process it.
async function commit(c, typ, extraProposals, note, joiners = []) {
  const others = members().filter((m) => m !== c);
  const res = await createCommit({ state: c.state, cipherSuite: impl }, { extraProposals, wireAsPublicMessage: true });
  const epoch = Number(c.state.groupContext.epoch);
  c.state = res.newState;
  await apply(c, res.commit, others);
  const welcomes = [];
  if (res.welcome) {
    welcomes.push(mlsHex({ wireformat: "mls_welcome", welcome: res.welcome }));
    // The joiners take the tree out of band, as a MIMI joiner does from
    // /welcome_information; the Welcome carries none.
    for (const j of joiners) {
      j.state = await joinGroup(res.welcome, j.kp.publicPackage, j.kp.privatePackage, emptyPskIndex, impl, c.state.ratchetTree);
    }
  } else if (joiners.length) {
    fail("no Welcome for the joiners");
  }
  const gi = await createGroupInfoWithExternalPub(c.state, [], impl);
  requests.push({
    seq: ++seq,
    request_type: typ,
    from: c.name,
    auth: "client_signature",
    sender_index: leafOf(c),
    epoch,
    epoch_after: Number(c.state.groupContext.epoch),
    note,
    commit: mlsHex(res.commit),
    has_path: res.commit.publicMessage.content.commit.path !== undefined,
    group_info: groupInfoHex(gi),
    welcomes,
    joiners: joiners.map((j) => j.name),
  });
  await recordEpoch(seq, note, gi, c);
}

// send has c send an application message, decrypted by every other member.
async function send(c, plaintext, note) {
  const others = members().filter((m) => m !== c);
  const r = await createApplicationMessage(c.state, text(plaintext), impl);
  c.state = r.newState;
  const msg = { version: "mls10", wireformat: "mls_private_message", privateMessage: r.privateMessage };
  for (const m of others) {
    const got = await processMessage(msg, m.state, emptyPskIndex, acceptAll, impl);
    if (got.kind !== "applicationMessage" || new TextDecoder().decode(got.message) !== plaintext)
      fail(`${m.name} did not decrypt ${c.name}'s message`);
    m.state = got.newState;
  }
  requests.push({
    seq: ++seq,
    request_type: "send_message",
    from: c.name,
    auth: "client_signature",
    sender_index: leafOf(c),
    epoch: Number(c.state.groupContext.epoch),
    note,
    message: hex(encodeMlsMessage(msg)),
    plaintext_text: plaintext,
    decrypted_by: others.map((m) => m.name),
  });
}

// 0. A creates the group; the DS learns it from create_group.
const groupId = randomBytes(16);
A.state = await createGroup(groupId, A.kp.publicPackage, A.kp.privatePackage, [], impl);
{
  const gi = await createGroupInfoWithExternalPub(A.state, [], impl);
  const leaf = A.state.ratchetTree[0];
  if (leaf?.nodeType !== "leaf") fail("the creator's tree has no leaf 0");
  requests.push({
    seq: ++seq,
    request_type: "create_group",
    from: "A",
    auth: "client_signature",
    sender_index: 0,
    epoch: 0,
    epoch_after: 0,
    note: "A creates the group: its leaf and the epoch-0 GroupInfo",
    group_info: groupInfoHex(gi),
  });
  await recordEpoch(seq, "A creates the group", gi, A);
}

// 1. A adds B and C in one commit, with one Welcome for both.
const add = (c) => ({ proposalType: "add", add: { keyPackage: c.kp.publicPackage } });
await commit(A, "add_users", [add(B), add(C)], "A commits Add(B), Add(C) by value; one Welcome, no tree in it", [B, C]);

// 2. B sends an application message.
await send(B, "hello from B (ts-mls)", "B's application message, decrypted by A and C");

// 3. B updates: an empty commit with an UpdatePath.
await commit(B, "update_client", [], "B commits nothing but an UpdatePath (its leaf and path keys renewed)");

// 4. A removes C (carol's only client).
await commit(A, "remove_users", [{ proposalType: "remove", remove: { removed: leafOf(C) } }], "A commits Remove(C)");
if (C.state.groupActiveState.kind !== "removedFromGroup") fail(`C sees ${C.state.groupActiveState.kind} after its removal`);

// 5. A sends an application message to B.
await send(A, "hello from A after C left (ts-mls)", "A's application message, decrypted by B");

// 6. A's laptop joins by an external commit, from the GroupInfo A served
//    and the tree: alice is in the group, so it is her new client.
{
  const others = members();
  const last = epochs[epochs.length - 1];
  const gi = await createGroupInfoWithExternalPub(A.state, [], impl);
  const epoch = Number(A.state.groupContext.epoch);
  const { publicMessage, newState } = await joinGroupExternal(
    gi,
    A2.kp.publicPackage,
    A2.kp.privatePackage,
    false,
    impl,
    A.state.ratchetTree,
  );
  A2.state = newState;
  const msg = { version: "mls10", wireformat: "mls_public_message", publicMessage };
  await apply(A2, msg, others);
  const joinedGI = await createGroupInfoWithExternalPub(A2.state, [], impl);
  requests.push({
    seq: ++seq,
    request_type: "external_join",
    from: "A2",
    auth: "anonymous",
    epoch,
    epoch_after: Number(A2.state.groupContext.epoch),
    note: `A2 (alice's laptop) joins by an external commit, from epoch ${last.epoch}'s GroupInfo and tree`,
    commit: publicHex(publicMessage),
    has_path: true,
    group_info: groupInfoHex(joinedGI),
    external_group_info: groupInfoHex(gi),
  });
  await recordEpoch(seq, "after A2's external commit", joinedGI, A2);
}

// 7. B proposes its own removal; A commits it by reference (with a path).
{
  const p = await createProposal(B.state, true, { proposalType: "remove", remove: { removed: leafOf(B) } }, impl);
  B.state = p.newState;
  await apply(B, p.message, members().filter((m) => m !== B));
  requests.push({
    seq: ++seq,
    request_type: "self_remove_client",
    from: "B",
    auth: "client_signature",
    sender_index: leafOf(B),
    epoch: Number(B.state.groupContext.epoch),
    note: "B proposes Remove(B), a PublicMessage proposal kept by the DS until a commit covers it",
    proposal: mlsHex(p.message),
  });
}
await commit(A, "update_client", [], "A commits B's self-remove by reference, with an UpdatePath");
if (B.state.groupActiveState.kind !== "removedFromGroup") fail(`B sees ${B.state.groupActiveState.kind} after its removal`);

// 8. A2 sends an application message to A.
await send(A2, "hello from alice's laptop (ts-mls)", "A2's application message, decrypted by A");

const { version: libraryVersion } = JSON.parse(
  readFileSync(new URL("./node_modules/ts-mls/package.json", import.meta.url), "utf8"),
);
const transcript = {
  format: "mimi-ds-transcript/1",
  generator: {
    program: "testdata/peers/ts-mls/ds-scenario.mjs",
    library: "ts-mls",
    library_version: libraryVersion,
    node: process.version,
  },
  cipher_suite: suite,
  cipher_suite_name: SUITES[suite],
  provider: opts.provider,
  group_id: hex(groupId),
  clients: [...clients.values()].map((c) => c.json),
  requests,
  epochs,
};
const out = JSON.stringify(transcript, null, 1) + "\n";
if (opts.out) writeFileSync(opts.out, out);
else process.stdout.write(out);
