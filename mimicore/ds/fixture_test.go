package ds

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// The test fixture: real MLS groups made with package mls's client, whose
// public states are served to the Service through testGroups, a map
// standing in for the durable group store.

// testGroups implements Groups over a map of real group states.
type testGroups struct {
	mu     sync.Mutex
	states map[string]*mls.GroupState
	err    error // when set, every lookup fails with it
}

func (g *testGroups) Group(_ context.Context, id []byte) (*mls.GroupState, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return nil, g.err
	}
	st, ok := g.states[string(id)]
	if !ok {
		return nil, fmt.Errorf("group %x: %w", id, ErrNotFound)
	}
	return st, nil
}

func (g *testGroups) put(st *mls.GroupState) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.states[string(st.GroupID())] = st
}

// testJoiners implements Joiners over the KeyPackages the fixture's add
// commits carried.
type testJoiners struct {
	keys map[string]joinerKey // group id, epoch, ref
}

type joinerKey struct {
	cs  mls.CipherSuite
	key []byte
}

func joinerIndex(groupID []byte, epoch uint64, ref []byte) string {
	return fmt.Sprintf("%x/%d/%x", groupID, epoch, ref)
}

func (j *testJoiners) JoinerKey(_ context.Context, groupID []byte, epoch uint64, ref []byte) (mls.CipherSuite, []byte, error) {
	k, ok := j.keys[joinerIndex(groupID, epoch, ref)]
	if !ok {
		return 0, nil, fmt.Errorf("joiner %x: %w", ref, ErrNotFound)
	}
	return k.cs, k.key, nil
}

// memSeen implements store.SeenSignatures in memory, ignoring expiry.
type memSeen struct {
	mu   sync.Mutex
	seen map[[32]byte]time.Time
	err  error
}

func (m *memSeen) SeenSignature(_ context.Context, d [32]byte, expires time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return false, m.err
	}
	if _, ok := m.seen[d]; ok {
		return false, nil
	}
	m.seen[d] = expires
	return true, nil
}

// client is one MLS client of the fixture: its signature key and
// KeyPackage with their private keys.
type client struct {
	name    string
	signer  crypto.Signer
	pub     []byte
	kp      *mls.KeyPackage
	initKey hpke.PrivateKey
	leafKey hpke.PrivateKey
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// newClient makes a client with a fresh signature key and KeyPackage of
// suite cs.
func newClient(t testing.TB, cs mls.CipherSuite, name string) *client {
	t.Helper()
	signer, pub, err := cs.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	leafKey, encPub, err := cs.DeriveKeyPair(randomBytes(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	initKey, initPub, err := cs.DeriveKeyPair(randomBytes(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	leaf := mls.LeafNode{
		EncryptionKey: encPub,
		SignatureKey:  pub,
		Credential:    mls.Credential{Type: mls.CredentialBasic, Identity: []byte("mimi://a.example/d/" + name + "/1")},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{cs},
			Credentials: []mls.CredentialType{mls.CredentialBasic}},
		Source:   mls.SourceKeyPackage,
		Lifetime: mls.Lifetime{NotBefore: 0, NotAfter: 1 << 62},
	}
	if err := leaf.Sign(cs, signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: cs, InitKey: initPub, LeafNode: leaf}
	if err := kp.Sign(signer); err != nil {
		t.Fatal(err)
	}
	return &client{name: name, signer: signer, pub: pub, kp: kp, initKey: initKey, leafKey: leafKey}
}

// create makes a group of which c is the only member.
func (c *client) create(t testing.TB, groupID []byte) *mls.Member {
	t.Helper()
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: c.kp.CipherSuite, GroupID: groupID,
		Leaf: &c.kp.LeafNode, LeafKey: c.leafKey, Signer: c.signer})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// add has m commit Adds of joiners; it returns the result and each
// joiner's Member.
func add(t testing.TB, m *mls.Member, joiners ...*client) (*mls.CommitResult, []*mls.Member) {
	t.Helper()
	var props []*mls.Proposal
	for _, j := range joiners {
		props = append(props, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: j.kp})
	}
	res, err := m.Commit(props, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []*mls.Member
	for _, j := range joiners {
		jm, err := mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: j.kp,
			InitKey: j.initKey, LeafKey: j.leafKey, Signer: j.signer})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, jm)
	}
	return res, out
}

