package mls

import (
	"bytes"
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"sync"
)

// ErrRemoved is returned by Member.ApplyCommit when the commit removes the
// member from the group.
var ErrRemoved = errors.New("mls: removed from the group")

// maxResumptionEpochs bounds how many past resumption PSKs a Member keeps.
const maxResumptionEpochs = 16

// Member is a client's view of a group at one epoch: the public
// GroupState plus the member's leaf, its tree private keys and the epoch
// secrets. It joins from a Welcome (JoinFromWelcome), creates a group
// (NewGroup) or joins externally (JoinExternal), follows and makes commits,
// and protects application messages; it is what the project's Go test
// client builds on.
//
// Like GroupState, a Member is an immutable value: ApplyCommit, Commit and
// ProposeUpdate return the next Member and leave the receiver as it was,
// so a caller can keep the current Member until the Delivery Service
// accepted a commit, and a failed step changes nothing. The one thing a
// Member does not own alone is its epoch's secret tree: every message key
// may be used once (RFC 9420 §9.2), so Protect and Unprotect consume keys
// of a secret tree shared, under a lock, by every Member value of the same
// epoch. A Member is safe for concurrent use.
type Member struct {
	state      *GroupState
	leaf       uint32
	signer     crypto.Signer
	keys       pathKeys      // never modified once the Member is returned
	secrets    *EpochSecrets // never modified
	epoch      *epochKeys    // shared by the Member values of this epoch
	psks       PSKLookup
	resumption map[uint64][]byte // never modified once the Member is returned
	reinit     *ReInit           // of the commit that started the epoch; never modified
}

// epochKeys holds the secret tree of one epoch, built on first use. Its
// ratchets move forward with every message protected or opened, whichever
// Member value of the epoch does it, so that no key is used twice.
type epochKeys struct {
	mu   sync.Mutex
	tree *SecretTree
}

// WelcomeOptions says who joins with JoinFromWelcome and how.
type WelcomeOptions struct {
	// KeyPackage is the joiner's KeyPackage, the one the Welcome was made
	// for. Required.
	KeyPackage *KeyPackage
	// InitKey is the private key of KeyPackage.InitKey. Required.
	InitKey hpke.PrivateKey
	// LeafKey is the private key of KeyPackage.LeafNode.EncryptionKey.
	// Required.
	LeafKey hpke.PrivateKey
	// Signer holds the private key of KeyPackage.LeafNode.SignatureKey. It
	// may be nil for a member that only follows the group: such a member
	// cannot propose, commit, protect messages or sign a GroupInfo.
	Signer crypto.Signer
	// RatchetTree is the group's ratchet tree when it was sent out of band;
	// nil when the GroupInfo carries it in its ratchet_tree extension.
	RatchetTree RatchetTree
	// PSKs resolves the external PSKs the Welcome and later commits name.
	// It may be nil when the group uses none; resumption PSKs of this
	// group are known to the Member. For a Welcome to a reinitialized
	// group it resolves the reinit PSK, which names the old group and the
	// epoch its ReInit commit started, to the old group's resumption_psk
	// of that epoch (Member.ResumptionPSK).
	PSKs PSKLookup
	// ReInit is the ReInit proposal that closed the old group when the
	// Welcome is that of a reinitialized group (RFC 9420 §11.2): the old
	// group's Member.ReInit at the epoch the Welcome's reinit PSK names,
	// the one PSKs resolves. JoinFromWelcome then checks that the new
	// group is the one it named: its GroupContext has the ReInit's
	// group_id, version, cipher_suite and extensions (the same encoding
	// of the extension list). It must be nil for any other Welcome: a
	// Welcome naming a reinit PSK is refused without it, and one naming
	// none is refused with it, since the caller expected a
	// reinitialization.
	ReInit *ReInit
}

