package mls

import (
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
)

// GroupOptions describes the group NewGroup creates and its creator.
type GroupOptions struct {
	// CipherSuite is the group's cipher suite. Required.
	CipherSuite CipherSuite
	// GroupID is the group's ID. Required; MIMI derives it from the room.
	GroupID []byte
	// Leaf is the creator's leaf node, from its KeyPackage, signed with
	// Signer. Required. It is copied.
	Leaf *LeafNode
	// LeafKey is the private key of Leaf.EncryptionKey. Required.
	LeafKey hpke.PrivateKey
	// Signer holds the private key of Leaf.SignatureKey. Required.
	Signer crypto.Signer
	// Extensions are the GroupContext extensions of epoch 0 (for MIMI,
	// required_capabilities and external_senders). Nil for none. They are
	// copied.
	Extensions Extensions
	// PSKs resolves the external PSKs later commits name; nil when the
	// group uses none.
	PSKs PSKLookup
}

// NewGroup creates a group whose only member holds opts.Leaf (RFC 9420
// §11): epoch 0, a random init secret and the given GroupContext
// extensions.
func NewGroup(opts GroupOptions) (*Member, error) {
	cs, groupID, leaf := opts.CipherSuite, opts.GroupID, opts.Leaf
	if leaf == nil || opts.LeafKey == nil || opts.Signer == nil {
		return nil, errors.New("creating group: leaf, leaf key and signer are required")
	}
	s, err := cs.params()
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	if err := validateLeafStandalone(s, leaf, groupID, 0); err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	tree := newTree(s, 1)
	tree.setLeaf(0, leaf.clone())
	th, err := tree.rootHash()
	if err != nil {
		return nil, err
	}
	ctx := GroupContext{Version: MLS10, CipherSuite: cs, GroupID: cloneBytes(groupID), TreeHash: th,
		ConfirmedTranscriptHash: []byte{}, Extensions: opts.Extensions.clone()}
	initSecret := make([]byte, s.nh)
	if _, err := rand.Read(initSecret); err != nil {
		return nil, err
	}
	secrets, err := cs.DeriveEpochSecrets(initSecret, nil, nil, &ctx)
	if err != nil {
		return nil, err
	}
	confTag := s.mac(secrets.ConfirmationKey, ctx.ConfirmedTranscriptHash)
	interim, err := s.interimTranscriptHash(ctx.ConfirmedTranscriptHash, confTag)
	if err != nil {
		return nil, err
	}
	g, err := newStateFromParts(s, ctx, tree, interim, confTag)
	if err != nil {
		return nil, fmt.Errorf("creating group: %w", err)
	}
	creator := &Member{signer: opts.Signer, psks: opts.PSKs}
	return creator.successor(g, pathKeys{string(leaf.EncryptionKey): opts.LeafKey}, secrets), nil
}

// GroupInfo returns a GroupInfo for the current epoch signed by the member,
// with the external_pub and ratchet_tree extensions (RFC 9420 §12.4.3).
func (m *Member) GroupInfo() (*GroupInfo, error) {
	return m.groupInfo(true)
}

// groupInfo is GroupInfo, with the ratchet_tree extension only when
// withTree is set.
func (m *Member) groupInfo(withTree bool) (*GroupInfo, error) {
	if m.signer == nil {
		return nil, errors.New("group info: member has no signer")
	}
	g := m.state
	extPub, err := g.CipherSuite().ExternalPub(m.secrets.ExternalSecret)
	if err != nil {
		return nil, err
	}
	epData, err := marshal(&externalPub{key: extPub})
	if err != nil {
		return nil, err
	}
	exts := Extensions{{Type: ExtExternalPub, Data: epData}}
	if withTree {
		rt := g.tree.ratchetTree()
		rtData, err := marshal(&rt)
		if err != nil {
			return nil, err
		}
		exts = append(exts, Extension{Type: ExtRatchetTree, Data: rtData})
	}
	gi := &GroupInfo{
		GroupContext:    g.GroupContext(),
		Extensions:      exts,
		ConfirmationTag: cloneBytes(g.confTag),
		Signer:          m.leaf,
	}
	if err := gi.Sign(m.signer); err != nil {
		return nil, err
	}
	return gi, nil
}

