package store

import (
	"context"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// Errors of GroupStore. Each wraps ErrConflict, so a caller that only
// tells refusals from failures may test for that; errors.Is tells them
// apart.
var (
	// ErrGroupExists reports a group id already in use: a group hosted
	// here, or one recorded as hosted by another provider.
	ErrGroupExists = fmt.Errorf("group id already in use: %w", ErrConflict)
	// ErrEpochConflict reports that the group is no longer at the epoch
	// (and state) the write was built on: another commit won the epoch.
	ErrEpochConflict = fmt.Errorf("group is no longer at that epoch: %w", ErrConflict)
	// ErrProposalsChanged reports that the proposals pending in the
	// epoch a commit was built on are no longer those it was checked
	// against (EpochCommit.Pending): one was added meanwhile.
	ErrProposalsChanged = fmt.Errorf("the epoch's pending proposals changed: %w", ErrConflict)
	// ErrReInitialized reports that the group was reinitialized: a
	// commit covering a ReInit proposal was stored (EpochCommit.ReInit),
	// after which the group takes no commit, proposal, message or
	// attachment (Attachments.ReserveAttachment, and CopyAttachment
	// into it), and no one may join it (RFC 9420 §11.2, §12.4.2).
	ErrReInitialized = fmt.Errorf("group was reinitialized: %w", ErrConflict)
)

// Limits of GroupStore; larger values are ErrInvalid (except
// MaxPendingProposals, see AddProposal).
const (
	// MaxProposalSize bounds the encoded message of a pending proposal.
	// It holds an Add carrying a post-quantum KeyPackage.
	MaxProposalSize = 64 << 10
	// MaxGroupInfoSize bounds a stored GroupInfo.
	MaxGroupInfoSize = 1 << 20
	// MaxPendingProposals bounds the proposals pending in one epoch.
	MaxPendingProposals = 256
	// MaxReInitSize bounds the encoded ReInit proposal a reinitializing
	// commit keeps (EpochCommit.ReInit): that of a commit message
	// (MaxProposalSize), whose only proposal it is.
	MaxReInitSize = MaxProposalSize
	// WelcomeTreeEpochs and WelcomeTreeLifetime bound how long the ratchet
	// tree of a Welcome's epoch is kept (PROFILE §5): while the group's
	// current epoch is less than the Welcome's epoch plus
	// WelcomeTreeEpochs, and for WelcomeTreeLifetime after the commit
	// that started it, whichever ends first.
	WelcomeTreeEpochs   = 64
	WelcomeTreeLifetime = 14 * 24 * time.Hour
	// MaxJoiners bounds the joiners of one commit (EpochCommit.Joiners):
	// a commit cannot add more members than a tree has leaves.
	MaxJoiners = mls.MaxLeaves
)

// GroupStore keeps the public state of the MLS groups this provider hosts
// (it is their hub, PROFILE §9) and which provider hosts each group it
// knows of. The Delivery Service validates every handshake against the
// state it loads and writes the outcome here; the store checks nothing of
// MLS beyond the epoch a write is conditional on.
//
// The state of a group is an immutable *mls.GroupState. A backend keeps it
// in parts (see mls.StoredState) so that a commit writes what changed,
// O(log n) tree positions for a commit with a path, not the whole tree,
// and a load does not rehash or re-verify the tree: a state read back from
// the store is trusted as the DS's own. A backend may also keep loaded
// states in memory (keyed by group and epoch, replaced on commit); the
// semantics below do not depend on it, and the state returned is the one
// last committed by any process on the same database.
//
// The commits and messages the DS accepts are delivered by the same
// writes (Fanout): a GroupStore's backend also holds the local clients'
// Queues and the Outbox those writes fill.
//
// Group ids are 1..MaxIDSize bytes and hub domains 1..MaxDomainSize bytes
// (ErrInvalid otherwise).
type GroupStore interface {
	// CreateGroup records a new group hosted here: c.Hub as its hub
	// provider, c.State as its current state, c.GroupInfo (nil for none)
	// as the GroupInfo of that epoch and c.Members as its local members,
	// who read the group's log (GroupPost) from the next message on; the
	// group id is c.State.GroupID(). It fails with ErrGroupExists when the
	// id is already in use, hosted here or recorded with RecordGroupHub,
	// or was the id of a group deleted here, and leaves the stored group as
	// it was.
	CreateGroup(ctx context.Context, c GroupCreation) error

	// GroupInfo returns the current epoch of a group hosted here and the
	// GroupInfo stored for that epoch (by CreateGroup or the CommitEpoch
	// that started it), for external joins (PROFILE §5:
	// external_commit_info). It is ErrNotFound when the group is unknown
	// or no GroupInfo was stored for its current epoch: a GroupInfo never
	// outlives its epoch. It is ErrReInitialized once the group was
	// reinitialized: no one may join it.
	GroupInfo(ctx context.Context, groupID []byte) (epoch uint64, groupInfo []byte, err error)

	// LoadGroup returns the current state of a group hosted here, or
	// ErrNotFound (also for a group only recorded with RecordGroupHub).
	// The state may be shared with other callers: GroupState is
	// immutable.
	LoadGroup(ctx context.Context, groupID []byte) (*mls.GroupState, error)

	// CommitEpoch replaces the state of the group c.Base.GroupID() by
	// c.Next, atomically and on condition: only while the stored state is
	// still c.Base (the same epoch, GroupContext and transcript).
	// Otherwise it fails with ErrEpochConflict and writes nothing, so of
	// two commits built on the same epoch exactly one is stored, also when
	// both are written at the same instant or in the same batch. An unknown group is ErrNotFound;
	// a Next that is not Base's group at the epoch after Base's is
	// ErrInvalid, and so are joiners that EpochCommit does not allow. On
	// success the proposals pending in Base's epoch are dropped, and with
	// c.Welcome set Next's ratchet tree is kept for the members the
	// commit's Welcome added (WelcomeTree), with their keys (JoinerKey),
	// in the same atomic write, and so is c.Fanout: the commit's delivery
	// to the members (see Fanout), whose outcome it reports. It is also
	// conditional on the pending proposals: when the number pending in
	// Base's epoch is not c.Pending (one was added after the caller read
	// them), it fails with ErrProposalsChanged and writes nothing, so a
	// proposal the commit was not checked against is never dropped with
	// the epoch. The epoch is checked first. With c.Delete set, the group
	// is then deleted (DeleteGroup) in the same atomic write. With
	// c.ReInit set, the group is marked reinitialized in the same atomic
	// write, and from then on every CommitEpoch, Deliver and AddProposal
	// for it fails with ErrReInitialized and writes nothing (also one
	// built on an earlier epoch), as do GroupInfo, and ReserveAttachment
	// and CopyAttachment into it (Attachments); LoadGroup,
	// WelcomeTree, JoinerKey and PendingProposals answer as before.
	CommitEpoch(ctx context.Context, c EpochCommit) (Delivered, error)

	// ReInitOf returns what the store kept of the commit that
	// reinitialized a group hosted here (EpochCommit.ReInit): the ReInit
	// proposal it covered and the epoch it started, so that the group the
	// ReInit names can check the reinit PSK its first commit carries (RFC
	// 9420 §11.2). It is one lookup by group id. It is ErrNotFound when
	// the group is not hosted here (also once deleted) or not
	// reinitialized, and also when it was reinitialized before the store
	// kept the ReInit proposal (a group marked so by an older version of
	// the store has none to return).
	ReInitOf(ctx context.Context, groupID []byte) (ReInitRecord, error)

	// Deliver writes f, the delivery of a message the DS accepted for a
	// group hosted here in epoch (an application message), in one atomic
	// write, on condition that the group is still at epoch: otherwise it
	// fails with ErrEpochConflict and writes nothing, so every member
	// gets a group's messages in epoch order, a commit after the messages
	// of its epoch. An unknown group is ErrNotFound. The epoch is checked
	// first, then f.Dedup: a message delivered already (and alive) is
	// ErrDuplicate, and nothing is written. A reinitialized group
	// (EpochCommit.ReInit) is ErrReInitialized, whatever the epoch.
	Deliver(ctx context.Context, groupID []byte, epoch uint64, f Fanout) (Delivered, error)

	// DedupRecorded reports whether key, the Fanout.Dedup of a message
	// that a Deliver wrote, is recorded and alive (before its
	// DedupExpires), so that a copy of the message that arrives once the
	// group left the message's epoch, and that Deliver would refuse for
	// its epoch, can be told delivered already. Fanout.Dedup shares its
	// records with Delivery.Dedup and the seen signatures, so it reports
	// those too. It reads and writes nothing else; key must be 32 bytes
	// (ErrInvalid).
	DedupRecorded(ctx context.Context, key []byte) (bool, error)

	// WelcomeTree returns the ratchet tree of epoch, as it was when the
	// epoch began, of a group hosted here, for a member that a Welcome of
	// that epoch added (PROFILE §5: welcome_info). It is ErrNotFound when
	// the group is unknown, when no commit with Welcome set started that
	// epoch, and once the tree's retention ended (WelcomeTreeEpochs,
	// WelcomeTreeLifetime). Trailing blank nodes are removed.
	WelcomeTree(ctx context.Context, groupID []byte, epoch uint64) (mls.RatchetTree, error)

	// JoinerKey returns the leaf signature key of the KeyPackage with
	// reference ref that the commit starting epoch added (an
	// EpochCommit.Joiners entry), the key of a joiner's
	// key_package_signature (PROFILE §5: welcome_info). It is kept exactly
	// as long as that epoch's WelcomeTree, and is ErrNotFound whenever
	// WelcomeTree is, and for a ref that commit did not add.
	JoinerKey(ctx context.Context, groupID []byte, epoch uint64, ref []byte) (signatureKey []byte, err error)

	// AddProposal keeps p, a by-reference proposal the DS verified, as
	// pending in the group's current epoch, which must be epoch, else
	// ErrEpochConflict; an unknown group is ErrNotFound. A proposal whose
	// Ref is already pending is left as it was and AddProposal returns
	// nil. When MaxPendingProposals are pending it fails with an error
	// wrapping ErrConflict. Pending proposals are dropped when the epoch
	// advances. A reinitialized group (EpochCommit.ReInit) is
	// ErrReInitialized, whatever the epoch.
	AddProposal(ctx context.Context, groupID []byte, epoch uint64, p PendingProposal) error

	// PendingProposals returns the proposals pending in epoch, in the
	// order they were added. It is ErrNotFound for an unknown group and
	// ErrEpochConflict when the group is at another epoch.
	PendingProposals(ctx context.Context, groupID []byte, epoch uint64) ([]PendingProposal, error)

	// DeleteGroup forgets a group: its state, proposals, Welcome trees and
	// joiners when it is hosted here, and its hub record; its local
	// members stop being members (they keep reading the posts the group's
	// log holds up to then, until these expire). Its attachment records,
	// pending or committed, go in the same write, as ExpireAttachments
	// removes expired ones (Attachments): their objects without other
	// references are listed by UnreferencedObjects, for the sweeper to
	// delete the bytes, and they stop counting against their uploaders'
	// quotas; copies in other groups stay. An unknown group is
	// ErrNotFound. The id of a group hosted here is never used again
	// (CreateGroup and RecordGroupHub refuse it); that of a group hosted
	// elsewhere is free again.
	DeleteGroup(ctx context.Context, groupID []byte) error

	// RecordGroupHub records that hub hosts a group this provider learnt of
	// (the first Welcome for it in a deliver_message, PROFILE §9). It is
	// nil when the same hub is already recorded, and ErrGroupExists when
	// the id is hosted here, was the id of a group deleted here, or is
	// recorded with another hub.
	RecordGroupHub(ctx context.Context, groupID []byte, hub string) error

	// GroupHub returns the hub of a group, hosted here (the hub given to
	// CreateGroup) or elsewhere (RecordGroupHub), or ErrNotFound.
	GroupHub(ctx context.Context, groupID []byte) (string, error)

	// ForgetGroupHub deletes the hub record of a group hosted elsewhere
	// (RecordGroupHub) and returns the hub it named, so that the next
	// Welcome for the group records its hub again: the operator's remedy
	// for a hub that a provider other than the real one recorded by
	// sending the first Welcome (docs/protocol.md §4.2). It deletes
	// nothing else: queued messages and group memberships stay. A group
	// hosted here is left as it is and is ErrGroupExists; an id with no
	// hub recorded is ErrNotFound.
	ForgetGroupHub(ctx context.Context, groupID []byte) (string, error)
}

// HubForgetWatcher is implemented by the stores that the gateways of
// several processes share (pgstore), so that a gateway can drop from its
// cache of hubs (ds.HubCache) a hub record that another process deleted
// with ForgetGroupHub. WatchHubForgets calls f with the group id of each
// such record, soon after the deletion commits, and with nil when some
// may have been missed (the store did not hear the others for a while):
// f should then forget every hub it holds. The calls of this Store's own
// ForgetGroupHub are not reported. f runs on the store's goroutine, one
// call at a time, and must not block nor call stop or WatchHubForgets
// (the store holds its watchers' lock while f runs); stop ends the
// watch, waiting for a call of f that is running, after which f
// is not called.
type HubForgetWatcher interface {
	WatchHubForgets(f func(groupID []byte)) (stop func())
}

// GroupCreation is a new group, as CreateGroup stores it.
type GroupCreation struct {
	// Hub is the provider that hosts the group, 1..MaxDomainSize bytes.
	Hub string
	// State is the group's state at its first epoch.
	State *mls.GroupState
	// GroupInfo is the encoded GroupInfo of that epoch (nil for none), at
	// most MaxGroupInfoSize bytes.
	GroupInfo []byte
	// Members are the clients of this provider among the group's members
	// (its creator, when local): at most MaxGroupMembershipChanges
	// distinct client URIs. They are written with the group, in the same
	// atomic write, so no post to the group can miss them.
	Members []string
}

// EpochCommit is a commit the DS accepted, as CommitEpoch stores it.
type EpochCommit struct {
	// Base is the state the commit was applied to, as loaded from the
	// store.
	Base *mls.GroupState
	// Next is the state the commit produced (mls.GroupState.ApplyCommit
	// on Base).
	Next *mls.GroupState
	// Welcome is set when the commit added members who join with a
	// Welcome: Next's ratchet tree is then kept for them.
	Welcome bool
	// Joiners are the KeyPackages the commit's Welcome added, kept with
	// the Welcome tree for their key_package_signature (JoinerKey). At
	// most MaxJoiners, each Ref distinct, and none unless Welcome is set
	// (ErrInvalid otherwise).
	Joiners []Joiner
	// GroupInfo is the encoded GroupInfo of Next's epoch that the
	// committer published (nil for none), at most MaxGroupInfoSize
	// bytes. The DS serves the tree from the state, so a GroupInfo
	// without the ratchet_tree extension keeps a commit's writes small.
	GroupInfo []byte
	// Fanout delivers the commit (and its Welcomes) to the members, in
	// the same atomic write as the new epoch.
	Fanout Fanout
	// Pending is the number of proposals pending in Base's epoch
	// (PendingProposals) that the commit was checked against. Proposals
	// are only added within an epoch, so an equal number is the same
	// proposals; CommitEpoch refuses another (ErrProposalsChanged).
	Pending int
	// Delete, set for a delete_group commit, deletes the group as
	// DeleteGroup does, in the same atomic write, after the new epoch and
	// its Fanout: a commit that removed every other member is never kept
	// without the deletion it was for, nor the deletion without it.
	Delete bool
	// ReInit, set for a commit that covers a ReInit proposal
	// (re_initialize_group) to that proposal, marks the group
	// reinitialized in the same atomic write as the new epoch: the group
	// takes nothing more (ErrReInitialized). The proposal is kept with
	// the mark, for the group it names to check the reinit PSK of its
	// first commit (ReInitOf). It excludes Delete and Welcome
	// (ErrInvalid): a ReInit is the only proposal of its commit (RFC 9420
	// §12.2). Its encoding is at most MaxReInitSize bytes (ErrInvalid).
	ReInit *mls.ReInit
}

// ReInitRecord is what the store keeps of the commit that reinitialized a
// group (EpochCommit.ReInit), as ReInitOf returns it.
type ReInitRecord struct {
	// ReInit is the ReInit proposal the commit covered: the id, version,
	// cipher suite and GroupContext extensions of the group that
	// continues it (RFC 9420 §11.2).
	ReInit *mls.ReInit
	// Epoch is the epoch the commit started, the group's last: the
	// psk_epoch of its reinit PSK (RFC 9420 §11.2).
	Epoch uint64
}

// Joiner is a KeyPackage that a commit added by value and its Welcome
// brought in.
type Joiner struct {
	// Ref is its KeyPackageRef (RFC 9420 §5.2), 1..MaxIDSize bytes.
	Ref []byte
	// SignatureKey is the signature_key of its leaf node,
	// 1..MaxPublicKeySize bytes.
	SignatureKey []byte
}

// PendingProposal is a by-reference proposal kept until a commit covers it
// or its epoch ends.
type PendingProposal struct {
	// Ref is its ProposalRef (RFC 9420 §5.2), 1..MaxIDSize bytes.
	Ref []byte
	// Message is the encoded MLSMessage as the DS received it,
	// 1..MaxProposalSize bytes.
	Message []byte
	// Fanout, given to AddProposal, delivers the proposal to the members
	// who must cover it, in the same atomic write as the proposal; an
	// AddProposal of a proposal already pending delivers nothing. It is
	// not kept: PendingProposals leaves it empty.
	Fanout Fanout
}
