package storetest

import (
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Suite is the cipher suite of the groups the tests build.
const Suite = mls.X25519AES128GCMSHA256Ed25519

// Group is a real MLS group driven by the mls package's own client, as the
// group tests and backend benchmarks use it: Creator is the member who
// commits, State the Delivery Service's public view, which every commit
// reaches by mls.GroupState.ApplyCommit as the DS's would. A Group is a
// value of one epoch: Commit returns the next one and leaves the receiver
// as it was, so several rival commits can be built on one epoch.
type Group struct {
	Creator *mls.Member
	State   *mls.GroupState
	// LastCommit is the commit that started the epoch, decoded from its
	// encoding as the DS receives it; nil at epoch 0.
	LastCommit *mls.MLSMessage
}

// client is a member-to-be: a signed KeyPackage and its private keys.
type client struct {
	kp       *mls.KeyPackage
	signer   crypto.Signer
	leafPriv hpke.PrivateKey
}

func newClient(tb testing.TB, name string) *client {
	tb.Helper()
	signer, pub, err := Suite.GenerateSignatureKey()
	if err != nil {
		tb.Fatalf("generating signature key: %v", err)
	}
	ikm := make([]byte, 64)
	if _, err := rand.Read(ikm); err != nil {
		tb.Fatal(err)
	}
	leafPriv, leafPub, err := Suite.DeriveKeyPair(ikm[:32])
	if err != nil {
		tb.Fatalf("deriving leaf key: %v", err)
	}
	_, initPub, err := Suite.DeriveKeyPair(ikm[32:])
	if err != nil {
		tb.Fatalf("deriving init key: %v", err)
	}
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: Suite, InitKey: initPub, LeafNode: mls.LeafNode{
		EncryptionKey: leafPub, SignatureKey: pub,
		Credential: mls.Credential{Type: mls.CredentialBasic, Identity: []byte(name)},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{Suite},
			Credentials: []mls.CredentialType{mls.CredentialBasic}},
		Source: mls.SourceKeyPackage, Lifetime: mls.Lifetime{NotAfter: 1 << 62},
	}}
	if err := kp.LeafNode.Sign(Suite, signer, nil, 0); err != nil {
		tb.Fatalf("signing leaf: %v", err)
	}
	if err := kp.Sign(signer); err != nil {
		tb.Fatalf("signing key package: %v", err)
	}
	return &client{kp: kp, signer: signer, leafPriv: leafPriv}
}

// NewGroup creates group id with mls.NewGroup at epoch 0, then, when
// members > 1, adds the other members-1 in one commit (epoch 1).
func NewGroup(tb testing.TB, id []byte, members int) *Group {
	tb.Helper()
	c := newClient(tb, "creator")
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: Suite, GroupID: id, Leaf: &c.kp.LeafNode,
		LeafKey: c.leafPriv, Signer: c.signer})
	if err != nil {
		tb.Fatalf("creating group: %v", err)
	}
	g := &Group{Creator: m, State: m.State()}
	if members > 1 {
		g, _ = g.Commit(tb, Adds(tb, members-1)...)
	}
	return g
}

// Adds returns n Add proposals of fresh clients.
func Adds(tb testing.TB, n int) []*mls.Proposal {
	tb.Helper()
	ps := make([]*mls.Proposal, n)
	for i := range ps {
		ps[i] = &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: newClient(tb, fmt.Sprint("member ", i)).kp}
	}
	return ps
}

// Remove returns a Remove proposal of leaf i.
func Remove(i uint32) *mls.Proposal { return &mls.Proposal{Type: mls.ProposalRemove, Removed: i} }

// Commit has the creator commit proposals (none: a path-only update) and
// the DS apply the commit. It returns the group in the next epoch and the
// commit as CommitEpoch takes it, with Welcome set when it adds members.
func (g *Group) Commit(tb testing.TB, proposals ...*mls.Proposal) (*Group, store.EpochCommit) {
	tb.Helper()
	res, err := g.Creator.Commit(proposals, nil, nil)
	if err != nil {
		tb.Fatalf("committing: %v", err)
	}
	enc, err := wire.Marshal(res.Commit)
	if err != nil {
		tb.Fatalf("encoding commit: %v", err)
	}
	msg, err := mls.DecodeMLSMessage(enc)
	if err != nil {
		tb.Fatalf("decoding commit: %v", err)
	}
	next, info, err := g.State.ApplyCommit(msg, nil)
	if err != nil {
		tb.Fatalf("applying commit: %v", err)
	}
	return &Group{Creator: res.Next, State: next, LastCommit: msg},
		store.EpochCommit{Base: g.State, Next: next, Welcome: len(info.Added) > 0}
}
