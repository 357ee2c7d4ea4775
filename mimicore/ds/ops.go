package ds

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// BindingChecker checks the client bindings of the leaves that enter or
// change a group (docs/protocol.md §5.6); *binding.Checker implements it.
// A refusal is a *binding.Error, answered with its DSError.
type BindingChecker interface {
	// CheckLeafNode checks the creator's leaf of create_group.
	CheckLeafNode(ctx context.Context, leaf *mls.LeafNode, at time.Time, opts provider.LookupOptions) (*binding.Bound, error)
	// CheckCommit checks every leaf a commit added or changed.
	CheckCommit(ctx context.Context, next *mls.GroupState, info *mls.CommitInfo, at time.Time, opts provider.LookupOptions) error
}

var _ BindingChecker = (*binding.Checker)(nil) // interface guard

// handleGroupOp processes the group operations of /group_operation and the
// two information requests, on an authenticated request.
func (s *Service) handleGroupOp(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	if s.Store == nil {
		return nil, moh.Errorf(moh.CodeNotImplemented, "this Delivery Service hosts no groups")
	}
	typ := r.Body.Body.Type
	if r.state == nil && typ != moh.CreateGroup && typ != moh.WelcomeInfo {
		// A Request not made by Authenticate (or an anonymous
		// external_join): the group's current state is the base.
		st, err := s.group(ctx, r.Body.Body.GroupID())
		if err != nil {
			return nil, err
		}
		r.state = st
	}
	switch typ {
	case moh.CreateGroup:
		return s.createGroup(ctx, r)
	case moh.SelfRemoveClient:
		return s.selfRemove(ctx, r)
	case moh.SendMessage:
		return s.sendMessage(ctx, r)
	case moh.ExternalCommitInfo:
		return s.externalCommitInfo(ctx, r)
	case moh.WelcomeInfo:
		return s.welcomeInfo(ctx, r)
	default:
		return s.commit(ctx, r)
	}
}

// ok is the answer of an accepted operation.
var ok = &moh.DSResponse{Type: moh.ResponseOK}

// createGroup serves create_group (docs/protocol.md §5.4): the GroupInfo
// must describe an epoch 0 group whose only member is the body's LeafNode
// (whose key signed the request), signed by that member; a key_package
// leaf's lifetime must contain the clock, give or take MaxClockSkew, and
// its total lifetime must be at most MaxKeyPackageLifetime; the leaf's
// client binding must verify; the group id must not be in use
// (group_exists). Freshness is the store's: CreateGroup refuses an id
// hosted here or recorded as another provider's. The Delivery Service
// does not remember the ids request_group_id handed out (they are 128
// random bits, and a client may also pick its own).
func (s *Service) createGroup(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	cg := &r.Body.Body.CreateGroup
	gi := cg.GroupInfo.GroupInfo
	if gi.GroupContext.Epoch != 0 {
		return nil, moh.Errorf(moh.CodeInvalidMLS, "create_group: the GroupInfo is for epoch %d, not 0", gi.GroupContext.Epoch)
	}
	if gi.Signer != 0 {
		return nil, moh.Errorf(moh.CodeInvalidMLS, "create_group: the GroupInfo is signed by leaf %d, not the creator's leaf 0", gi.Signer)
	}
	// The tree is the creator's leaf alone: a ratchet_tree extension in the
	// GroupInfo must equal it (VerifyGroupInfo).
	st, err := mls.NewGroupState(gi, mls.RatchetTree{{Type: mls.NodeLeaf, Leaf: &cg.LeafNode}})
	if err != nil {
		return nil, mlsError("create_group", err)
	}
	if cg.LeafNode.Source == mls.SourceKeyPackage {
		// As for the KeyPackage of an Add (mls.ApplyOptions.Now, Skew):
		// members refuse a key_package leaf outside its lifetime (RFC
		// 9420 §7.3), so a joiner would refuse this group's tree.
		now := uint64(max(s.now().Unix(), 0))
		if lt := cg.LeafNode.Lifetime; !lt.Contains(now, uint64(MaxClockSkew/time.Second)) {
			return nil, moh.Errorf(moh.CodeInvalidMLS, "create_group: the creator's leaf lifetime [%d, %d] does not contain the time %d (tolerance %d s)",
				lt.NotBefore, lt.NotAfter, now, uint64(MaxClockSkew/time.Second))
		}
		if err := cg.LeafNode.Lifetime.CheckMaxLifetime(s.maxLifetime()); err != nil {
			return nil, moh.Errorf(moh.CodeInvalidMLS, "create_group: the creator's leaf %v", err)
		}
	}
	giEnc, err := encodeGroupInfo("create_group", &cg.GroupInfo)
	if err != nil {
		return nil, err
	}
	hub, err := s.hubFor(cg.LeafNode.Credential.Identity)
	if err != nil {
		return nil, err
	}
	if err := s.checkLeafNode(ctx, r, &cg.LeafNode); err != nil {
		return nil, err
	}
	if err := s.Store.CreateGroup(ctx, store.GroupCreation{Hub: hub, State: st, GroupInfo: giEnc,
		Members: s.localMembers(st)}); err != nil {
		if errors.Is(err, store.ErrGroupExists) {
			return nil, moh.Errorf(moh.CodeGroupExists, "create_group: the group id is already in use")
		}
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "create_group: storing the group: %w", err)
	}
	return ok, nil
}