// publicMessage frames, signs and tags content from the member.
func (m *Member) publicMessage(c *FramedContent, confirmationTag func(*FramedContentAuthData) error) (*MLSMessage, error) {
	g := m.state
	sig, err := g.CipherSuite().SignFramedContent(m.signer, WireFormatPublicMessage, c, &g.ctx)
	if err != nil {
		return nil, err
	}
	pm := &PublicMessage{Content: *c, Auth: FramedContentAuthData{Signature: sig}}
	if confirmationTag != nil {
		if err := confirmationTag(&pm.Auth); err != nil {
			return nil, err
		}
	}
	if err := pm.SetMembershipTag(g.CipherSuite(), m.secrets.MembershipKey, &g.ctx); err != nil {
		return nil, err
	}
	return &MLSMessage{Version: MLS10, WireFormat: WireFormatPublicMessage, PublicMessage: pm}, nil
}

// Propose returns p as a signed PublicMessage proposal from the member.
func (m *Member) Propose(p *Proposal) (*MLSMessage, error) {
	return m.ProposeWithData(p, nil)
}

// ProposeWithData is Propose with the FramedContent's authenticated_data
// set to authenticatedData (RFC 9420 §6): the same proposal with other
// data has another ProposalRef.
func (m *Member) ProposeWithData(p *Proposal, authenticatedData []byte) (*MLSMessage, error) {
	if m.signer == nil {
		return nil, errors.New("proposing: member has no signer")
	}
	g := m.state
	c := &FramedContent{GroupID: g.ctx.GroupID, Epoch: g.ctx.Epoch, Sender: Sender{Type: SenderMember, Index: m.leaf},
		AuthenticatedData: authenticatedData, ContentType: ContentProposal, Proposal: p}
	return m.publicMessage(c, nil)
}

// ProposeUpdate returns an Update proposal that gives the member's leaf a
// fresh encryption key (RFC 9420 §12.1.2), and the member holding the new
// private key, which can follow once another member commits the proposal.
// The receiver is unchanged and cannot follow such a commit.
func (m *Member) ProposeUpdate() (*MLSMessage, *Member, error) {
	if m.signer == nil {
		return nil, nil, errors.New("proposing update: member has no signer")
	}
	g := m.state
	ikm := make([]byte, g.s.nh)
	if _, err := rand.Read(ikm); err != nil {
		return nil, nil, err
	}
	priv, pub, err := g.s.deriveKeyPair(ikm)
	if err != nil {
		return nil, nil, err
	}
	leaf := g.tree.leaf(m.leaf).clone()
	leaf.EncryptionKey, leaf.Source, leaf.ParentHash, leaf.Lifetime = pub, SourceUpdate, nil, Lifetime{}
	if err := leaf.Sign(g.CipherSuite(), m.signer, g.ctx.GroupID, m.leaf); err != nil {
		return nil, nil, err
	}
	msg, err := m.Propose(&Proposal{Type: ProposalUpdate, LeafNode: leaf})
	if err != nil {
		return nil, nil, err
	}
	next := *m
	next.keys = maps.Clone(m.keys)
	next.keys[string(pub)] = priv
	return msg, &next, nil
}

// CommitResult is what Member.Commit produces: the commit to send to the
// group, a Welcome when the commit adds members, the GroupInfo of the new
// epoch, and the member as it will be once the commit is accepted. None of
// the messages shares memory with Next.
type CommitResult struct {
	Commit    *MLSMessage
	Welcome   *MLSMessage
	GroupInfo *MLSMessage
	Next      *Member
}

// Commit creates a full commit (with an UpdatePath) covering proposals by
// value and, through resolve, by reference (RFC 9420 §12.4). The receiver
// is unchanged: the caller adopts CommitResult.Next once the Delivery
// Service accepted the commit, and keeps the receiver if it did not. The
// GroupInfo of the new epoch, in CommitResult.GroupInfo and in the
// Welcome, carries the ratchet tree (see CommitWith for one that does
// not).
func (m *Member) Commit(byValue []*Proposal, byRef [][]byte, resolve ProposalResolver) (*CommitResult, error) {
	return m.CommitWith(CommitOptions{ByValue: byValue, ByRef: byRef, Resolve: resolve})
}

// CommitOptions describe the commit Member.CommitWith creates.
type CommitOptions struct {
	// ByValue are the proposals the commit carries by value.
	ByValue []*Proposal
	// ByRef are the references of the proposals it covers by reference,
	// which Resolve returns.
	ByRef   [][]byte
	Resolve ProposalResolver
	// OmitRatchetTree leaves the ratchet_tree extension out of the
	// GroupInfo of the new epoch (CommitResult.GroupInfo, and the one the
	// Welcome encrypts), so the commit's messages stay O(log n) in size
	// rather than carrying the whole tree. The joiners then get the tree
	// out of band (in MIMI from the Delivery Service's welcome_info) and
	// pass it as WelcomeOptions.RatchetTree.
	OmitRatchetTree bool
	// LeafExtensions, when not nil, replace the extensions of the
	// committer's leaf in the commit's UpdatePath (its new LeafNode); nil
	// keeps those of its current leaf. A client whose credential material
	// carried in an extension was renewed (a MIMI client binding) puts the
	// new one into the group this way. The committer's capabilities must
	// list every extension type that is not a default one.
	LeafExtensions Extensions
	// ReInitialization makes the commit part of a reinitialization (see
	// ApplyOptions.ReInitialization): ByValue may then hold the
	// PreSharedKey proposal of the reinit PSK that RFC 9420 §11.2 has
	// the new group's first commit carry (ReInitPSK makes it), whose
	// secret the member's PSKLookup (GroupOptions.PSKs) returns. The
	// group must have been created with the group_id, version, cipher
	// suite and GroupContext extensions the old group's ReInit named:
	// its joiners refuse the Welcome otherwise (WelcomeOptions.ReInit).
	ReInitialization bool
}