// fixture holds the groups of the tests:
//   - g1: alice (leaf 0) and bob (leaf 1), epoch 1, suite 1;
//   - g2: alice alone (leaf 0, the same signature key as in g1);
//   - g3: alice alone after she added and removed bob (leaf 1 blank);
//   - p256: erin alone, suite 2 (ECDSA P-256).
type fixture struct {
	cs                  mls.CipherSuite
	alice, bob, carol   *client
	dave, eve, erin     *client
	aliceG1, bobG1      *mls.Member
	erinP256            *mls.Member
	g1, g2, g3, p256    []byte
	groups              *testGroups
	joiners             *testJoiners
	seen                *memSeen
	now                 time.Time
	svc                 *Service
	bobRef              []byte // bob's KeyPackageRef, added in g1 epoch 1
	bobRefEpoch         uint64
	g1Info              *mls.GroupInfo // g1's GroupInfo of epoch 1, for external joins
	addCarol, removeBob *mls.CommitResult
	updateAlice         *mls.CommitResult
	bobLeaves           *mls.MLSMessage // bob's self-remove proposal
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	cs := mls.X25519AES128GCMSHA256Ed25519
	f := &fixture{cs: cs,
		alice: newClient(t, cs, "alice"), bob: newClient(t, cs, "bob"), carol: newClient(t, cs, "carol"),
		dave: newClient(t, cs, "dave"), eve: newClient(t, cs, "eve"),
		erin: newClient(t, mls.P256AES128GCMSHA256P256, "erin"),
		g1:   []byte("group one"), g2: []byte("group two"), g3: []byte("group three"), p256: []byte("group p256"),
		groups:  &testGroups{states: map[string]*mls.GroupState{}},
		joiners: &testJoiners{keys: map[string]joinerKey{}},
		seen:    &memSeen{seen: map[[32]byte]time.Time{}},
		now:     time.Unix(1_790_000_000, 0),
	}
	f.svc = &Service{Groups: f.groups, Joiners: f.joiners, Seen: f.seen, Now: func() time.Time { return f.now }}

	res, members := add(t, f.alice.create(t, f.g1), f.bob)
	f.aliceG1, f.bobG1 = res.Next, members[0]
	f.groups.put(f.aliceG1.State())
	ref, err := f.bob.kp.Ref()
	if err != nil {
		t.Fatal(err)
	}
	f.bobRef, f.bobRefEpoch = ref, f.aliceG1.State().Epoch()
	f.joiners.keys[joinerIndex(f.g1, f.bobRefEpoch, ref)] = joinerKey{cs, f.bob.pub}
	f.g1Info = res.GroupInfo.GroupInfo

	f.groups.put(f.alice.create(t, f.g2).State())

	res3, _ := add(t, f.alice.create(t, f.g3), f.bob)
	removed, err := res3.Next.Commit([]*mls.Proposal{{Type: mls.ProposalRemove, Removed: 1}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.groups.put(removed.Next.State())

	f.erinP256 = f.erin.create(t, f.p256)
	f.groups.put(f.erinP256.State())

	// Messages of g1's epoch 1 for the request bodies.
	if f.addCarol, err = f.aliceG1.Commit([]*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: f.carol.kp}}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if f.removeBob, err = f.aliceG1.Commit([]*mls.Proposal{{Type: mls.ProposalRemove, Removed: 1}}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if f.updateAlice, err = f.aliceG1.Commit(nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if f.bobLeaves, err = f.bobG1.Propose(&mls.Proposal{Type: mls.ProposalRemove, Removed: 1}); err != nil {
		t.Fatal(err)
	}
	return f
}

// update is the MLSGroupUpdate of a commit result: the commit and the
// extensions and signature of its new GroupInfo.
func update(res *mls.CommitResult) moh.MLSGroupUpdate {
	gi := res.GroupInfo.GroupInfo
	return moh.MLSGroupUpdate{Commit: *res.Commit,
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: gi.Extensions, Signature: gi.Signature}}
}

// sign encodes body signed by c as leaf index of a group of suite cs, at
// the fixture's clock plus skew.
func (f *fixture) sign(t testing.TB, c *client, index uint32, body moh.RequestBody, skew time.Duration) []byte {
	t.Helper()
	b, err := SignRequest(c.kp.CipherSuite, c.signer, body, ClientSignature(index, f.now.Add(skew)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// codeOf returns the DSError code of err, 0 for nil.
func codeOf(err error) moh.Code {
	if err == nil {
		return 0
	}
	return moh.DSErrorOf(err).Code
}

var errBackend = errors.New("database is locked")

// flipLast returns b with its last byte changed.
func flipLast(b []byte) []byte {
	out := bytes.Clone(b)
	out[len(out)-1] ^= 1
	return out
}