// hubFor returns the provider that hosts a group created by the client
// with the given identity: the provider of its client URI, which must be
// one of s.Providers (forbidden otherwise).
func (s *Service) hubFor(identity []byte) (string, error) {
	if len(s.Providers) == 0 {
		return "", moh.Errorf(moh.CodeNotImplemented, "create_group: this Delivery Service serves no provider domain")
	}
	prov, _, _, err := moh.ParseClientURI(identity)
	if err != nil {
		return s.Providers[0], nil
	}
	if !slices.Contains(s.Providers, string(prov)) {
		return "", moh.Errorf(moh.CodeForbidden, "create_group: the creator is a client of %s, not of this provider", prov)
	}
	return string(prov), nil
}

// commit serves the commit-carrying types: delete_group, add_users,
// remove_users, add_clients, remove_clients, update_client,
// external_join and re_initialize_group (docs/protocol.md §5.4). In order:
// the commit's sender is the request's signer; the pending proposals of
// the epoch are loaded for the references; RFC 9420 validation on the
// group's public state (ApplyCommitWith), with the lifetime of every
// KeyPackage the commit adds checked against the DS clock, give or take
// MaxClockSkew, as clients check it, and its total length against
// MaxKeyPackageLifetime; the proposals the request type
// allows (DS -03), and the reinit PSK a group's first add may carry
// (checkReInitPSK); the GroupInfo of the new epoch, assembled from the
// state and the PartialGroupInfo, verifies; the client bindings of every
// new or changed leaf; then the conditional write of the new epoch. Any
// refusal writes nothing.
func (s *Service) commit(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	body := &r.Body.Body
	typ := body.Type
	u := &body.GroupUpdate
	msg := &u.Commit
	gid := msg.GroupID()
	base := r.state
	sender := msg.PublicMessage.Content.Sender
	if typ != moh.ExternalJoin && sender.Index != r.Body.Auth.SenderIndex {
		return nil, moh.Errorf(moh.CodeForbidden, "%s: the commit's sender is leaf %d, but the request is signed by leaf %d",
			typ, sender.Index, r.Body.Auth.SenderIndex)
	}
	pending, err := s.pendingProposals(ctx, gid, base.Epoch())
	if err != nil {
		return nil, err
	}
	// The KeyPackages a commit adds may come from other providers'
	// clients, or have been fetched long before: members refuse a commit
	// that adds one outside its lifetime (RFC 9420 §7.3), and fanning it
	// out would leave them behind the hub's epoch.
	next, info, err := base.ApplyCommitWith(msg, mls.ApplyOptions{Resolve: resolver(pending),
		Now: s.now(), Skew: MaxClockSkew, MaxLifetime: s.maxLifetime(),
		ReInitialization: reinitializing(typ, base)})
	if err != nil {
		return nil, mlsError(typ.String(), err)
	}
	if err := checkRules(typ, base, next, info); err != nil {
		return nil, err
	}
	if err := s.checkReInitPSK(ctx, typ, base, info); err != nil {
		return nil, err
	}
	if err := checkReInitSize(typ, info); err != nil {
		return nil, err
	}
	if err := checkCoversPending(typ, msg, pending, base.Epoch()); err != nil {
		return nil, err
	}
	if typ == moh.AddUsers || typ == moh.AddClients {
		if err := checkWelcomes(typ, base.CipherSuite(), info, body.WelcomePackages); err != nil {
			return nil, err
		}
	}
	gi, err := assembleGroupInfo(next, info, &u.PartialGroupInfo)
	if err != nil {
		return nil, mlsError(typ.String(), err)
	}
	giEnc, err := encodeGroupInfo(typ.String(), &mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi})
	if err != nil {
		return nil, err
	}
	if err := s.bindings(typ).CheckCommit(ctx, next, info, s.now(), provider.LookupOptions{Source: r.Source}); err != nil {
		return nil, bindingError(typ.String(), err)
	}
	fan, err := s.encodeCommitFanout(typ.String(), base, next, info, msg, body.WelcomePackages)
	if err != nil {
		return nil, err
	}
	if err := fan.resolveSender(ctx); err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "%s: %w", typ, err)
	}
	ec := store.EpochCommit{Base: base, Next: next, Welcome: len(info.Added) > 0,
		Joiners: joiners(next, info), GroupInfo: giEnc, Fanout: fan.out, Pending: len(pending),
		// delete_group: the commit that removed everyone else and the
		// deletion are one write, so of two racing requests exactly one
		// wins, and a failure leaves the group as it was.
		Delete: typ == moh.DeleteGroup,
		// re_initialize_group: the group is closed in the write that
		// accepts its ReInit (errReInitialized).
		ReInit: info.ReInit}
	delivered, err := s.Store.CommitEpoch(ctx, ec)
	// The write is tried again, whichever comes first and in any order,
	// once with the group's local members when the store does not know
	// them (seedMembers completes the post only once), and up to
	// maxPendingRechecks times after a self-remove kept since the pending
	// proposals were read: the commit must cover it too
	// (checkCoversPending), or be refused, rather than drop it with the
	// epoch.
	for rechecks := 0; ; {
		if errors.Is(err, store.ErrGroupMembersUnknown) && fan.seedMembers(base) {
			ec.Fanout = fan.out
		} else if errors.Is(err, store.ErrProposalsChanged) && rechecks < maxPendingRechecks {
			rechecks++
			if pending, err = s.pendingProposals(ctx, gid, base.Epoch()); err != nil {
				return nil, err
			}
			if err := checkCoversPending(typ, msg, pending, base.Epoch()); err != nil {
				return nil, err
			}
			ec.Pending = len(pending)
		} else {
			break
		}
		delivered, err = s.Store.CommitEpoch(ctx, ec)
	}
	switch {
	case errors.Is(err, store.ErrReInitialized):
		return nil, errReInitialized(typ.String())
	case errors.Is(err, store.ErrProposalsChanged):
		return nil, moh.Errorf(moh.CodeCommitConflict, "%s: proposals keep arriving in epoch %d; retry", typ, base.Epoch())
	case errors.Is(err, store.ErrEpochConflict):
		return nil, moh.Errorf(moh.CodeCommitConflict, "%s: another commit for epoch %d was accepted first", typ, base.Epoch())
	case errors.Is(err, store.ErrNotFound):
		return nil, errNotFound()
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "%s: storing the commit: %w", typ, err)
	}
	fan.notify(delivered.Outbox)
	fan.report(typ.String(), delivered)
	s.advanceView(base, next, info)
	return ok, nil
}

