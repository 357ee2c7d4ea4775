package mls

import (
	"crypto"
	"crypto/hpke"
	"errors"
	"fmt"
)

// JoinExternal joins a group with an external commit (RFC 9420
// §12.4.3.2) from a GroupInfo carrying the external_pub extension. rt is
// the ratchet tree when it is not in the GroupInfo. leaf is the joiner's
// leaf node template (credential, capabilities, extensions); its keys,
// source, parent hash and signature are filled in. It returns the commit
// to send and the joiner as it will be once the commit is accepted.
func JoinExternal(gi *GroupInfo, rt RatchetTree, leaf LeafNode, signer crypto.Signer, psks PSKLookup) (*MLSMessage, *Member, error) {
	g, err := NewGroupState(gi, rt)
	if err != nil {
		return nil, nil, fmt.Errorf("joining externally: %w", err)
	}
	leaf = *leaf.clone()
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
	if _, err := g.checkProposalList(list, self); err != nil {
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
	np, err := n.tree.generateUpdatePath(idx, leaf, signer, g.ctx.GroupID, nil, func(th []byte) ([]byte, error) {
		pc := n.ctx.clone()
		pc.Epoch++
		pc.TreeHash = th
		return marshal(&pc)
	})
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
	m := &Member{leaf: idx, signer: signer, psks: psks, resumption: map[uint64][]byte{}}
	secrets, err := g.CipherSuite().DeriveEpochSecrets(initSecret, np.commitSecret, nil, &n.ctx)
	if err != nil {
		return nil, nil, err
	}
	pm.Auth.ConfirmationTag = s.mac(secrets.ConfirmationKey, confirmed)
	n.confTag = cloneBytes(pm.Auth.ConfirmationTag)
	if n.interim, err = s.interimTranscriptHash(confirmed, n.confTag); err != nil {
		return nil, nil, err
	}
	m.advance(n, np.keys, secrets)
	return &MLSMessage{Version: MLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}, m, nil
}
