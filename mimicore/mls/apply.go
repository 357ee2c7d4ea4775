package mls

import (
	"bytes"
	"fmt"
	"slices"
	"time"
)

// AddedMember is a member a commit added.
type AddedMember struct {
	Leaf          uint32
	KeyPackageRef []byte
}

// CommitInfo describes an applied commit, for the Delivery Service (who
// joined, who left) and for clients that go on to derive the epoch's
// secrets. Its byte slices and proposals alias the commit message.
type CommitInfo struct {
	// Committer is the commit's sender; CommitterLeaf its leaf index in
	// the new tree (for an external commit, the joiner's new leaf).
	Committer     Sender
	CommitterLeaf uint32
	// Proposals lists the covered proposals in commit order.
	Proposals []ResolvedProposal
	Added     []AddedMember
	Removed   []uint32
	// Path is the commit's UpdatePath, if any.
	Path *UpdatePath
	// PSKs, ExternalInit (the KEM output) and ReInit come from the covered
	// proposals.
	PSKs         []PreSharedKeyID
	ExternalInit []byte
	ReInit       *ReInit
	// ProvisionalContext is the GroupContext used to encrypt the path
	// secrets: the new epoch, tree hash and extensions with the previous
	// confirmed transcript hash (RFC 9420 §12.4.2).
	ProvisionalContext GroupContext
	// ConfirmationTag is the commit's confirmation tag. A Delivery Service
	// cannot check it; members do.
	ConfirmationTag []byte
}

// ApplyCommit authenticates a PublicMessage commit for the current epoch
// and returns the state of the next epoch (RFC 9420 §12.4.2). Proposals
// sent by reference are fetched through resolve. The receiver is never
// modified: on error the group stays as it was.
//
// Checked: group, epoch and wire format (a PrivateMessage gives
// ErrPrivateHandshake), the committer's signature, every proposal and the
// list rules of §12.2, the external commit rules, the new leaf nodes, the
// UpdatePath (keys unique in the tree, one ciphertext per member of each
// copath resolution, parent hashes), the Adds' init keys (each once, and
// none an encryption key of the new tree, as OpenMLS requires). The new
// tree hash, the GroupContext and both transcript hashes are computed. The
// membership tag and the confirmation tag need group secrets and are left
// to members.
//
// A path is required when the commit is empty or covers an Update, Remove
// or ExternalInit. RFC 9420 also requires one with GroupContextExtensions,
// but ts-mls omits it there, so such commits are accepted without a path;
// proposal types this package does not know never require one.
//
// Not checked: leaf lifetimes, which need a clock (ApplyCommitWith checks
// those of the KeyPackages a commit adds), and credential identities,
// which are the application's business.
func (g *GroupState) ApplyCommit(m *MLSMessage, resolve ProposalResolver) (*GroupState, *CommitInfo, error) {
	return g.ApplyCommitWith(m, ApplyOptions{Resolve: resolve})
}

// ApplyOptions are the inputs of ApplyCommitWith besides the commit.
type ApplyOptions struct {
	// Resolve fetches the proposals the commit covers by reference.
	Resolve ProposalResolver
	// Now, unless it is the zero time, is the validator's clock: the leaf
	// lifetime of the KeyPackage of every Add the commit covers (by value
	// or by reference, whoever proposed it) must contain it, give or take
	// Skew (RFC 9420 §7.3; Lifetime.Contains), else the commit is refused
	// with ErrInvalidProposal. The leaves already in the tree are not
	// checked, as RFC 9420 checks lifetimes only of leaves that enter it.
	Now time.Time
	// Skew is the clock skew tolerated at both ends of a lifetime, in whole
	// seconds; a negative one counts as zero.
	Skew time.Duration
	// MaxLifetime, when positive, is the longest total lifetime
	// (not_after - not_before, in whole seconds, Lifetime.SpanAtMost) the
	// KeyPackage of an Add the commit covers may have, whatever Now;
	// a longer one is refused with ErrInvalidProposal. RFC 9420 §7.2 has
	// the application choose it; zero applies none.
	MaxLifetime time.Duration
	// ReInitialization says the commit is part of a reinitialization: the
	// first commit of the group a ReInit named, which adds the old
	// group's members (RFC 9420 §11.2). Its PreSharedKey proposals may
	// then name resumption PSKs of usage reinit, which are invalid in any
	// other commit (§12.1.4). Which PSK it must be (the old group's
	// resumption_psk of the epoch its ReInit started) is the caller's to
	// check: the validator knows only this group.
	ReInitialization bool
}

