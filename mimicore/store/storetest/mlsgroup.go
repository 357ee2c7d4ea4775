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

func newClient(name string) (*client, error) {
	signer, pub, err := Suite.GenerateSignatureKey()
	if err != nil {
		return nil, fmt.Errorf("generating signature key: %w", err)
	}
	ikm := make([]byte, 64)
	if _, err := rand.Read(ikm); err != nil {
		return nil, err
	}
	leafPriv, leafPub, err := Suite.DeriveKeyPair(ikm[:32])
	if err != nil {
		return nil, fmt.Errorf("deriving leaf key: %w", err)
	}
	_, initPub, err := Suite.DeriveKeyPair(ikm[32:])
	if err != nil {
		return nil, fmt.Errorf("deriving init key: %w", err)
	}
	kp := &mls.KeyPackage{Version: mls.MLS10, CipherSuite: Suite, InitKey: initPub, LeafNode: mls.LeafNode{
		EncryptionKey: leafPub, SignatureKey: pub,
		Credential: mls.Credential{Type: mls.CredentialBasic, Identity: []byte(name)},
		Capabilities: mls.Capabilities{Versions: []mls.ProtocolVersion{mls.MLS10}, CipherSuites: []mls.CipherSuite{Suite},
			Credentials: []mls.CredentialType{mls.CredentialBasic}},
		Source: mls.SourceKeyPackage, Lifetime: mls.Lifetime{NotAfter: 1 << 62},
	}}
	if err := kp.LeafNode.Sign(Suite, signer, nil, 0); err != nil {
		return nil, fmt.Errorf("signing leaf: %w", err)
	}
	if err := kp.Sign(signer); err != nil {
		return nil, fmt.Errorf("signing key package: %w", err)
	}
	return &client{kp: kp, signer: signer, leafPriv: leafPriv}, nil
}

// NewGroup creates group id with mls.NewGroup at epoch 0, then, when
// members > 1, adds the other members-1 in one commit (epoch 1).
func NewGroup(tb testing.TB, id []byte, members int) *Group {
	tb.Helper()
	g, err := MakeGroup(id, members)
	if err != nil {
		tb.Fatal(err)
	}
	return g
}

// MakeGroup is NewGroup for callers without a testing.TB (a crash test's
// child process).
func MakeGroup(id []byte, members int) (*Group, error) {
	c, err := newClient("creator")
	if err != nil {
		return nil, err
	}
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: Suite, GroupID: id, Leaf: &c.kp.LeafNode,
		LeafKey: c.leafPriv, Signer: c.signer})
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	g := &Group{Creator: m, State: m.State()}
	if members > 1 {
		adds, err := MakeAdds(members - 1)
		if err != nil {
			return nil, err
		}
		if g, _, err = g.MakeCommit(adds...); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// Adds returns n Add proposals of fresh clients.
func Adds(tb testing.TB, n int) []*mls.Proposal {
	tb.Helper()
	ps, err := MakeAdds(n)
	if err != nil {
		tb.Fatal(err)
	}
	return ps
}

// MakeAdds is Adds without a testing.TB.
func MakeAdds(n int) ([]*mls.Proposal, error) {
	ps := make([]*mls.Proposal, n)
	for i := range ps {
		c, err := newClient(fmt.Sprint("member ", i))
		if err != nil {
			return nil, err
		}
		ps[i] = &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: c.kp}
	}
	return ps, nil
}

// Remove returns a Remove proposal of leaf i.
func Remove(i uint32) *mls.Proposal { return &mls.Proposal{Type: mls.ProposalRemove, Removed: i} }

// Commit has the creator commit proposals (none: a path-only update) and
// the DS apply the commit. It returns the group in the next epoch and the
// commit as CommitEpoch takes it, with Welcome set and Joiners filled when
// it adds members, and ReInit set to the ReInit proposal it covers.
func (g *Group) Commit(tb testing.TB, proposals ...*mls.Proposal) (*Group, store.EpochCommit) {
	tb.Helper()
	next, c, err := g.MakeCommit(proposals...)
	if err != nil {
		tb.Fatal(err)
	}
	return next, c
}

// MakeCommit is Commit without a testing.TB.
func (g *Group) MakeCommit(proposals ...*mls.Proposal) (*Group, store.EpochCommit, error) {
	res, err := g.Creator.Commit(proposals, nil, nil)
	if err != nil {
		return nil, store.EpochCommit{}, fmt.Errorf("committing: %w", err)
	}
	enc, err := wire.Marshal(res.Commit)
	if err != nil {
		return nil, store.EpochCommit{}, fmt.Errorf("encoding commit: %w", err)
	}
	msg, err := mls.DecodeMLSMessage(enc)
	if err != nil {
		return nil, store.EpochCommit{}, fmt.Errorf("decoding commit: %w", err)
	}
	next, info, err := g.State.ApplyCommit(msg, nil)
	if err != nil {
		return nil, store.EpochCommit{}, fmt.Errorf("applying commit: %w", err)
	}
	return &Group{Creator: res.Next, State: next, LastCommit: msg},
		store.EpochCommit{Base: g.State, Next: next, Welcome: len(info.Added) > 0, Joiners: joiners(next, info),
			ReInit: info.ReInit}, nil
}

// joiners returns the KeyPackages a commit added, with their leaf
// signature keys as they sit in the new tree.
func joiners(next *mls.GroupState, info *mls.CommitInfo) []store.Joiner {
	var js []store.Joiner
	for _, a := range info.Added {
		leaf, _ := next.Member(a.Leaf)
		js = append(js, store.Joiner{Ref: a.KeyPackageRef, SignatureKey: leaf.SignatureKey()})
	}
	return js
}