// selfRemove serves self_remove_client: a Remove proposal of the sender's
// own leaf, verified against the current state and kept as pending in its
// epoch, for the next commit of another member to cover (by reference, or
// by a Remove of the same leaf, checkCoversPending). A
// leaf's removal is pending once: another self-remove of it in the epoch
// (the same Remove with other authenticated_data, or signed again) is
// answered ok and keeps and delivers nothing, since no commit may remove a
// leaf twice (RFC 9420 §12.2) and every pending proposal must be covered.
// Of two racing ones both may be kept; checkCoversPending then takes a
// commit that covers either.
func (s *Service) selfRemove(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	msg := &r.Body.Body.Message
	base := r.state
	c := &msg.PublicMessage.Content
	self := r.Body.Auth.SenderIndex
	if c.Sender.Index != self || c.Proposal.Removed != self {
		return nil, moh.Errorf(moh.CodeForbidden, "self_remove_client: the proposal of leaf %d removes leaf %d, not its signer, leaf %d",
			c.Sender.Index, c.Proposal.Removed, self)
	}
	_, ref, err := base.VerifyProposal(msg)
	if err != nil {
		return nil, mlsError("self_remove_client", err)
	}
	pending, err := s.pendingProposals(ctx, base.GroupID(), base.Epoch())
	if err != nil {
		return nil, err
	}
	for _, p := range pending {
		if leaf, isRemove := removedLeaf(p); isRemove && leaf == self {
			return ok, nil
		}
	}
	enc, err := wire.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("self_remove_client: encoding the proposal: %w", err)
	}
	if err := checkDelivered("self_remove_client", "the proposal", enc); err != nil {
		return nil, err
	}
	// The proposal goes to the other members, who must cover it in the
	// next commit, in the write that keeps it.
	fan := &fanoutBuilder{s: s, groupID: base.GroupID()}
	fan.postFrom(enc, base, self)
	if err := fan.checkSize("self_remove_client"); err != nil {
		return nil, err
	}
	if err := fan.resolveSender(ctx); err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "self_remove_client: %w", err)
	}
	err = s.Store.AddProposal(ctx, base.GroupID(), base.Epoch(), store.PendingProposal{Ref: ref, Message: enc, Fanout: fan.out})
	if errors.Is(err, store.ErrGroupMembersUnknown) && fan.seedMembers(base) {
		err = s.Store.AddProposal(ctx, base.GroupID(), base.Epoch(), store.PendingProposal{Ref: ref, Message: enc, Fanout: fan.out})
	}
	switch {
	case errors.Is(err, store.ErrReInitialized):
		return nil, errReInitialized("self_remove_client")
	case errors.Is(err, store.ErrEpochConflict):
		return nil, moh.Errorf(moh.CodeStaleEpoch, "self_remove_client: the group has left epoch %d", base.Epoch())
	case errors.Is(err, store.ErrNotFound):
		return nil, errNotFound()
	case errors.Is(err, store.ErrConflict):
		return nil, moh.Errorf(moh.CodeQuotaExceeded, "self_remove_client: %d proposals are already pending in this epoch", store.MaxPendingProposals)
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "self_remove_client: keeping the proposal: %w", err)
	}
	fan.notify(nil)
	return ok, nil
}

