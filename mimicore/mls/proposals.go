package mls

import (
	"bytes"
	"fmt"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ProposalResolver returns the proposal a commit references by ProposalRef:
// the AuthenticatedContent the Delivery Service kept when VerifyProposal
// accepted it in the current epoch. It returns an error (ideally wrapping
// ErrUnknownProposal) when the reference is unknown.
type ProposalResolver func(ref []byte) (*AuthenticatedContent, error)

// ProposalRef returns RefHash("MLS 1.0 Proposal Reference",
// AuthenticatedContent) (RFC 9420 §5.2).
func (cs CipherSuite) ProposalRef(ac *AuthenticatedContent) ([]byte, error) {
	enc, err := marshal(ac)
	if err != nil {
		return nil, err
	}
	return cs.RefHash("MLS 1.0 Proposal Reference", enc)
}

// senderSignatureKey returns the key that must have signed ac.
func (g *GroupState) senderSignatureKey(ac *AuthenticatedContent) ([]byte, error) {
	c := &ac.Content
	switch c.Sender.Type {
	case SenderMember:
		l := g.tree.leaf(c.Sender.Index)
		if l == nil {
			return nil, fmt.Errorf("sender leaf %d is not a member", c.Sender.Index)
		}
		return l.SignatureKey, nil
	case SenderExternal:
		es, err := g.ctx.Extensions.ExternalSenders()
		if err != nil {
			return nil, err
		}
		if uint64(c.Sender.Index) >= uint64(len(es)) {
			return nil, fmt.Errorf("external sender %d unknown", c.Sender.Index)
		}
		return es[c.Sender.Index].SignatureKey, nil
	case SenderNewMemberProposal:
		if c.ContentType != ContentProposal || c.Proposal.Type != ProposalAdd {
			return nil, fmt.Errorf("new member proposal is not an add")
		}
		return c.Proposal.KeyPackage.LeafNode.SignatureKey, nil
	case SenderNewMemberCommit:
		if c.ContentType != ContentCommit || c.Commit.Path == nil {
			return nil, fmt.Errorf("external commit without a path")
		}
		return c.Commit.Path.LeafNode.SignatureKey, nil
	}
	return nil, fmt.Errorf("sender type %d", c.Sender.Type)
}

// checkFraming checks the group, epoch and wire format of a public
// handshake message.
func (g *GroupState) checkFraming(m *MLSMessage, want ContentType) (*PublicMessage, error) {
	if m.PrivateMessage != nil {
		return nil, ErrPrivateHandshake
	}
	pm := m.PublicMessage
	if pm == nil || m.Version != MLS10 {
		return nil, fmt.Errorf("%w: not a public message", ErrInvalidMessage)
	}
	if !bytes.Equal(pm.Content.GroupID, g.ctx.GroupID) {
		return nil, ErrWrongGroup
	}
	if pm.Content.Epoch != g.ctx.Epoch {
		return nil, fmt.Errorf("%w: epoch %d, group is at %d", ErrStaleEpoch, pm.Content.Epoch, g.ctx.Epoch)
	}
	if pm.Content.ContentType != want {
		return nil, fmt.Errorf("%w: content type %d, want %d", ErrInvalidMessage, pm.Content.ContentType, want)
	}
	// Decoded messages always have the body their type names; hand-built
	// ones are checked so that they cannot cause a nil dereference.
	switch want {
	case ContentProposal:
		if pm.Content.Proposal == nil || !pm.Content.Proposal.wellFormed() {
			return nil, fmt.Errorf("%w: proposal body missing", ErrInvalidMessage)
		}
	case ContentCommit:
		if pm.Content.Commit == nil {
			return nil, fmt.Errorf("%w: commit body missing", ErrInvalidMessage)
		}
		for _, por := range pm.Content.Commit.Proposals {
			if por.Type == ProposalByValue && (por.Proposal == nil || !por.Proposal.wellFormed()) {
				return nil, fmt.Errorf("%w: proposal body missing", ErrInvalidMessage)
			}
		}
	}
	return pm, nil
}

// VerifyProposal authenticates a PublicMessage proposal sent to the group
// in the current epoch and checks it against the current state (RFC 9420
// §12.1). It returns the AuthenticatedContent (a copy that does not alias
// m) and the ProposalRef under which the Delivery Service should keep it
// for ApplyCommit. The membership tag, keyed with a group secret, is not
// checked.
func (g *GroupState) VerifyProposal(m *MLSMessage) (*AuthenticatedContent, []byte, error) {
	pm, err := g.checkFraming(m, ContentProposal)
	if err != nil {
		return nil, nil, fmt.Errorf("verifying proposal: %w", err)
	}
	ac := pm.AuthenticatedContent()
	if err := g.verifyContent(ac); err != nil {
		return nil, nil, fmt.Errorf("verifying proposal: %w", err)
	}
	if err := g.validateProposal(ac.Content.Proposal, ac.Content.Sender, false, false, false, nil, nil); err != nil {
		return nil, nil, fmt.Errorf("verifying proposal: %w", err)
	}
	enc, err := marshal(ac)
	if err != nil {
		return nil, nil, err
	}
	ref, err := g.ctx.CipherSuite.RefHash("MLS 1.0 Proposal Reference", enc)
	if err != nil {
		return nil, nil, err
	}
	// Decode the encoding again: the copy the caller keeps must not share
	// memory with the message buffer.
	own := new(AuthenticatedContent)
	if err := wire.Unmarshal(enc, own, "authenticated content"); err != nil {
		return nil, nil, err
	}
	return own, ref, nil
}

// verifyContent checks the signature of ac with its sender's key.
func (g *GroupState) verifyContent(ac *AuthenticatedContent) error {
	key, err := g.senderSignatureKey(ac)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidMessage, err)
	}
	tbs, err := framedContentTBS(ac.WireFormat, &ac.Content, &g.ctx)
	if err != nil {
		return err
	}
	if err := g.s.verifyWithLabel(key, "FramedContentTBS", tbs, ac.Auth.Signature); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidMessage, err)
	}
	return nil
}

