package mls

import (
	"bytes"
	"crypto"
	"crypto/hpke"
	"errors"
	"fmt"
)

// ErrRemoved is returned by Member.ApplyCommit when the commit removes the
// member from the group.
var ErrRemoved = errors.New("mls: removed from the group")

// maxResumptionEpochs bounds how many past resumption PSKs a Member keeps.
const maxResumptionEpochs = 16

// Member is a client's view of a group: the public GroupState plus the
// member's leaf, its tree private keys and the epoch secrets. It follows
// the group passively (it joins from a Welcome and processes commits) and
// can export secrets; it is what the project's Go test client builds on.
// A Member is not safe for concurrent use.
type Member struct {
	state      *GroupState
	leaf       uint32
	signer     crypto.Signer
	keys       pathKeys
	secrets    *EpochSecrets
	secretTree *SecretTree
	psks       PSKLookup
	resumption map[uint64][]byte
}

// JoinFromWelcome joins a group as the holder of kp (RFC 9420 §12.4.3.1).
// initPriv and leafPriv are the private keys of kp's init key and leaf
// encryption key, signer its leaf's signature key (nil for a member that
// only follows the group). rt is the ratchet tree when sent out of band,
// else nil. psks resolves external PSKs.
func JoinFromWelcome(w *Welcome, kp *KeyPackage, initPriv, leafPriv hpke.PrivateKey, signer crypto.Signer, rt RatchetTree, psks PSKLookup) (*Member, error) {
	res, err := ProcessWelcome(w, kp, initPriv, psks)
	if err != nil {
		return nil, err
	}
	g, err := NewGroupState(&res.GroupInfo, rt)
	if err != nil {
		return nil, fmt.Errorf("joining: %w", err)
	}
	m := &Member{state: g, signer: signer, keys: pathKeys{}, secrets: res.Secrets, psks: psks, resumption: map[uint64][]byte{}}
	m.keys[string(kp.LeafNode.EncryptionKey)] = leafPriv
	self, ok := g.LeafBySignatureKey(kp.LeafNode.SignatureKey)
	if !ok || !bytes.Equal(g.tree.leaf(self).EncryptionKey, kp.LeafNode.EncryptionKey) {
		return nil, errors.New("joining: our leaf is not in the tree")
	}
	m.leaf = self
	if ps := res.GroupSecrets.PathSecret; ps != nil {
		// The path secret is for the lowest common ancestor of our leaf
		// and the signer's; it seeds the signer's filtered direct path
		// from there up.
		fdp, _ := g.tree.filteredDirectPath(res.GroupInfo.Signer)
		k := 0
		for k < len(fdp) && !isInSubtree(leafNode(self), fdp[k]) {
			k++
		}
		if k == len(fdp) {
			return nil, errors.New("joining: path secret given but no common ancestor with the signer")
		}
		if _, err := g.tree.derivePathKeys(ps, fdp[k:], m.keys); err != nil {
			return nil, fmt.Errorf("joining: %w", err)
		}
	}
	m.resumption[g.Epoch()] = res.Secrets.ResumptionPSK
	return m, nil
}

// State returns the member's current public group state.
func (m *Member) State() *GroupState { return m.state }

// LeafIndex returns the member's leaf index.
func (m *Member) LeafIndex() uint32 { return m.leaf }

// EpochAuthenticator returns the current epoch_authenticator.
func (m *Member) EpochAuthenticator() []byte { return m.secrets.EpochAuthenticator }

// Export is the MLS-Exporter of the current epoch (RFC 9420 §8.5).
func (m *Member) Export(label string, context []byte, length uint16) ([]byte, error) {
	return m.state.CipherSuite().Export(m.secrets.ExporterSecret, label, context, length)
}

// VerifyProposal authenticates a PublicMessage proposal like
// GroupState.VerifyProposal and also checks its membership tag for member
// senders.
func (m *Member) VerifyProposal(msg *MLSMessage) (*AuthenticatedContent, []byte, error) {
	if _, err := m.state.checkFraming(msg, ContentProposal); err != nil {
		return nil, nil, fmt.Errorf("verifying proposal: %w", err)
	}
	if err := m.checkMembershipTag(msg); err != nil {
		return nil, nil, fmt.Errorf("verifying proposal: %w", err)
	}
	return m.state.VerifyProposal(msg)
}

func (m *Member) checkMembershipTag(msg *MLSMessage) error {
	if pm := msg.PublicMessage; pm != nil && pm.Content.Sender.Type == SenderMember {
		return pm.VerifyMembershipTag(m.state.CipherSuite(), m.secrets.MembershipKey, &m.state.ctx)
	}
	return nil
}