// SendDedupWindow is how long the Delivery Service remembers an
// application message it accepted for a group hosted here, so that the
// same message sent again (a client resending a send_message whose answer
// was lost, byte for byte or signed again under a later timestamp) is
// answered ok and delivered to no one a second time (docs/protocol.md
// §5.4, step 9): as long as a receiver of deliver_message remembers a
// delivered message (DeliverDedupWindow).
const SendDedupWindow = DeliverDedupWindow

// sendDedupLabel separates the digests of accepted application messages
// from the other digests they share their records with (client
// signatures, delivered messages).
const sendDedupLabel = "MIMI send_message dedup"

// sendDigest names an accepted application message for duplicate
// suppression: SHA-256 of the label, then the group id and the MLSMessage
// as encoded, each with a 4-byte length. The DSRequest's signature and
// timestamp are not part of it, so a resend signed again matches, and
// neither is the sender's leaf, which the PrivateMessage binds already.
func sendDigest(gid, msg []byte) []byte {
	h := sha256.New()
	h.Write([]byte(sendDedupLabel))
	var n [4]byte
	for _, b := range [][]byte{gid, msg} {
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	return h.Sum(nil)
}

// sendMessage serves send_message: an application PrivateMessage of the
// group's current epoch from a member, delivered to the other members
// (docs/protocol.md §9, fan-out) on condition that the group is still in
// that epoch (stale_epoch otherwise: the sender re-encrypts it in the new
// one), so that every member gets a group's messages in epoch order. The
// Delivery Service cannot read it. A message it accepted already
// (SendDedupWindow) is answered ok and delivered nowhere, also once the
// group left the message's epoch (staleCopy): the record of the message
// is written with its delivery, so a crash keeps both or neither, and of
// copies sent at once exactly one is delivered.
func (s *Service) sendMessage(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	msg := &r.Body.Body.Message
	base := r.state
	if err := base.CheckMessage(msg); err != nil {
		refused := mlsError("send_message", err)
		if !errors.Is(err, mls.ErrStaleEpoch) {
			return nil, refused
		}
		enc, merr := wire.Marshal(msg)
		if merr != nil {
			return nil, fmt.Errorf("send_message: encoding the message: %w", merr)
		}
		return s.staleCopy(ctx, base.GroupID(), enc, refused)
	}
	enc, err := wire.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("send_message: encoding the message: %w", err)
	}
	if err := checkDelivered("send_message", "the message", enc); err != nil {
		return nil, err
	}
	fan := &fanoutBuilder{s: s, groupID: base.GroupID()}
	fan.postFrom(enc, base, r.Body.Auth.SenderIndex)
	if err := fan.checkSize("send_message"); err != nil {
		return nil, err
	}
	if err := fan.resolveSender(ctx); err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "send_message: %w", err)
	}
	if fan.out.Group != nil || len(fan.out.Local) > 0 || len(fan.out.Remote) > 0 {
		// A message that reaches no one needs no record: a copy of it
		// would reach no one either, since membership changes only
		// with the epoch.
		fan.out.Dedup, fan.out.DedupExpires = sendDigest(base.GroupID(), enc), s.now().Add(SendDedupWindow)
	}
	delivered, err := s.Store.Deliver(ctx, base.GroupID(), base.Epoch(), fan.out)
	if errors.Is(err, store.ErrGroupMembersUnknown) && fan.seedMembers(base) {
		delivered, err = s.Store.Deliver(ctx, base.GroupID(), base.Epoch(), fan.out)
	}
	switch {
	case errors.Is(err, store.ErrReInitialized):
		return nil, errReInitialized("send_message")
	case errors.Is(err, store.ErrDuplicate):
		// Accepted and delivered before: the copy is answered like
		// the first, and nothing was written.
		return ok, nil
	case errors.Is(err, store.ErrEpochConflict):
		return s.staleCopy(ctx, base.GroupID(), enc,
			moh.Errorf(moh.CodeStaleEpoch, "send_message: the group has left epoch %d", base.Epoch()))
	case errors.Is(err, store.ErrNotFound):
		return nil, errNotFound()
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "send_message: delivering: %w", err)
	}
	fan.notify(delivered.Outbox)
	fan.report("send_message", delivered)
	return ok, nil
}

