package ds

import (
	"bytes"
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// The test fixture: real MLS groups made with package mls's client, whose
// public states are stored in a real sqlitestore on a temporary file and
// served to the Service through StoreGroups and StoreJoiners.

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

// id is the identity of the client's credential, its client URI: the
// Member of its requests once verified.
func (c *client) id() []byte { return c.kp.LeafNode.Credential.Identity }

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// newClient makes a client with a fresh signature key and KeyPackage of
// suite cs, without a client binding.
func newClient(t testing.TB, cs mls.CipherSuite, name string) *client {
	t.Helper()
	c, err := mlstest.NewClient(cs, "mimi://a.example/d/"+name+"/1", mlstest.Options{Lifetime: fixtureLifetime})
	if err != nil {
		t.Fatal(err)
	}
	return &client{name: name, signer: c.Signer, pub: c.SignatureKey, kp: c.KeyPackage, initKey: c.InitKey, leafKey: c.LeafKey}
}

// fixtureClock is the fixture's clock when it starts, and
// fixtureLifetime the lifetime of its clients' KeyPackages: from a day
// before it to 300 days after (the tests move the clock forward by
// days at most), within mls.DefaultMaxLifetime.
const fixtureClock = 1_790_000_000

var fixtureLifetime = mls.Lifetime{NotBefore: fixtureClock - 24*3600, NotAfter: fixtureClock + 300*24*3600}

// newKeyPackageClient makes a client of URI uri with a fresh signature
// key, leaf and init keys, and a signed KeyPackage of suite cs; edit, when
// set, changes the leaf (extensions, a binding) before it is signed.
func newKeyPackageClient(t testing.TB, cs mls.CipherSuite, name, uri string, edit func(leaf *mls.LeafNode, pub []byte)) *client {
	t.Helper()
	c, err := mlstest.NewClient(cs, uri, mlstest.Options{Edit: edit})
	if err != nil {
		t.Fatal(err)
	}
	return &client{name: name, signer: c.Signer, pub: c.SignatureKey, kp: c.KeyPackage, initKey: c.InitKey, leafKey: c.LeafKey}
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
	st                  *sqlitestore.Store
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
		now: time.Unix(fixtureClock, 0),
	}
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"),
		sqlitestore.WithClock(func() time.Time { return f.now }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f.st = st
	f.svc = &Service{Groups: StoreGroups{st}, Joiners: StoreJoiners{st}, Seen: st, Now: func() time.Time { return f.now }}

	g1 := f.alice.create(t, f.g1)
	res, members := add(t, g1, f.bob)
	f.aliceG1, f.bobG1 = res.Next, members[0]
	ref, err := f.bob.kp.Ref()
	if err != nil {
		t.Fatal(err)
	}
	f.bobRef, f.bobRefEpoch = ref, f.aliceG1.State().Epoch()
	f.store(t, g1.State(), store.EpochCommit{Base: g1.State(), Next: f.aliceG1.State(), Welcome: true,
		Joiners: []store.Joiner{{Ref: ref, SignatureKey: f.bob.pub}}})
	f.g1Info = res.GroupInfo.GroupInfo

	f.store(t, f.alice.create(t, f.g2).State())

	g3 := f.alice.create(t, f.g3)
	res3, _ := add(t, g3, f.bob)
	removed, err := res3.Next.Commit([]*mls.Proposal{{Type: mls.ProposalRemove, Removed: 1}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.store(t, g3.State(), store.EpochCommit{Base: g3.State(), Next: res3.Next.State(), Welcome: true},
		store.EpochCommit{Base: res3.Next.State(), Next: removed.Next.State()})

	f.erinP256 = f.erin.create(t, f.p256)
	f.store(t, f.erinP256.State())

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

// store creates the group of created in the fixture's store and applies
// commits to it.
func (f *fixture) store(t testing.TB, created *mls.GroupState, commits ...store.EpochCommit) {
	t.Helper()
	if err := f.st.CreateGroup(t.Context(), store.GroupCreation{Hub: "a.example", State: created}); err != nil {
		t.Fatal(err)
	}
	for _, c := range commits {
		if err := commitErr(f.st.CommitEpoch(t.Context(), c)); err != nil {
			t.Fatal(err)
		}
	}
}

// closedStore returns a store that is closed: every call fails with a
// backend error, as a broken database would.
func closedStore(t testing.TB) *sqlitestore.Store {
	t.Helper()
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return st
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

// flipLast returns b with its last byte changed.
func flipLast(b []byte) []byte {
	out := bytes.Clone(b)
	out[len(out)-1] ^= 1
	return out
}

// commitErr is the error of a CommitEpoch, for the fixtures that check
// only that.
func commitErr(_ store.Delivered, err error) error { return err }