// validateProposal checks one proposal from sender against the current
// state (RFC 9420 §12.1). inCommit defers the group checks of new leaf
// nodes to the moment they enter the tree, since earlier proposals of the
// same commit may change the outcome (an Add of a client whose old leaf is
// removed). inExternalCommit allows ExternalInit. inReInit allows a
// resumption PSK of usage reinit (RFC 9420 §12.1.4: only "as part of a
// reinitialization of the group", §11.2), which is otherwise invalid, as
// one of usage branch always is here. supported, when not nil,
// remembers the proposal types of no RFC 9420 default found supported by
// every member, so that a list of many costs one scan of the group per
// type rather than per proposal. removed lists the leaves the commit
// removes, which need not support such types (RFC 9420 §12.2).
func (g *GroupState) validateProposal(p *Proposal, sender Sender, inCommit, inExternalCommit, inReInit bool, supported map[ProposalType]bool, removed map[uint32]bool) error {
	switch sender.Type {
	case SenderExternal:
		switch p.Type {
		case ProposalAdd, ProposalRemove, ProposalPSK, ProposalReInit, ProposalGroupContextExtensions:
		default:
			return fmt.Errorf("%w: external sender cannot propose type %d", ErrInvalidProposal, p.Type)
		}
	case SenderNewMemberProposal:
		if p.Type != ProposalAdd {
			return fmt.Errorf("%w: new member can only propose add", ErrInvalidProposal)
		}
	}
	switch p.Type {
	case ProposalAdd:
		kp := p.KeyPackage
		if kp.CipherSuite != g.ctx.CipherSuite || kp.Version != g.ctx.Version {
			return fmt.Errorf("%w: key package suite %d version %d", ErrInvalidProposal, kp.CipherSuite, kp.Version)
		}
		if err := kp.Verify(); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidProposal, err)
		}
		if !inCommit {
			if err := g.validateLeaf(&kp.LeafNode, 0, SourceKeyPackage, nil); err != nil {
				return fmt.Errorf("%w: add: %v", ErrInvalidProposal, err)
			}
		}
	case ProposalUpdate:
		if sender.Type != SenderMember {
			return fmt.Errorf("%w: update from a non-member", ErrInvalidProposal)
		}
		old := g.tree.leaf(sender.Index)
		if old == nil {
			return fmt.Errorf("%w: update from blank leaf %d", ErrInvalidProposal, sender.Index)
		}
		if !inCommit {
			if err := g.validateLeaf(p.LeafNode, sender.Index, SourceUpdate, old); err != nil {
				return fmt.Errorf("%w: update: %v", ErrInvalidProposal, err)
			}
		}
	case ProposalRemove:
		if g.tree.leaf(p.Removed) == nil {
			return fmt.Errorf("%w: remove of blank leaf %d", ErrInvalidProposal, p.Removed)
		}
	case ProposalPSK:
		psk := p.PSK
		if psk.Type == PSKResumption && psk.Usage != ResumptionApplication && !(inReInit && psk.Usage == ResumptionReInit) {
			return fmt.Errorf("%w: resumption psk usage %d in a commit", ErrInvalidProposal, psk.Usage)
		}
		if len(psk.Nonce) != g.s.nh {
			return fmt.Errorf("%w: psk nonce of %d bytes", ErrInvalidProposal, len(psk.Nonce))
		}
	case ProposalReInit:
		if p.ReInit.Version < g.ctx.Version {
			return fmt.Errorf("%w: reinit to older version %d", ErrInvalidProposal, p.ReInit.Version)
		}
	case ProposalExternalInit:
		if !inExternalCommit {
			return fmt.Errorf("%w: external init outside an external commit", ErrInvalidProposal)
		}
	case ProposalGroupContextExtensions:
		if err := p.Extensions.checkPlace(inGroupContext); err != nil {
			return fmt.Errorf("%w: group context extensions: %v", ErrInvalidProposal, err)
		}
		// In a commit the members that must support the extensions are
		// those of the new tree, with the commit's Adds and without its
		// Removes (RFC 9420 §12.1.7): applyProposals checks them there.
		if inCommit {
			break
		}
		if err := g.checkContextExtensions(p.Extensions); err != nil {
			return fmt.Errorf("%w: group context extensions: %v", ErrInvalidProposal, err)
		}
	default:
		if supported[p.Type] {
			break
		}
		for i := range g.tree.leaves {
			if l := g.tree.leaf(i); l != nil && !removed[i] && !contains(l.Capabilities.Proposals, p.Type) {
				return fmt.Errorf("%w: member %d does not support proposal type %d", ErrInvalidProposal, i, p.Type)
			}
		}
		if supported != nil {
			supported[p.Type] = true
		}
	}
	return nil
}