// staleCopy answers a send_message whose message, enc, is not for the
// group's current epoch: ok when the Delivery Service delivered the same
// message already (its record, SendDedupWindow, is alive), so that a
// client whose answer was lost before a commit moved the group on learns
// that it was delivered, and delivers nothing; refused, stale_epoch,
// otherwise. The lookup is a read made only on this path.
func (s *Service) staleCopy(ctx context.Context, gid, enc []byte, refused error) (*moh.DSResponse, error) {
	found, err := s.Store.DedupRecorded(ctx, sendDigest(gid, enc))
	switch {
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "send_message: looking up the message's earlier delivery: %w", err)
	case found:
		return ok, nil
	}
	return nil, refused
}

// externalCommitInfo serves external_commit_info for a member: the
// GroupInfo of the current epoch, as the Delivery Service assembled and
// verified it from the commit that started the epoch (or the create_group
// GroupInfo at epoch 0), and the current ratchet tree. A reinitialized
// group serves none: no one may join it (errReInitialized).
func (s *Service) externalCommitInfo(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	base := r.state
	epoch, gi, err := s.Store.GroupInfo(ctx, base.GroupID())
	switch {
	case errors.Is(err, store.ErrReInitialized):
		return nil, errReInitialized("external_commit_info")
	case errors.Is(err, store.ErrNotFound):
		return nil, errNotFound()
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "external_commit_info: loading the GroupInfo: %w", err)
	case epoch != base.Epoch():
		// A commit landed since the request was authenticated: the
		// joiner asks again and gets the new epoch's.
		return nil, moh.Errorf(moh.CodeStaleEpoch, "external_commit_info: the group moved to epoch %d meanwhile; ask again", epoch)
	}
	rt := base.Tree().RatchetTree()
	tree, err := wire.Marshal(&rt)
	if err != nil {
		return nil, fmt.Errorf("external_commit_info: encoding the tree: %w", err)
	}
	return &moh.DSResponse{Type: moh.ResponseExternalCommitInfo, GroupInfo: gi, RatchetTree: tree}, nil
}