// ApplyCommitWith is ApplyCommit with the options of opts: the resolver of
// the proposals by reference, and the clock against which the lifetimes
// of the KeyPackages the commit adds are checked.
func (g *GroupState) ApplyCommitWith(m *MLSMessage, opts ApplyOptions) (*GroupState, *CommitInfo, error) {
	pm, err := g.checkFraming(m, ContentCommit)
	if err != nil {
		return nil, nil, fmt.Errorf("applying commit: %w", err)
	}
	n, info, err := g.applyCommit(pm, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("applying commit: %w", err)
	}
	return n, info, nil
}

func (g *GroupState) applyCommit(pm *PublicMessage, opts ApplyOptions) (*GroupState, *CommitInfo, error) {
	ac := pm.AuthenticatedContent()
	commit := pm.Content.Commit
	committer := pm.Content.Sender
	switch committer.Type {
	case SenderMember, SenderNewMemberCommit:
	default:
		return nil, nil, fmt.Errorf("%w: sender type %d cannot commit", ErrInvalidCommit, committer.Type)
	}
	if err := g.verifyContent(ac); err != nil {
		return nil, nil, err
	}
	list, err := g.resolveProposals(commit, committer, opts.Resolve)
	if err != nil {
		return nil, nil, err
	}
	pathRequired, err := g.checkProposalList(list, committer, opts.ReInitialization)
	if err != nil {
		return nil, nil, err
	}
	if !opts.Now.IsZero() {
		if err := checkAddLifetimes(list, opts.Now, opts.Skew); err != nil {
			return nil, nil, err
		}
	}
	if opts.MaxLifetime > 0 {
		if err := checkAddSpans(list, opts.MaxLifetime); err != nil {
			return nil, nil, err
		}
	}
	if pathRequired && commit.Path == nil {
		return nil, nil, fmt.Errorf("%w: path required", ErrInvalidCommit)
	}
	if committer.Type == SenderNewMemberCommit {
		if err := g.checkResync(list, &commit.Path.LeafNode); err != nil {
			return nil, nil, err
		}
	}

	n := g.next()
	info := &CommitInfo{Committer: committer, CommitterLeaf: committer.Index, Proposals: list,
		Path: commit.Path, ConfirmationTag: cloneBytes(pm.Auth.ConfirmationTag)}
	if err := n.applyProposals(list, info); err != nil {
		return nil, nil, err
	}
	if committer.Type == SenderNewMemberCommit {
		// The joiner takes the leftmost blank leaf; its leaf node comes
		// with the path and is validated with it below.
		idx := n.tree.leftmostBlankLeaf()
		if idx == n.tree.leaves {
			if err := n.tree.extend(); err != nil {
				return nil, nil, err
			}
		}
		info.CommitterLeaf = idx
	}
	if commit.Path != nil {
		added := make([]uint32, len(info.Added))
		for k, a := range info.Added {
			added[k] = a.Leaf
		}
		slices.Sort(added)
		if err := n.applyPath(info.CommitterLeaf, commit.Path, added, committer.Type == SenderNewMemberCommit); err != nil {
			return nil, nil, err
		}
	}

	if err := n.checkInitKeys(g, list, info.Removed); err != nil {
		return nil, nil, err
	}

	th, err := n.tree.rootHash()
	if err != nil {
		return nil, nil, err
	}
	n.ctx.Epoch++
	n.ctx.TreeHash = th
	info.ProvisionalContext = n.ctx.clone()
	confirmed, err := g.s.confirmedTranscriptHash(g.interim, ac)
	if err != nil {
		return nil, nil, err
	}
	n.ctx.ConfirmedTranscriptHash = confirmed
	n.confTag = cloneBytes(info.ConfirmationTag)
	if n.interim, err = g.s.interimTranscriptHash(confirmed, n.confTag); err != nil {
		return nil, nil, err
	}
	return n, info, nil
}