// ResolvedProposal is one proposal a commit covers, with who proposed it
// and, when it came by reference, its ProposalRef.
type ResolvedProposal struct {
	Proposal *Proposal
	Sender   Sender
	Ref      []byte
}

// resolveProposals turns a commit's list into proposals with senders.
func (g *GroupState) resolveProposals(c *Commit, committer Sender, resolve ProposalResolver) ([]ResolvedProposal, error) {
	out := make([]ResolvedProposal, 0, len(c.Proposals))
	for i, por := range c.Proposals {
		if por.Type == ProposalByValue {
			out = append(out, ResolvedProposal{Proposal: por.Proposal, Sender: committer})
			continue
		}
		if committer.Type == SenderNewMemberCommit {
			return nil, fmt.Errorf("%w: external commit covers a proposal by reference", ErrInvalidCommit)
		}
		if resolve == nil {
			return nil, fmt.Errorf("%w: proposal %d by reference and no resolver", ErrUnknownProposal, i)
		}
		ac, err := resolve(por.Ref)
		if err != nil {
			return nil, fmt.Errorf("resolving proposal %d: %w", i, err)
		}
		if ac == nil || ac.Content.ContentType != ContentProposal || ac.Content.Proposal == nil || !ac.Content.Proposal.wellFormed() {
			return nil, fmt.Errorf("%w: reference %d does not name a proposal", ErrUnknownProposal, i)
		}
		ref, err := g.ctx.CipherSuite.ProposalRef(ac)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(ref, por.Ref) {
			return nil, fmt.Errorf("%w: resolver returned a proposal with another reference", ErrUnknownProposal)
		}
		if !bytes.Equal(ac.Content.GroupID, g.ctx.GroupID) || ac.Content.Epoch != g.ctx.Epoch {
			return nil, fmt.Errorf("%w: referenced proposal is from another group or epoch", ErrInvalidProposal)
		}
		if err := g.verifyContent(ac); err != nil {
			return nil, fmt.Errorf("referenced proposal %d: %w", i, err)
		}
		out = append(out, ResolvedProposal{Proposal: ac.Content.Proposal, Sender: ac.Content.Sender, Ref: por.Ref})
	}
	return out, nil
}