// welcomeInfo serves welcome_info: the ratchet tree of the epoch a
// Welcome added the joiner in, which Authenticate found through Joiners.
func (s *Service) welcomeInfo(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	wi := &r.Body.Body.WelcomeInfo
	rt, err := s.Store.WelcomeTree(ctx, wi.GroupID, wi.Epoch)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNotFound()
	}
	if err != nil {
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "welcome_info: loading the tree: %w", err)
	}
	tree, err := wire.Marshal(&rt)
	if err != nil {
		return nil, fmt.Errorf("welcome_info: encoding the tree: %w", err)
	}
	return &moh.DSResponse{Type: moh.ResponseWelcomeInfo, RatchetTree: tree}, nil
}

// errReInitialized is the refusal of a request for a group that a
// re_initialize_group closed. RFC 9420 §12.4.2: once a member processed
// a commit covering a ReInit, it "MUST NOT use the group to send messages
// anymore" and waits for the Welcome of the new group the ReInit names
// (§11.2), which is another group, created with create_group. So the
// store refuses every later commit (of any type, external joins
// included), proposal and application message of the old group in the
// write that would accept it (store.ErrReInitialized), as is every
// attachment upload to it and copy into it (Upload, copyAttachment; its
// attachments are still downloaded and copied out, to the new group), and
// its GroupInfo is no longer served for external joins: forbidden, since
// the sender is authenticated and the operation is not allowed. welcome_info still
// serves the trees of its earlier epochs, which joiners of those epochs
// need to process the ReInit commit and derive the resumption PSK the
// new group's Welcome names.
func errReInitialized(what string) error {
	return moh.Errorf(moh.CodeForbidden, "%s: the group was reinitialized; its members continue in the group its ReInit names", what)
}

// maxPendingRechecks bounds how many times a commit is checked again
// against the pending proposals of its epoch when self-removes keep being
// kept between its check and its write (store.ErrProposalsChanged); it is
// then answered commit_conflict.
const maxPendingRechecks = 3

// pendingProposals loads the proposals pending in epoch.
func (s *Service) pendingProposals(ctx context.Context, gid []byte, epoch uint64) ([]store.PendingProposal, error) {
	pending, err := s.Store.PendingProposals(ctx, gid, epoch)
	switch {
	case errors.Is(err, store.ErrEpochConflict):
		return nil, moh.Errorf(moh.CodeCommitConflict, "the group has left epoch %d", epoch)
	case errors.Is(err, store.ErrNotFound):
		return nil, errNotFound()
	case err != nil:
		return nil, moh.Errorf(moh.CodeBackendUnavailable, "loading the pending proposals: %w", err)
	}
	return pending, nil
}

// MaxGroupInfoSize bounds the encoded GroupInfo of an epoch, which the
// Delivery Service keeps for external_commit_info: a create_group or
// commit whose GroupInfo is larger is refused too_large. It leaves room
// for GroupInfo extensions, not for the ratchet tree: clients omit the
// ratchet_tree extension from the GroupInfo they sign for the DS, which
// serves the tree itself (docs/protocol.md §5.2).
//
// It is the Delivery Service's own bound, well under what the store
// accepts (store.MaxGroupInfoSize).
const MaxGroupInfoSize = 64 << 10

// encodeGroupInfo encodes a GroupInfo message to keep, refusing one over
// MaxGroupInfoSize.
func encodeGroupInfo(what string, gi *mls.MLSMessage) ([]byte, error) {
	enc, err := wire.Marshal(gi)
	if err != nil {
		return nil, fmt.Errorf("%s: encoding the GroupInfo: %w", what, err)
	}
	if len(enc) > MaxGroupInfoSize {
		return nil, moh.Errorf(moh.CodeTooLarge, "%s: the GroupInfo takes %d bytes, more than %d: omit its ratchet_tree extension, the Delivery Service serves the tree",
			what, len(enc), MaxGroupInfoSize)
	}
	return enc, nil
}

// bindings returns the binding checker, or one that refuses every leaf
// when none is configured.
func (s *Service) bindings(moh.RequestType) BindingChecker {
	if s.Bindings != nil {
		return s.Bindings
	}
	return refuseAll{}
}