// checkResync checks the leaf of an external commit that removes a leaf
// (a resync) against the removed one: it must meet the criteria of an
// Update of that leaf (RFC 9420 §12.2), which the rest of the validation
// covers but for one, a new encryption key (§7.3), since the removed
// leaf's key has left the tree by the time the joiner's leaf is checked.
// Whether the credentials name the same client is the application's
// business.
func (g *GroupState) checkResync(list []ResolvedProposal, leaf *LeafNode) error {
	for _, rp := range list {
		if rp.Proposal.Type != ProposalRemove {
			continue
		}
		if old := g.tree.leaf(rp.Proposal.Removed); old != nil && bytes.Equal(old.EncryptionKey, leaf.EncryptionKey) {
			return fmt.Errorf("%w: the joiner's leaf keeps the encryption key of leaf %d, which it removes", ErrInvalidCommit, rp.Proposal.Removed)
		}
	}
	return nil
}

// checkInitKeys refuses a list whose Adds carry one init_key twice, or an
// init_key that is an encryption key of g, the new state with the commit's
// path merged (its leaves, the added and updated ones and the committer's
// new leaf among them, and its parent nodes), or of a leaf of base, the
// state the commit applies to, that the commit does not remove (the old
// leaves of the committer and of updated members). RFC 9420 asks only that a
// KeyPackage's own init_key and leaf key differ (§10.1), but OpenMLS
// members refuse such a commit (its checks ValSem102 and ValSem104), and
// the group's keys are public to its members, so any client could publish
// a KeyPackage that breaks a group it is added to.
func (g *GroupState) checkInitKeys(base *GroupState, list []ResolvedProposal, removed []uint32) error {
	var seen map[string]struct{}
	for i, rp := range list {
		if rp.Proposal.Type != ProposalAdd {
			continue
		}
		key := rp.Proposal.KeyPackage.InitKey
		if _, dup := seen[string(key)]; dup {
			return fmt.Errorf("%w: add %d: init key of another add", ErrInvalidCommit, i)
		}
		if seen == nil {
			seen = make(map[string]struct{})
		}
		seen[string(key)] = struct{}{}
		if j, ok := g.encKeys.get(string(key)); ok {
			return fmt.Errorf("%w: add %d: init key is the encryption key of leaf %d", ErrInvalidCommit, i, j)
		}
		if x, ok := g.tree.parentWithKey(key); ok {
			return fmt.Errorf("%w: add %d: init key is the encryption key of node %d", ErrInvalidCommit, i, x)
		}
		if j, ok := base.encKeys.get(string(key)); ok && !slices.Contains(removed, j) {
			return fmt.Errorf("%w: add %d: init key is the encryption key of leaf %d", ErrInvalidCommit, i, j)
		}
	}
	return nil
}

// checkAddLifetimes refuses a list with an Add whose KeyPackage's leaf
// lifetime does not contain now, give or take skew (RFC 9420 §7.3: a
// key_package leaf entering the tree must be within its lifetime).
func checkAddLifetimes(list []ResolvedProposal, now time.Time, skew time.Duration) error {
	t := uint64(max(now.Unix(), 0))
	sk := uint64(max(skew/time.Second, 0))
	for i, rp := range list {
		p := rp.Proposal
		if p.Type != ProposalAdd {
			continue
		}
		if lt := p.KeyPackage.LeafNode.Lifetime; !lt.Contains(t, sk) {
			return fmt.Errorf("%w: add %d: the KeyPackage's lifetime [%d, %d] does not contain the time %d (tolerance %d s)",
				ErrInvalidProposal, i, lt.NotBefore, lt.NotAfter, t, sk)
		}
	}
	return nil
}

// checkAddSpans refuses a list with an Add whose KeyPackage's leaf
// lifetime is longer in total than limit (RFC 9420 §7.2).
func checkAddSpans(list []ResolvedProposal, limit time.Duration) error {
	for i, rp := range list {
		p := rp.Proposal
		if p.Type != ProposalAdd {
			continue
		}
		if err := p.KeyPackage.LeafNode.Lifetime.CheckMaxLifetime(limit); err != nil {
			return fmt.Errorf("%w: add %d: the KeyPackage's %v", ErrInvalidProposal, i, err)
		}
	}
	return nil
}