// JoinFromWelcome joins a group as the holder of opts.KeyPackage (RFC 9420
// §12.4.3.1). A Welcome whose GroupSecrets name a resumption PSK of usage
// reinit joins a reinitialized group: it is refused, wrapping
// ErrReInitMismatch, unless opts.ReInit is given and the new group has
// exactly its parameters; a Welcome naming no such PSK is refused when
// opts.ReInit is given.
func JoinFromWelcome(w *Welcome, opts WelcomeOptions) (*Member, error) {
	kp := opts.KeyPackage
	if kp == nil || opts.InitKey == nil || opts.LeafKey == nil {
		return nil, errors.New("joining: key package, init key and leaf key are required")
	}
	res, err := ProcessWelcome(w, kp, opts.InitKey, opts.PSKs)
	if err != nil {
		return nil, err
	}
	if err := checkReInitJoin(&res.GroupSecrets, &res.GroupInfo.GroupContext, opts.ReInit); err != nil {
		return nil, fmt.Errorf("joining: %w", err)
	}
	g, err := NewGroupState(&res.GroupInfo, opts.RatchetTree)
	if err != nil {
		return nil, fmt.Errorf("joining: %w", err)
	}
	m := &Member{state: g, signer: opts.Signer, keys: pathKeys{}, secrets: res.Secrets, epoch: &epochKeys{},
		psks: opts.PSKs, resumption: map[uint64][]byte{}}
	m.keys[string(kp.LeafNode.EncryptionKey)] = opts.LeafKey
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

// EpochAuthenticator returns a copy of the current epoch_authenticator.
func (m *Member) EpochAuthenticator() []byte { return cloneBytes(m.secrets.EpochAuthenticator) }

// ResumptionPSK returns a copy of the resumption_psk of the current epoch
// (RFC 9420 §8): the secret of the resumption PSKs that name this group
// and epoch, such as the reinit PSK of a group that reinitializes it
// (§11.2), which its joiners resolve with their PSKLookup.
func (m *Member) ResumptionPSK() []byte { return cloneBytes(m.secrets.ResumptionPSK) }

// ReInitPSK returns the PreSharedKey proposal of the reinit PSK of the
// member's group at its current epoch, the one a commit covering a ReInit
// started (RFC 9420 §11.2): psktype resumption, usage reinit, this group's
// id and epoch, and a random nonce of KDF.Nh bytes of newSuite, the
// cipher suite the ReInit names, in which the new group validates it
// (§12.1.4). The new group's creator commits it with its first Adds
// (CommitOptions.ReInitialization); the secret is ResumptionPSK. The
// joiners of the new group resolve it through WelcomeOptions.PSKs and
// give the old group's ReInit as WelcomeOptions.ReInit.
func (m *Member) ReInitPSK(newSuite CipherSuite) (*Proposal, error) {
	s, err := newSuite.params()
	if err != nil {
		return nil, fmt.Errorf("making reinit psk: %w", err)
	}
	nonce := make([]byte, s.nh)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("making reinit psk: %w", err)
	}
	return &Proposal{Type: ProposalPSK, PSK: &PreSharedKeyID{Type: PSKResumption, Usage: ResumptionReInit,
		PSKGroupID: cloneBytes(m.state.ctx.GroupID), PSKEpoch: m.state.ctx.Epoch, Nonce: nonce}}, nil
}

// ReInit returns a copy of the ReInit proposal covered by the commit that
// started the member's current epoch, its own (CommitResult.Next) or
// another member's (ApplyCommit), or nil when that commit covered none or
// the member entered the epoch otherwise. A member with a ReInit is in
// what RFC 9420 §11.2 makes the last epoch of its group; the ReInit is
// what the joiners of the new group pass as WelcomeOptions.ReInit, along
// with a PSKLookup resolving ReInitPSK's PSK to ResumptionPSK.
func (m *Member) ReInit() *ReInit { return m.reinit.clone() }

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