// checkLeafNode checks the binding of a leaf not yet in a tree.
func (s *Service) checkLeafNode(ctx context.Context, r *Request, leaf *mls.LeafNode) error {
	if _, err := s.bindings(r.Body.Body.Type).CheckLeafNode(ctx, leaf, s.now(), provider.LookupOptions{Source: r.Source}); err != nil {
		return bindingError(r.Body.Body.Type.String(), err)
	}
	return nil
}

// refuseAll is the BindingChecker of a Service without one: no leaf has a
// binding it could check.
type refuseAll struct{}

var errNoChecker = &binding.Error{Kind: binding.ErrUnknownKey, Err: errors.New("no binding checker is configured")}

func (refuseAll) CheckLeafNode(context.Context, *mls.LeafNode, time.Time, provider.LookupOptions) (*binding.Bound, error) {
	return nil, errNoChecker
}

func (refuseAll) CheckCommit(context.Context, *mls.GroupState, *mls.CommitInfo, time.Time, provider.LookupOptions) error {
	return errNoChecker
}

// bindingError turns a refusal of the binding checker into its DSError.
func bindingError(what string, err error) error {
	var be *binding.Error
	if errors.As(err, &be) {
		e := be.DSError()
		e.Message = what + ": " + e.Message
		e.Err = err
		return e
	}
	return moh.Errorf(moh.CodeBackendUnavailable, "%s: checking client bindings: %w", what, err)
}

// mlsError maps a refusal of the public group state to its DSError: a
// message for another epoch is stale_epoch, anything else about the MLS
// content invalid_mls (the state itself is trusted, so every error of
// ApplyCommit, VerifyProposal, VerifyGroupInfo and NewGroupState is about
// the request).
func mlsError(what string, err error) error {
	if errors.Is(err, mls.ErrStaleEpoch) {
		return moh.Errorf(moh.CodeStaleEpoch, "%s: the message is not for the group's current epoch", what)
	}
	return &moh.Error{Code: moh.CodeInvalidMLS, Message: what + ": " + err.Error(), Err: err}
}

// resolver resolves a commit's references among the pending proposals.
func resolver(pending []store.PendingProposal) mls.ProposalResolver {
	return func(ref []byte) (*mls.AuthenticatedContent, error) {
		for _, p := range pending {
			if !bytes.Equal(p.Ref, ref) {
				continue
			}
			m, err := mls.DecodeMLSMessage(p.Message)
			if err != nil || m.PublicMessage == nil {
				return nil, fmt.Errorf("%w: the kept proposal does not decode", mls.ErrUnknownProposal)
			}
			return m.PublicMessage.AuthenticatedContent(), nil
		}
		return nil, fmt.Errorf("%w: no pending proposal has that reference", mls.ErrUnknownProposal)
	}
}

// checkCoversPending applies DS -03's rule that a member's commit covers
// every proposal pending in its epoch: by reference, or, for a pending
// Remove of a leaf, by any Remove of that leaf the commit holds, by value
// or by another pending reference. RFC 9420 §12.4 lets a committer choose
// one of several proposals for one leaf, and no commit may remove a leaf
// twice: two racing self-removes of one leaf may both be kept, and an
// OpenMLS-style client removing a leaf whose self-remove is pending may
// send its own Remove (remove_users, remove_clients, delete_group).
//
// An external commit cannot cover proposals by reference (RFC 9420
// §12.4.3.2), and accepting one would drop them with the epoch: a
// member's self-remove would be lost. DS -03 leaves this open; here the
// external join is refused commit_conflict while a proposal is pending,
// and the joiner retries once a member's commit has covered it.
func checkCoversPending(typ moh.RequestType, msg *mls.MLSMessage, pending []store.PendingProposal, epoch uint64) error {
	if len(pending) == 0 {
		return nil
	}
	if typ == moh.ExternalJoin {
		return moh.Errorf(moh.CodeCommitConflict, "external_join: proposals are pending in epoch %d, which an external commit cannot cover; retry after the next commit", epoch)
	}
	// The commit's references, and the leaves it removes by value or by a
	// pending reference: a pending Remove of one of them is covered too,
	// as a commit may not remove a leaf twice. Sets, so that the cost is
	// linear in the proposals.
	refs := make(map[string]bool)
	removed := make(map[uint32]bool)
	for _, por := range msg.PublicMessage.Content.Commit.Proposals {
		switch {
		case por.Type == mls.ProposalByReference:
			refs[string(por.Ref)] = true
		case por.Proposal != nil && por.Proposal.Type == mls.ProposalRemove:
			removed[por.Proposal.Removed] = true
		}
	}
	for _, p := range pending {
		if leaf, isRemove := removedLeaf(p); isRemove && refs[string(p.Ref)] {
			removed[leaf] = true
		}
	}
	for _, p := range pending {
		if refs[string(p.Ref)] {
			continue
		}
		if leaf, isRemove := removedLeaf(p); isRemove && removed[leaf] {
			continue
		}
		return moh.Errorf(moh.CodeForbidden, "%s: the commit does not cover the proposals pending in its epoch", typ)
	}
	return nil
}