// checkProposalList applies the list rules of RFC 9420 §12.2 that need no
// secret, and the external commit rules of §12.4.3.2. It reports whether
// the commit must carry a path. inReInit says the commit is part of a
// reinitialization (ApplyOptions.ReInitialization): its PSK proposals may
// be of usage reinit.
//
// The rules on types, counts and repeats come first, at a constant cost
// per proposal, and the first broken one stops the check: an external
// commit, authenticated by nothing but its own signature, is refused for
// the proposals it may not cover before any of them is validated (a
// KeyPackage signature check per Add).
func (g *GroupState) checkProposalList(list []ResolvedProposal, committer Sender, inReInit bool) (pathRequired bool, err error) {
	external := committer.Type == SenderNewMemberCommit
	if external {
		if err := checkExternalCommitTypes(list); err != nil {
			return false, err
		}
	}
	touched := make(map[uint32]bool)
	removed := make(map[uint32]bool)
	psks := make(map[string]struct{})
	var gce, reinit int
	pathRequired = len(list) == 0
	for _, rp := range list {
		p := rp.Proposal
		switch p.Type {
		case ProposalUpdate:
			pathRequired = true
			if committer.Type == SenderMember && rp.Sender.Index == committer.Index {
				return false, fmt.Errorf("%w: commit covers the committer's own update", ErrInvalidCommit)
			}
			if touched[rp.Sender.Index] {
				return false, fmt.Errorf("%w: leaf %d updated or removed twice", ErrInvalidCommit, rp.Sender.Index)
			}
			touched[rp.Sender.Index] = true
		case ProposalRemove:
			pathRequired = true
			if committer.Type == SenderMember && p.Removed == committer.Index {
				return false, fmt.Errorf("%w: commit removes the committer", ErrInvalidCommit)
			}
			if touched[p.Removed] {
				return false, fmt.Errorf("%w: leaf %d updated or removed twice", ErrInvalidCommit, p.Removed)
			}
			touched[p.Removed] = true
			removed[p.Removed] = true
		case ProposalPSK:
			id, err := marshal(p.PSK)
			if err != nil {
				return false, err
			}
			if _, dup := psks[string(id)]; dup {
				return false, fmt.Errorf("%w: psk listed twice", ErrInvalidCommit)
			}
			psks[string(id)] = struct{}{}
		case ProposalGroupContextExtensions:
			// RFC 9420 requires a path here; ts-mls omits it, so a commit
			// without one is accepted.
			if gce++; gce > 1 {
				return false, fmt.Errorf("%w: several group context extensions proposals", ErrInvalidCommit)
			}
		case ProposalReInit:
			reinit++
		case ProposalExternalInit:
			pathRequired = true
		}
		if reinit > 0 && len(list) > 1 {
			return false, fmt.Errorf("%w: reinit with other proposals", ErrInvalidCommit)
		}
	}
	supported := make(map[ProposalType]bool)
	for _, rp := range list {
		if err := g.validateProposal(rp.Proposal, rp.Sender, true, external, inReInit, supported, removed); err != nil {
			return false, err
		}
	}
	return pathRequired, nil
}

// checkExternalCommitTypes checks the proposals an external commit covers
// (RFC 9420 §12.4.3.2): exactly one ExternalInit, at most one Remove, and
// otherwise only PSK proposals.
func checkExternalCommitTypes(list []ResolvedProposal) error {
	var extInit, removes int
	for _, rp := range list {
		switch rp.Proposal.Type {
		case ProposalExternalInit:
			if extInit++; extInit > 1 {
				return fmt.Errorf("%w: external commit needs exactly one external init", ErrInvalidCommit)
			}
		case ProposalRemove:
			if removes++; removes > 1 {
				return fmt.Errorf("%w: external commit removes more than one leaf", ErrInvalidCommit)
			}
		case ProposalPSK:
		default:
			return fmt.Errorf("%w: external commit covers proposal type %d", ErrInvalidCommit, rp.Proposal.Type)
		}
	}
	if extInit != 1 {
		return fmt.Errorf("%w: external commit needs exactly one external init", ErrInvalidCommit)
	}
	return nil
}
