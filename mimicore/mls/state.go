package mls

import (
	"bytes"
	"errors"
	"fmt"
	"maps"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Errors of the public group state. Each rejection wraps one of them.
var (
	// ErrWrongGroup: the message belongs to another group.
	ErrWrongGroup = errors.New("mls: message for another group")
	// ErrStaleEpoch: the message's epoch is not the group's current epoch,
	// for instance a second commit for an epoch that already advanced.
	ErrStaleEpoch = errors.New("mls: message epoch is not the current epoch")
	// ErrPrivateHandshake: the handshake is a PrivateMessage, which a
	// Delivery Service cannot open.
	ErrPrivateHandshake = errors.New("mls: handshake message is encrypted")
	// ErrInvalidProposal: a proposal is invalid on its own or in its list.
	ErrInvalidProposal = errors.New("mls: invalid proposal")
	// ErrInvalidCommit: a commit is malformed, unauthenticated or breaks a
	// rule of RFC 9420 §12.4.
	ErrInvalidCommit = errors.New("mls: invalid commit")
	// ErrUnknownProposal: a commit references a proposal the resolver does
	// not know.
	ErrUnknownProposal = errors.New("mls: unknown proposal reference")
	// ErrInvalidGroupInfo: a GroupInfo does not match its tree or signer.
	ErrInvalidGroupInfo = errors.New("mls: invalid group info")
)

// GroupState is the public state of an MLS group at one epoch: what a
// Delivery Service can know and check without holding any group secret
// (RFC 9420 §§4, 7, 8.1-8.2, 10-12). It is built from a verified GroupInfo
// and advanced by ApplyCommit, which returns a new GroupState and never
// changes the receiver, so a rejected commit leaves the state untouched.
//
// A GroupState is immutable and safe for concurrent use.
type GroupState struct {
	s       *suite
	ctx     GroupContext
	tree    *Tree
	interim []byte
	confTag []byte

	// Indexes kept in step with the tree, so that checking a new leaf does
	// not scan the group.
	sigKeys pmap                      // leaf signature key -> leaf index
	encKeys pmap                      // leaf encryption key -> leaf index
	credUse map[CredentialType]uint32 // members per credential type
	credSup map[CredentialType]uint32 // members supporting each credential type
	members uint32
}

// NewGroupState builds the public state of a group from a GroupInfo and its
// ratchet tree (RFC 9420 §12.4.3.1). rt may be nil when the GroupInfo
// carries a ratchet_tree extension. The tree is fully validated (leaf
// signatures, parent hashes, key uniqueness, every leaf listing the
// group's cipher suite and version in its capabilities), its hash must
// match the GroupContext, the GroupInfo signature must verify with the
// signer leaf's key and every member must meet the group's required
// capabilities. The GroupContext may carry only extensions RFC 9420 §17.3
// allows there.
func NewGroupState(gi *GroupInfo, rt RatchetTree) (*GroupState, error) {
	gc := &gi.GroupContext
	s, err := gc.CipherSuite.params()
	if err != nil {
		return nil, fmt.Errorf("building group state: %w", err)
	}
	if gc.Version != MLS10 {
		return nil, fmt.Errorf("%w: version %d", ErrInvalidGroupInfo, gc.Version)
	}
	if err := gi.Extensions.checkUnique(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidGroupInfo, err)
	}
	// Checked here, where a group state enters, rather than in
	// newStateFromParts, which also decodes stored states.
	if err := gc.Extensions.checkPlace(inGroupContext); err != nil {
		return nil, fmt.Errorf("%w: group context: %v", ErrInvalidGroupInfo, err)
	}
	if rt == nil {
		data, ok := gi.Extensions.Find(ExtRatchetTree)
		if !ok {
			return nil, fmt.Errorf("%w: no ratchet tree given or in its extensions", ErrInvalidGroupInfo)
		}
		if err := wire.Unmarshal(data, &rt, "ratchet_tree extension"); err != nil {
			return nil, fmt.Errorf("building group state: %w", err)
		}
	}
	tree, err := TreeFromRatchetTree(gc.CipherSuite, rt)
	if err != nil {
		return nil, fmt.Errorf("building group state: %w", err)
	}
	if err := tree.Validate(gc.GroupID); err != nil {
		return nil, fmt.Errorf("building group state: %w", err)
	}
	for i := range tree.leaves {
		if l := tree.leaf(i); l != nil {
			if err := checkGroupParams(l, gc); err != nil {
				return nil, fmt.Errorf("building group state: %w: leaf %d: %v", ErrInvalidTree, i, err)
			}
		}
	}
	g, err := newStateFromParts(s, gc.clone(), tree, nil, cloneBytes(gi.ConfirmationTag))
	if err != nil {
		return nil, err
	}
	if g.interim, err = s.interimTranscriptHash(g.ctx.ConfirmedTranscriptHash, g.confTag); err != nil {
		return nil, err
	}
	if err := g.VerifyGroupInfo(gi); err != nil {
		return nil, err
	}
	return g, nil
}