// removedLeaf returns the leaf a pending proposal removes, when it is a
// Remove (every pending proposal is a self-remove, selfRemove).
func removedLeaf(p store.PendingProposal) (uint32, bool) {
	m, err := mls.DecodeMLSMessage(p.Message)
	if err != nil || m.PublicMessage == nil || m.PublicMessage.Content.ContentType != mls.ContentProposal ||
		m.PublicMessage.Content.Proposal == nil || m.PublicMessage.Content.Proposal.Type != mls.ProposalRemove {
		return 0, false
	}
	return m.PublicMessage.Content.Proposal.Removed, true
}

// assembleGroupInfo builds the GroupInfo of the epoch a commit started
// (DS -03's PartialGroupInfo): the new GroupContext and confirmation tag
// from the state, the committer's leaf as signer, and the extensions and
// signature the committer sent. It must verify with the committer's key.
func assembleGroupInfo(next *mls.GroupState, info *mls.CommitInfo, p *moh.PartialGroupInfo) (*mls.GroupInfo, error) {
	gi := &mls.GroupInfo{GroupContext: next.GroupContext(), Extensions: p.Extensions,
		ConfirmationTag: next.ConfirmationTag(), Signer: info.CommitterLeaf, Signature: p.Signature}
	if err := next.VerifyGroupInfo(gi); err != nil {
		return nil, fmt.Errorf("checking the partial GroupInfo: %w", err)
	}
	return gi, nil
}

// joiners returns the KeyPackages the commit described by info added, for
// the key_package_signature of their welcome_info: each one's
// KeyPackageRef (computed by ApplyCommit with mls.KeyPackage.Ref) and the
// signature key of its leaf node, which sits unchanged at its leaf in
// next, the state the commit produced.
func joiners(next *mls.GroupState, info *mls.CommitInfo) []store.Joiner {
	if len(info.Added) == 0 {
		return nil
	}
	js := make([]store.Joiner, 0, len(info.Added))
	for _, a := range info.Added {
		leaf, _ := next.Member(a.Leaf)
		js = append(js, store.Joiner{Ref: a.KeyPackageRef, SignatureKey: leaf.SignatureKey()})
	}
	return js
}

// checkWelcomes checks the Welcomes of an add: every KeyPackage the commit
// added is named by exactly one Welcome of the group's cipher suite cs, and
// no Welcome names another.
func checkWelcomes(typ moh.RequestType, cs mls.CipherSuite, info *mls.CommitInfo, packages []moh.WelcomePackage) error {
	want := make(map[string]bool, len(info.Added))
	for _, a := range info.Added {
		want[string(a.KeyPackageRef)] = false
	}
	for _, wp := range packages {
		if wp.Welcome.Welcome.CipherSuite != cs {
			return moh.Errorf(moh.CodeInvalidMLS, "%s: a Welcome is of cipher suite %d, not the group's", typ, uint16(wp.Welcome.Welcome.CipherSuite))
		}
		for _, sec := range wp.Welcome.Welcome.Secrets {
			done, added := want[string(sec.NewMember)]
			if !added || done {
				return moh.Errorf(moh.CodeInvalidMLS, "%s: a Welcome names a KeyPackage the commit does not add, or one named already", typ)
			}
			want[string(sec.NewMember)] = true
		}
	}
	for _, done := range want {
		if !done {
			return moh.Errorf(moh.CodeInvalidMLS, "%s: a member the commit adds has no Welcome", typ)
		}
	}
	return nil
}