// CommitWith is Commit with options.
func (m *Member) CommitWith(opts CommitOptions) (*CommitResult, error) {
	byValue, byRef, resolve := opts.ByValue, opts.ByRef, opts.Resolve
	if m.signer == nil {
		return nil, errors.New("committing: member has no signer")
	}
	g := m.state
	s := g.s
	self := Sender{Type: SenderMember, Index: m.leaf}
	commit := &Commit{}
	for _, p := range byValue {
		commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalByValue, Proposal: p})
	}
	for _, r := range byRef {
		commit.Proposals = append(commit.Proposals, ProposalOrRef{Type: ProposalByReference, Ref: r})
	}
	list, err := g.resolveProposals(commit, self, resolve)
	if err != nil {
		return nil, fmt.Errorf("committing: %w", err)
	}
	if _, err := g.checkProposalList(list, self, opts.ReInitialization); err != nil {
		return nil, fmt.Errorf("committing: %w", err)
	}
	n := g.next()
	info := &CommitInfo{Committer: self, CommitterLeaf: m.leaf, Proposals: list}
	if err := n.applyProposals(list, info); err != nil {
		return nil, fmt.Errorf("committing: %w", err)
	}
	var excluded []uint32
	for _, a := range info.Added {
		excluded = append(excluded, a.Leaf)
	}
	old := n.tree.leaf(m.leaf)
	tmpl := *old
	if opts.LeafExtensions != nil {
		tmpl.Extensions = opts.LeafExtensions.clone()
	}
	np, err := n.tree.generateUpdatePath(m.leaf, tmpl, m.signer, g.ctx.GroupID, excluded, n.provisionalContext)
	if err != nil {
		return nil, fmt.Errorf("committing: %w", err)
	}
	n.index(m.leaf, old, false)
	n.index(m.leaf, n.tree.leaf(m.leaf), true)
	commit.Path = np.path

	content := &FramedContent{GroupID: g.ctx.GroupID, Epoch: g.ctx.Epoch, Sender: self, ContentType: ContentCommit, Commit: commit}
	var secrets *EpochSecrets
	var pskSecret []byte
	msg, err := m.publicMessage(content, func(auth *FramedContentAuthData) error {
		ac := &AuthenticatedContent{WireFormat: WireFormatPublicMessage, Content: *content, Auth: *auth}
		confirmed, err := s.confirmedTranscriptHash(g.interim, ac)
		if err != nil {
			return err
		}
		if n.ctx.TreeHash, err = n.tree.rootHash(); err != nil {
			return err
		}
		n.ctx.Epoch++
		n.ctx.ConfirmedTranscriptHash = confirmed
		if pskSecret, err = m.pskSecret(info.PSKs); err != nil {
			return err
		}
		if secrets, err = g.CipherSuite().DeriveEpochSecrets(m.secrets.InitSecret, np.commitSecret, pskSecret, &n.ctx); err != nil {
			return err
		}
		auth.ConfirmationTag = s.mac(secrets.ConfirmationKey, confirmed)
		n.confTag = cloneBytes(auth.ConfirmationTag)
		n.interim, err = s.interimTranscriptHash(confirmed, n.confTag)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("committing: %w", err)
	}
	next := m.successor(n, np.keys, secrets)
	next.reinit = info.ReInit.clone()
	gi, err := next.groupInfo(!opts.OmitRatchetTree)
	if err != nil {
		return nil, fmt.Errorf("committing: %w", err)
	}
	res := &CommitResult{Commit: msg, Next: next,
		GroupInfo: &MLSMessage{Version: MLS10, WireFormat: WireFormatGroupInfo, GroupInfo: gi}}
	if len(info.Added) > 0 {
		w, err := next.welcome(gi, info, np, pskSecret, list)
		if err != nil {
			return nil, fmt.Errorf("committing: %w", err)
		}
		res.Welcome = &MLSMessage{Version: MLS10, WireFormat: WireFormatWelcome, Welcome: w}
	}
	return res, nil
}