// applyProposals applies the covered proposals to g, a writable state from
// next(), in the order of RFC 9420 §12.4.2: group context extensions,
// updates, removes, adds.
func (g *GroupState) applyProposals(list []ResolvedProposal, info *CommitInfo) error {
	for _, rp := range list {
		p := rp.Proposal
		switch p.Type {
		case ProposalGroupContextExtensions:
			g.ctx.Extensions = p.Extensions.clone()
		case ProposalPSK:
			info.PSKs = append(info.PSKs, *p.PSK)
		case ProposalExternalInit:
			info.ExternalInit = p.KEMOutput
		case ProposalReInit:
			info.ReInit = p.ReInit
		}
	}
	for _, rp := range list {
		if rp.Proposal.Type != ProposalUpdate {
			continue
		}
		i := rp.Sender.Index
		old := g.tree.leaf(i)
		leaf := rp.Proposal.LeafNode
		if err := g.validateLeaf(leaf, i, SourceUpdate, old); err != nil {
			return fmt.Errorf("%w: update of leaf %d: %v", ErrInvalidProposal, i, err)
		}
		g.index(i, old, false)
		c := leaf.clone()
		g.tree.updateLeaf(i, c)
		g.index(i, c, true)
	}
	for _, rp := range list {
		if rp.Proposal.Type != ProposalRemove {
			continue
		}
		i := rp.Proposal.Removed
		g.index(i, g.tree.leaf(i), false)
		g.tree.removeLeaf(i)
		info.Removed = append(info.Removed, i)
	}
	var added []uint32
	for _, rp := range list {
		if rp.Proposal.Type != ProposalAdd {
			continue
		}
		kp := rp.Proposal.KeyPackage
		if err := g.validateLeaf(&kp.LeafNode, 0, SourceKeyPackage, nil); err != nil {
			return fmt.Errorf("%w: add: %v", ErrInvalidProposal, err)
		}
		ref, err := kp.Ref()
		if err != nil {
			return err
		}
		c := kp.LeafNode.clone()
		i, err := g.tree.placeLeaf(c)
		if err != nil {
			return fmt.Errorf("%w: add: %v", ErrInvalidProposal, err)
		}
		g.index(i, c, true)
		info.Added = append(info.Added, AddedMember{Leaf: i, KeyPackageRef: ref})
		added = append(added, i)
	}
	// The new leaves are recorded as unmerged in their ancestors at once:
	// one rewrite of each ancestor, however many Adds land below it.
	g.tree.markUnmerged(added)
	for _, rp := range list {
		if rp.Proposal.Type == ProposalGroupContextExtensions {
			// Every member, including those this commit added or
			// updated, must support the new extensions.
			if err := g.checkContextExtensions(g.ctx.Extensions); err != nil {
				return fmt.Errorf("%w: %v", ErrInvalidCommit, err)
			}
		}
	}
	return nil
}

// applyPath validates the committer's new leaf and merges its path into g,
// a writable state from next(). added lists, sorted, the leaves the commit
// added.
func (g *GroupState) applyPath(i uint32, path *UpdatePath, added []uint32, joining bool) error {
	old := g.tree.leaf(i)
	if joining {
		old = nil
	} else if old == nil {
		return fmt.Errorf("%w: committer leaf %d is blank", ErrInvalidCommit, i)
	}
	leaf := path.LeafNode.clone()
	if err := g.validateLeaf(leaf, i, SourceCommit, old); err != nil {
		return fmt.Errorf("%w: committer leaf: %v", ErrInvalidCommit, err)
	}
	if joining {
		// Occupy the leaf so that the path can be merged from it.
		g.tree.setLeaf(i, leaf)
	}
	cp := &UpdatePath{LeafNode: *leaf, Nodes: make([]UpdatePathNode, len(path.Nodes))}
	for k := range path.Nodes {
		// The ciphertexts are only counted, not kept in the tree.
		cp.Nodes[k] = UpdatePathNode{EncryptionKey: cloneBytes(path.Nodes[k].EncryptionKey),
			EncryptedPathSecrets: path.Nodes[k].EncryptedPathSecrets}
	}
	if err := g.tree.mergeUpdatePath(i, cp, added, g.encKeys); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidCommit, err)
	}
	if old != nil {
		g.index(i, old, false)
	}
	g.index(i, g.tree.leaf(i), true)
	return nil
}