// ApplyCommit processes a PublicMessage commit from another member: the
// public checks of GroupState.ApplyCommit, the membership tag, the path
// secret decryption, the key schedule and the confirmation tag. On error
// the member is unchanged; ErrRemoved means the commit removed us.
func (m *Member) ApplyCommit(msg *MLSMessage, resolve ProposalResolver) error {
	if _, err := m.state.checkFraming(msg, ContentCommit); err != nil {
		return fmt.Errorf("applying commit: %w", err)
	}
	if err := m.checkMembershipTag(msg); err != nil {
		return fmt.Errorf("applying commit: %w", err)
	}
	n, info, err := m.state.ApplyCommit(msg, resolve)
	if err != nil {
		return err
	}
	for _, r := range info.Removed {
		if r == m.leaf {
			return ErrRemoved
		}
	}
	if info.CommitterLeaf == m.leaf {
		return errors.New("applying commit: cannot process our own commit without its pending state")
	}
	cs := m.state.CipherSuite()
	keys := make(pathKeys, len(m.keys))
	for k, v := range m.keys {
		keys[k] = v
	}
	var commitSecret []byte
	if info.Path != nil {
		ctx, err := marshal(&info.ProvisionalContext)
		if err != nil {
			return err
		}
		var excluded []uint32
		for _, a := range info.Added {
			excluded = append(excluded, a.Leaf)
		}
		ps, nodes, err := n.tree.decryptPathSecret(info.CommitterLeaf, m.leaf, info.Path, excluded, keys, ctx)
		if err != nil {
			return fmt.Errorf("applying commit: %w", err)
		}
		if commitSecret, err = n.tree.derivePathKeys(ps, nodes, keys); err != nil {
			return fmt.Errorf("applying commit: %w", err)
		}
	}
	pskSecret, err := m.pskSecret(info.PSKs)
	if err != nil {
		return fmt.Errorf("applying commit: %w", err)
	}
	initSecret := m.secrets.InitSecret
	if info.ExternalInit != nil {
		if initSecret, err = m.externalInitSecret(info.ExternalInit); err != nil {
			return fmt.Errorf("applying commit: %w", err)
		}
	}
	secrets, err := cs.DeriveEpochSecrets(initSecret, commitSecret, pskSecret, &n.ctx)
	if err != nil {
		return err
	}
	if !n.s.verifyMAC(secrets.ConfirmationKey, n.ctx.ConfirmedTranscriptHash, info.ConfirmationTag) {
		return fmt.Errorf("applying commit: %w: bad confirmation tag", ErrInvalidMessage)
	}
	m.advance(n, keys, secrets)
	return nil
}

// advance moves the member to the next epoch.
func (m *Member) advance(n *GroupState, keys pathKeys, secrets *EpochSecrets) {
	m.state, m.keys, m.secrets, m.secretTree = n, keys, secrets, nil
	m.resumption[n.Epoch()] = secrets.ResumptionPSK
	delete(m.resumption, n.Epoch()-maxResumptionEpochs)
}

// pskSecret resolves the PSKs a commit covers and chains them.
func (m *Member) pskSecret(ids []PreSharedKeyID) ([]byte, error) {
	var list []PSKWithSecret
	for i := range ids {
		id := &ids[i]
		var secret []byte
		switch {
		case id.Type == PSKResumption && bytes.Equal(id.PSKGroupID, m.state.ctx.GroupID):
			var ok bool
			if secret, ok = m.resumption[id.PSKEpoch]; !ok {
				return nil, fmt.Errorf("resumption psk of epoch %d unknown", id.PSKEpoch)
			}
		case m.psks != nil:
			var err error
			if secret, err = m.psks(id); err != nil {
				return nil, fmt.Errorf("psk %d: %w", i, err)
			}
		default:
			return nil, fmt.Errorf("psk %d unknown", i)
		}
		list = append(list, PSKWithSecret{ID: *id, PSK: secret})
	}
	return m.state.CipherSuite().PSKSecret(list)
}

// externalInitSecret recovers the init secret an external joiner sent
// (RFC 9420 §8.3).
func (m *Member) externalInitSecret(kemOutput []byte) ([]byte, error) {
	s := m.state.s
	priv, _, err := s.deriveKeyPair(m.secrets.ExternalSecret)
	if err != nil {
		return nil, err
	}
	r, err := hpke.NewRecipient(kemOutput, priv, s.kdf, s.aead, nil)
	if err != nil {
		return nil, fmt.Errorf("external init: %w", err)
	}
	return r.Export("MLS 1.0 external init secret", s.nh)
}