// ApplyCommit processes a PublicMessage commit from another member and
// returns the member in the next epoch: the public checks of
// GroupState.ApplyCommit, the membership tag, the path secret decryption,
// the key schedule and the confirmation tag. The receiver is never
// modified; ErrRemoved means the commit removed us.
func (m *Member) ApplyCommit(msg *MLSMessage, resolve ProposalResolver) (*Member, error) {
	if _, err := m.state.checkFraming(msg, ContentCommit); err != nil {
		return nil, fmt.Errorf("applying commit: %w", err)
	}
	if err := m.checkMembershipTag(msg); err != nil {
		return nil, fmt.Errorf("applying commit: %w", err)
	}
	n, info, err := m.state.ApplyCommit(msg, resolve)
	if err != nil {
		return nil, err
	}
	for _, r := range info.Removed {
		if r == m.leaf {
			return nil, ErrRemoved
		}
	}
	if info.CommitterLeaf == m.leaf {
		return nil, errors.New("applying commit: cannot process our own commit without its pending state")
	}
	cs := m.state.CipherSuite()
	keys := maps.Clone(m.keys)
	var commitSecret []byte
	if info.Path != nil {
		ctx, err := marshal(&info.ProvisionalContext)
		if err != nil {
			return nil, err
		}
		var excluded []uint32
		for _, a := range info.Added {
			excluded = append(excluded, a.Leaf)
		}
		ps, nodes, err := n.tree.decryptPathSecret(info.CommitterLeaf, m.leaf, info.Path, excluded, keys, ctx)
		if err != nil {
			return nil, fmt.Errorf("applying commit: %w", err)
		}
		if commitSecret, err = n.tree.derivePathKeys(ps, nodes, keys); err != nil {
			return nil, fmt.Errorf("applying commit: %w", err)
		}
	}
	pskSecret, err := m.pskSecret(info.PSKs)
	if err != nil {
		return nil, fmt.Errorf("applying commit: %w", err)
	}
	initSecret := m.secrets.InitSecret
	if info.ExternalInit != nil {
		if initSecret, err = m.externalInitSecret(info.ExternalInit); err != nil {
			return nil, fmt.Errorf("applying commit: %w", err)
		}
	}
	secrets, err := cs.DeriveEpochSecrets(initSecret, commitSecret, pskSecret, &n.ctx)
	if err != nil {
		return nil, err
	}
	if !n.s.verifyMAC(secrets.ConfirmationKey, n.ctx.ConfirmedTranscriptHash, info.ConfirmationTag) {
		return nil, fmt.Errorf("applying commit: %w: bad confirmation tag", ErrInvalidMessage)
	}
	next := m.successor(n, keys, secrets)
	next.reinit = info.ReInit.clone()
	return next, nil
}

// successor returns m moved to the epoch of state n, with the tree
// private keys and epoch secrets of that epoch and a fresh secret tree.
// keys and secrets must not be shared with anything the caller changes.
// Private keys of nodes the epoch replaced are deleted from keys (RFC 9420
// §9.2): only those of our leaf and of our direct path in n are kept.
func (m *Member) successor(n *GroupState, keys pathKeys, secrets *EpochSecrets) *Member {
	keep := map[string]bool{}
	if l := n.tree.leaf(m.leaf); l != nil {
		keep[string(l.EncryptionKey)] = true
		for _, x := range directPath(leafNode(m.leaf), n.tree.leaves) {
			if p := n.tree.parentNode(x); p != nil {
				keep[string(p.EncryptionKey)] = true
			}
		}
	}
	maps.DeleteFunc(keys, func(pub string, _ hpke.PrivateKey) bool { return !keep[pub] })
	next := &Member{state: n, leaf: m.leaf, signer: m.signer, keys: keys, secrets: secrets, epoch: &epochKeys{},
		psks: m.psks, resumption: make(map[uint64][]byte, len(m.resumption)+1)}
	for e, psk := range m.resumption {
		if e+maxResumptionEpochs > n.Epoch() {
			next.resumption[e] = psk
		}
	}
	next.resumption[n.Epoch()] = secrets.ResumptionPSK
	return next
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