// newStateFromParts assembles a state from a tree already checked by the
// caller: it checks the tree hash and the context's extensions and builds
// the indexes.
func newStateFromParts(s *suite, ctx GroupContext, tree *Tree, interim, confTag []byte) (*GroupState, error) {
	th, err := tree.rootHash()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(th, ctx.TreeHash) {
		return nil, fmt.Errorf("%w: tree hash does not match the group context", ErrInvalidGroupInfo)
	}
	g := &GroupState{s: s, ctx: ctx, tree: tree, interim: interim, confTag: confTag,
		credUse: make(map[CredentialType]uint32), credSup: make(map[CredentialType]uint32)}
	for i := range tree.leaves {
		if l := tree.leaf(i); l != nil {
			g.index(i, l, true)
		}
	}
	if err := g.checkContextExtensions(ctx.Extensions); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidGroupInfo, err)
	}
	return g, nil
}

// index adds (or with add false removes) leaf l at index i in the indexes.
// It must only be called on a state being built.
func (g *GroupState) index(i uint32, l *LeafNode, add bool) {
	var seen []CredentialType
	if add {
		g.sigKeys = g.sigKeys.set(string(l.SignatureKey), i)
		g.encKeys = g.encKeys.set(string(l.EncryptionKey), i)
		g.credUse[l.Credential.Type]++
		for _, ct := range l.Capabilities.Credentials {
			if !contains(seen, ct) {
				seen = append(seen, ct)
				g.credSup[ct]++
			}
		}
		g.members++
		return
	}
	g.sigKeys = g.sigKeys.del(string(l.SignatureKey))
	g.encKeys = g.encKeys.del(string(l.EncryptionKey))
	decr(g.credUse, l.Credential.Type)
	for _, ct := range l.Capabilities.Credentials {
		if !contains(seen, ct) {
			seen = append(seen, ct)
			decr(g.credSup, ct)
		}
	}
	g.members--
}

func decr(m map[CredentialType]uint32, k CredentialType) {
	if m[k] <= 1 {
		delete(m, k)
	} else {
		m[k]--
	}
}

// next returns a writable copy of g for building the next state.
func (g *GroupState) next() *GroupState {
	n := *g
	n.ctx = g.ctx.clone()
	n.tree = g.tree.clone()
	n.credUse = maps.Clone(g.credUse)
	n.credSup = maps.Clone(g.credSup)
	return &n
}

// CipherSuite returns the group's cipher suite.
func (g *GroupState) CipherSuite() CipherSuite { return g.ctx.CipherSuite }

// GroupID returns a copy of the group ID.
func (g *GroupState) GroupID() []byte { return cloneBytes(g.ctx.GroupID) }

// Epoch returns the current epoch.
func (g *GroupState) Epoch() uint64 { return g.ctx.Epoch }

// GroupContext returns a copy of the current GroupContext.
func (g *GroupState) GroupContext() GroupContext { return g.ctx.clone() }

// Tree returns the current ratchet tree. It must not be modified.
func (g *GroupState) Tree() *Tree { return g.tree }

// TreeHash returns a copy of the tree hash of the current tree.
func (g *GroupState) TreeHash() []byte { return cloneBytes(g.ctx.TreeHash) }

// ConfirmedTranscriptHash returns a copy of the current confirmed
// transcript hash.
func (g *GroupState) ConfirmedTranscriptHash() []byte {
	return cloneBytes(g.ctx.ConfirmedTranscriptHash)
}

// InterimTranscriptHash returns a copy of the current interim transcript
// hash.
func (g *GroupState) InterimTranscriptHash() []byte { return cloneBytes(g.interim) }

// ConfirmationTag returns a copy of the confirmation tag of the commit that
// started the current epoch (or of the GroupInfo the state was built from).
func (g *GroupState) ConfirmationTag() []byte { return cloneBytes(g.confTag) }

// MemberCount returns the number of non-blank leaves.
func (g *GroupState) MemberCount() uint32 { return g.members }