// welcome builds the Welcome for the members a commit added (RFC 9420
// §12.4.3.1). m is the committer in the new epoch.
func (m *Member) welcome(gi *GroupInfo, info *CommitInfo, np *newPath, pskSecret []byte, list []ResolvedProposal) (*Welcome, error) {
	s := m.state.s
	aead, nonce, err := s.welcomeAEAD(m.secrets.JoinerSecret, pskSecret)
	if err != nil {
		return nil, err
	}
	giBytes, err := marshal(gi)
	if err != nil {
		return nil, err
	}
	w := &Welcome{CipherSuite: s.id, EncryptedGroupInfo: aead.Seal(nil, nonce, giBytes, nil)}
	fdp, _ := m.state.tree.filteredDirectPath(m.leaf)
	added := 0
	for _, rp := range list {
		if rp.Proposal.Type != ProposalAdd {
			continue
		}
		a := info.Added[added]
		added++
		gs := GroupSecrets{JoinerSecret: m.secrets.JoinerSecret, PSKs: info.PSKs}
		for _, x := range fdp {
			if isInSubtree(leafNode(a.Leaf), x) {
				gs.PathSecret = np.pathSecrets[x]
				break
			}
		}
		pt, err := marshal(&gs)
		if err != nil {
			return nil, err
		}
		ct, err := s.encryptWithLabel(rp.Proposal.KeyPackage.InitKey, "Welcome", w.EncryptedGroupInfo, pt)
		if err != nil {
			return nil, err
		}
		w.Secrets = append(w.Secrets, EncryptedGroupSecrets{NewMember: a.KeyPackageRef, EncryptedGroupSecrets: ct})
	}
	return w, nil
}

// withSecretTree calls f with the epoch's secret tree, building it on
// first use, while holding the epoch's lock.
func (m *Member) withSecretTree(f func(*SecretTree) error) error {
	e := m.epoch
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tree == nil {
		st, err := m.state.CipherSuite().NewSecretTree(m.secrets.EncryptionSecret, m.state.tree.leaves)
		if err != nil {
			return err
		}
		e.tree = st
	}
	return f(e.tree)
}

// Protect encrypts application data as a PrivateMessage of the current
// epoch (RFC 9420 §6.3). It consumes the next key of the member's
// application ratchet in the epoch's shared secret tree.
func (m *Member) Protect(data, authenticatedData []byte) (*MLSMessage, error) {
	if m.signer == nil {
		return nil, errors.New("protecting: member has no signer")
	}
	g := m.state
	c := &FramedContent{GroupID: g.ctx.GroupID, Epoch: g.ctx.Epoch, Sender: Sender{Type: SenderMember, Index: m.leaf},
		AuthenticatedData: authenticatedData, ContentType: ContentApplication, ApplicationData: data}
	sig, err := g.CipherSuite().SignFramedContent(m.signer, WireFormatPrivateMessage, c, &g.ctx)
	if err != nil {
		return nil, err
	}
	var pm *PrivateMessage
	err = m.withSecretTree(func(st *SecretTree) error {
		ac := &AuthenticatedContent{WireFormat: WireFormatPrivateMessage, Content: *c, Auth: FramedContentAuthData{Signature: sig}}
		pm, err = g.CipherSuite().EncryptPrivateMessage(st, m.secrets.SenderDataSecret, ac, 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &MLSMessage{Version: MLS10, WireFormat: WireFormatPrivateMessage, PrivateMessage: pm}, nil
}

// Unprotect decrypts and authenticates an application PrivateMessage of the
// current epoch and returns its sender's leaf index and data. The key it
// used is erased from the epoch's shared secret tree, so a message opens
// once per epoch, whichever Member value of the epoch opens it.
func (m *Member) Unprotect(msg *MLSMessage) (uint32, []byte, error) {
	g := m.state
	if err := g.CheckMessage(msg); err != nil {
		return 0, nil, err
	}
	if msg.PrivateMessage == nil || msg.PrivateMessage.ContentType != ContentApplication {
		return 0, nil, fmt.Errorf("%w: not an application private message", ErrInvalidMessage)
	}
	var ac *AuthenticatedContent
	err := m.withSecretTree(func(st *SecretTree) error {
		var err error
		ac, err = g.CipherSuite().DecryptPrivateMessage(st, m.secrets.SenderDataSecret, msg.PrivateMessage)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	if err := g.verifyContent(ac); err != nil {
		return 0, nil, err
	}
	return ac.Content.Sender.Index, ac.Content.ApplicationData, nil
}
