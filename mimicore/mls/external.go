package mls

import (
	"crypto"
	"crypto/hpke"
	"errors"
	"fmt"
)

// ExternalJoinOptions says who joins with JoinExternal and how.
type ExternalJoinOptions struct {
	// Leaf is the joiner's leaf node template: credential, capabilities
	// and extensions. Its encryption key, source, lifetime, parent hash
	// and signature are filled in. It is copied.
	Leaf LeafNode
	// Signer holds the private key of Leaf.SignatureKey. Required.
	Signer crypto.Signer
	// RatchetTree is the group's ratchet tree when the GroupInfo does not
	// carry it in its ratchet_tree extension; nil otherwise.
	RatchetTree RatchetTree
	// PSKs resolves the external PSKs later commits name; nil when the
	// group uses none.
	PSKs PSKLookup
}

// JoinExternal joins a group with an external commit (RFC 9420
// §12.4.3.2) from a GroupInfo carrying the external_pub extension. It
// returns the commit to send and the joiner as it will be once the
// Delivery Service accepted the commit.
func JoinExternal(gi *GroupInfo, opts ExternalJoinOptions) (*MLSMessage, *Member, error) {
	signer := opts.Signer
	if signer == nil {
		return nil, nil, errors.New("joining externally: signer is required")
	}
	g, err := NewGroupState(gi, opts.RatchetTree)
	if err != nil {
		return nil, nil, fmt.Errorf("joining externally: %w", err)
	}
	leaf := *opts.Leaf.clone()
	s := g.s
	extPub, err := gi.Extensions.ExternalPub()
	if err != nil {
		return nil, nil, fmt.Errorf("joining externally: %w", err)
	}
	if extPub == nil {
		return nil, nil, errors.New("joining externally: group info has no external_pub")
	}
	pk, err := s.kem.NewPublicKey(extPub)
	if err != nil {
		return nil, nil, fmt.Errorf("joining externally: external_pub: %w", err)
	}
	kemOutput, sender, err := hpke.NewSender(pk, s.kdf, s.aead, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("joining externally: %w", err)
	}
	initSecret, err := sender.Export("MLS 1.0 external init secret", s.nh)
	if err != nil {
		return nil, nil, fmt.Errorf("joining externally: %w", err)
	}

	self := Sender{Type: SenderNewMemberCommit}
	commit := &Commit{Proposals: []ProposalOrRef{{Type: ProposalByValue,
		Proposal: &Proposal{Type: ProposalExternalInit, KEMOutput: kemOutput}}}}
	list, err := g.resolveProposals(commit, self, nil)
	if err != nil {
		return nil, nil, err
	}
	if _, err := g.checkProposalList(list, self, false); err != nil {
		return nil, nil, fmt.Errorf("joining externally: %w", err)
	}
	n := g.next()
	info := &CommitInfo{}
	if err := n.applyProposals(list, info); err != nil {
		return nil, nil, err
	}
	idx := n.tree.leftmostBlankLeaf()
	if idx == n.tree.leaves {
		if err := n.tree.extend(); err != nil {
			return nil, nil, err
		}
	}
	// The placeholder is replaced by the signed leaf below.
	n.tree.setLeaf(idx, &leaf)
	np, err := n.tree.generateUpdatePath(idx, leaf, signer, g.ctx.GroupID, nil, n.provisionalContext)
	if err != nil {
		return nil, nil, fmt.Errorf("joining externally: %w", err)
	}
	newLeaf := n.tree.leaf(idx)
	if err := n.validateLeaf(newLeaf, idx, SourceCommit, nil); err != nil {
		return nil, nil, fmt.Errorf("joining externally: our leaf: %w", err)
	}
	n.index(idx, newLeaf, true)
	commit.Path = np.path

	content := &FramedContent{GroupID: g.ctx.GroupID, Epoch: g.ctx.Epoch, Sender: self, ContentType: ContentCommit, Commit: commit}
	sig, err := g.CipherSuite().SignFramedContent(signer, WireFormatPublicMessage, content, &g.ctx)
	if err != nil {
		return nil, nil, err
	}
	pm := &PublicMessage{Content: *content, Auth: FramedContentAuthData{Signature: sig}}
	confirmed, err := s.confirmedTranscriptHash(g.interim, pm.AuthenticatedContent())
	if err != nil {
		return nil, nil, err
	}
	if n.ctx.TreeHash, err = n.tree.rootHash(); err != nil {
		return nil, nil, err
	}
	n.ctx.Epoch++
	n.ctx.ConfirmedTranscriptHash = confirmed
	joiner := &Member{leaf: idx, signer: signer, psks: opts.PSKs}
	secrets, err := g.CipherSuite().DeriveEpochSecrets(initSecret, np.commitSecret, nil, &n.ctx)
	if err != nil {
		return nil, nil, err
	}
	pm.Auth.ConfirmationTag = s.mac(secrets.ConfirmationKey, confirmed)
	n.confTag = cloneBytes(pm.Auth.ConfirmationTag)
	if n.interim, err = s.interimTranscriptHash(confirmed, n.confTag); err != nil {
		return nil, nil, err
	}
	return &MLSMessage{Version: MLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}, joiner.successor(n, np.keys, secrets), nil
}

// provisionalContext returns the encoded GroupContext of the epoch after
// g's, g being the state a commit builds, with the tree hash th: what an
// UpdatePath's path secrets are encrypted to (RFC 9420 §12.4.2), for
// tree.generateUpdatePath.
func (g *GroupState) provisionalContext(th []byte) ([]byte, error) {
	pc := g.ctx.clone()
	pc.Epoch++
	pc.TreeHash = th
	return marshal(&pc)
}