// Member returns a read-only view of member i's leaf node, and false when
// the leaf is blank or out of range. The view costs no allocation.
func (g *GroupState) Member(i uint32) (LeafView, bool) { return g.tree.Leaf(i) }

// LeafBySignatureKey returns the leaf index of the member with the given
// signature key.
func (g *GroupState) LeafBySignatureKey(key []byte) (uint32, bool) {
	return g.sigKeys.get(string(key))
}

// ExternalSenders returns the group's external_senders extension entries.
func (g *GroupState) ExternalSenders() ([]ExternalSender, error) {
	return g.ctx.Extensions.ExternalSenders()
}

// VerifyGroupInfo checks that gi describes the current epoch of g: the same
// GroupContext, extensions of unique types allowed in a GroupInfo (RFC
// 9420 §17.3), a ratchet_tree extension (if any) equal to the tree
// (trailing blank nodes aside; its node count is compared first, so that
// the cost follows the extension's size rather than the group's), a
// signer that is a member and a valid signature. A Delivery Service checks
// the GroupInfo a committer publishes this way before serving it.
func (g *GroupState) VerifyGroupInfo(gi *GroupInfo) error {
	want, err := marshal(&g.ctx)
	if err != nil {
		return err
	}
	got, err := marshal(&gi.GroupContext)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidGroupInfo, err)
	}
	if !bytes.Equal(want, got) {
		return fmt.Errorf("%w: group context differs from the group state", ErrInvalidGroupInfo)
	}
	if err := gi.Extensions.checkUnique(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidGroupInfo, err)
	}
	if err := gi.Extensions.checkPlace(inGroupInfo); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidGroupInfo, err)
	}
	if data, ok := gi.Extensions.Find(ExtRatchetTree); ok {
		// Compare without trailing blank nodes, which senders should strip
		// but some may not.
		var theirs RatchetTree
		if err := wire.Unmarshal(data, &theirs, "ratchet_tree extension"); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidGroupInfo, err)
		}
		for len(theirs) > 0 && theirs[len(theirs)-1] == nil {
			theirs = theirs[:len(theirs)-1]
		}
		// Count the nodes first: a tree of another size is refused
		// without encoding ours, and one of the same size is as long as
		// the extension, so the comparison costs what the GroupInfo
		// weighs rather than what the group does.
		if w := g.tree.trimmedWidth(); uint64(len(theirs)) != uint64(w) {
			return fmt.Errorf("%w: ratchet_tree extension has %d nodes, the group's tree %d", ErrInvalidGroupInfo, len(theirs), w)
		}
		ours := g.tree.ratchetTree()
		a, err := marshal(&ours)
		if err != nil {
			return err
		}
		b, err := marshal(&theirs)
		if err != nil {
			return err
		}
		if !bytes.Equal(a, b) {
			return fmt.Errorf("%w: ratchet_tree extension differs from the group's tree", ErrInvalidGroupInfo)
		}
	}
	signer := g.tree.leaf(gi.Signer)
	if signer == nil {
		return fmt.Errorf("%w: signer leaf %d is blank", ErrInvalidGroupInfo, gi.Signer)
	}
	if err := gi.VerifySignature(signer.SignatureKey); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidGroupInfo, err)
	}
	return nil
}

// CheckMessage runs the checks a Delivery Service applies to any message
// sent to the group before fanning it out: a PublicMessage or
// PrivateMessage of this group in the current epoch, and no application
// data in a PublicMessage (RFC 9420 §6.2). Handshake PublicMessages are
// authenticated by VerifyProposal and ApplyCommit.
func (g *GroupState) CheckMessage(m *MLSMessage) error {
	if m.Version != MLS10 {
		return fmt.Errorf("checking message: version %d", m.Version)
	}
	switch {
	case m.PublicMessage != nil:
		if m.PublicMessage.Content.ContentType == ContentApplication {
			return fmt.Errorf("%w: application data in a public message", ErrInvalidMessage)
		}
	case m.PrivateMessage != nil:
	default:
		return fmt.Errorf("%w: wire format %d is not a group message", ErrInvalidMessage, m.WireFormat)
	}
	if !bytes.Equal(m.GroupID(), g.ctx.GroupID) {
		return ErrWrongGroup
	}
	if e, _ := m.Epoch(); e != g.ctx.Epoch {
		return fmt.Errorf("%w: epoch %d, group is at %d", ErrStaleEpoch, e, g.ctx.Epoch)
	}
	return nil
}
