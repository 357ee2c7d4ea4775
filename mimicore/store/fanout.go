package store

import (
	"context"
	"errors"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// Limits of a Fanout and of the outbox.
const (
	// MaxFanoutMessages bounds the messages of one Fanout: a commit's
	// handshake, its Welcomes (moh.MaxWelcomePackages) and their remote
	// copies, each split by MaxAppendRecipients or MaxOutboxRecipients.
	MaxFanoutMessages = 1024
	// MaxOutboxRecipients bounds the client ids of one outbox message:
	// the client_ids<V> of a deliver_message (QueueingServiceRequest)
	// carry 1..64 (docs/protocol.md §4).
	MaxOutboxRecipients = 64
	// MaxOutboxList is the most one OutboxPending returns.
	MaxOutboxList = 1000
	// MaxOutboxListBytes bounds the messages one OutboxPending returns
	// by their size: it stops after the message that brings their
	// Message bytes to this or more, so that a reader's memory is bounded
	// by bytes too (MaxOutboxList messages of MaxQueuedMessageSize would
	// be 1000 MiB).
	MaxOutboxListBytes = 16 << 20
	// MaxGroupMembershipChanges bounds GroupPost.Join, GroupPost.Leave
	// and GroupCreation.Members: a group has at most mls.MaxLeaves
	// members.
	MaxGroupMembershipChanges = mls.MaxLeaves
)

// Fanout is the delivery of a message the Delivery Service accepted, to
// every recipient, written in the same atomic write as the state change
// that accepted it (EpochCommit.Fanout, GroupStore.Deliver): the
// transactional outbox of PROFILE §9. A crash either keeps the accepted
// commit (or message) and its whole delivery, or neither, so no member
// misses an accepted epoch and none gets a message the DS did not accept.
type Fanout struct {
	// Group, when set, is the message for the local members of a group
	// hosted here: written once to the group's log, whatever the number
	// of members, before Local.
	Group *GroupPost
	// Local are appended to the queues of this provider's clients, as
	// Queues.Append does, in this order: a recipient of several gets them
	// with increasing sequence numbers. They are personal messages (a
	// Welcome, a message to one client); a message for a group's local
	// members is the Group post.
	Local []Delivery
	// Remote are queued for other providers' deliver_message, in this
	// order (Outbox).
	Remote []OutboxMessage
	// Dedup, when not empty, names the accepted message for duplicate
	// suppression, as Delivery.Dedup does (a 32-byte digest, sharing its
	// records with Delivery.Dedup and the seen signatures): a Deliver
	// whose Dedup is recorded and alive writes nothing and fails with
	// ErrDuplicate; otherwise it records it in the same write as the
	// delivery, until DedupExpires (required with Dedup), so that a crash
	// keeps both or neither and of two Delivers of one Dedup exactly one
	// delivers. Only Deliver takes it: CommitEpoch and AddProposal refuse
	// a Fanout with Dedup (ErrInvalid).
	Dedup        []byte
	DedupExpires time.Time
}

// GroupPost is a message for the local members of a group hosted here
// (Fanout.Group): it is written once, to the group's log, and each local
// member reads it there (Queues.Fetch) while the log holds it. The store
// keeps which local clients are members of which group, as ranges of the
// global sequence: CreateGroup starts them (GroupCreation.Members), and a
// post's Join and Leave change them. A post is O(1) rows plus a row per
// Join or Leave, however many members the group has.
type GroupPost struct {
	// GroupID is the group, hosted here, 1..MaxIDSize bytes; it must be
	// the group the Fanout's write is for.
	GroupID []byte
	// Sender and Message are as in QueuedMessage.
	Sender  string
	Message []byte
	// Except, when not empty, is the member who does not receive the
	// post: its sender.
	Except string
	// Join are local clients who become members with this post: they see
	// the group's log from the post after this one. Leave are local
	// members who stop being members with it: they see this post and
	// nothing after. A client in Join that is a member already, or in
	// Leave that is not one, is left as it is. Each is at most
	// MaxGroupMembershipChanges distinct client URIs, and no client is in
	// both.
	Join, Leave []string
	// Members, when not nil, are all the group's local members before
	// this post, for a group whose local members the store does not
	// know: one created before the store recorded them (schema version 7
	// of the SQLite backend). A post to such a group without Members
	// fails with ErrGroupMembersUnknown and writes nothing; with them,
	// they are recorded, see this post (but for Except) and become
	// members like those of CreateGroup. For a group whose members are
	// known, Members is ignored. At most MaxGroupMembershipChanges
	// distinct client URIs.
	Members []string
	// Expires ends the post's life in the log; zero means the arrival
	// time plus DefaultQueueTTL. The log of a group is bounded by expiry
	// alone: an expired post is skipped by Fetch at once and removed by
	// DeleteExpired.
	Expires time.Time
}

// ErrGroupMembersUnknown reports a GroupPost without Members to a group
// whose local members the store does not know (GroupPost.Members): the
// caller posts again with them.
var ErrGroupMembersUnknown = errors.New("the group's local members are not recorded")

// Delivered reports the outcome of a Fanout that was written.
type Delivered struct {
	// Group is the sequence number the Fanout's Group post got, 0 for
	// none.
	Group uint64
	// Local has, per Fanout.Local entry, the outcome of each recipient,
	// as Queues.Append answers it: a full queue refused the message (the
	// others, and the state change, were still written).
	Local [][]Appended
	// Outbox has the id each Fanout.Remote message got in the outbox, or
	// 0 for one dropped because its destination's backlog was full
	// (OutboxLimits).
	Outbox []uint64
}

// BackendDestination is the outbox destination of the legacy backend
// (docs/protocol.md §11): what the provider's own clients get when the
// gateway delivers to its backend instead of to local queues. It is not a
// DNS name (it starts with '@'), so it never equals a provider domain.
const BackendDestination = "@backend"

// OutboxMessage is a message waiting to be delivered to clients of another
// provider: one deliver_message (QueueingServiceRequest) to Destination; or,
// with Destination BackendDestination, to this provider's own clients
// through its legacy backend.
type OutboxMessage struct {
	// Sender is the provider domain that sends it, the group's hub,
	// 1..MaxDomainSize bytes.
	Sender string
	// Destination is the provider domain it goes to, 1..MaxDomainSize
	// bytes, or BackendDestination.
	Destination string
	// GroupID is the MLS group it belongs to, 1..MaxIDSize bytes.
	GroupID []byte
	// Recipients are the client URIs at Destination, 1..MaxOutboxRecipients
	// distinct URIs of 1..MaxClientURISize bytes.
	Recipients []string
	// Message is the MLSMessage, 1..MaxQueuedMessageSize bytes.
	Message []byte
}

// OutboxEntry is an OutboxMessage as the outbox keeps it.
type OutboxEntry struct {
	// ID numbers the outbox's messages in the order they were written,
	// from 1, never reused: the order of delivery per (Destination,
	// GroupID).
	ID uint64
	// Enqueued is when it was written (the backend's clock).
	Enqueued time.Time
	OutboxMessage
}

// Outbox holds the messages accepted here for other providers' clients
// until they are delivered (PROFILE §9, fan-out): written only through a
// Fanout, in the transaction of the state change that accepted them, and
// read and cleared by the federation sender.
type Outbox interface {
	// OutboxPending returns, oldest first, at most limit
	// (1..MaxOutboxList) messages for destination whose ID is above
	// after, and fewer when their Message bytes reach
	// MaxOutboxListBytes (at least one message when any waits).
	OutboxPending(ctx context.Context, destination string, after uint64, limit int) ([]OutboxEntry, error)

	// OutboxDestinations lists the destinations that have messages in
	// the outbox, in byte order.
	OutboxDestinations(ctx context.Context) ([]string, error)

	// OutboxDelivered removes the messages with the given ids from
	// destination's outbox and reports how many it removed; ids that are
	// not (or no longer) there are skipped. It is one durable write.
	OutboxDelivered(ctx context.Context, destination string, ids []uint64) (int, error)
}

// OutboxWrite is messages a peer delivered that go on through the outbox
// (to the legacy backend), written as one receipt: the messages and the
// record of their delivery, as Delivery.Dedup records a message for the
// local queues.
type OutboxWrite struct {
	// Messages are written to the outbox in this order,
	// 1..MaxFanoutMessages, each as a Fanout's Remote message.
	Messages []OutboxMessage
	// Dedup and DedupExpires are as in Delivery: when Dedup is recorded
	// and alive, nothing is written and the write fails with
	// ErrDuplicate. Dedup shares its records with Delivery.Dedup, so a
	// message is taken once whichever target took it first.
	Dedup        []byte
	DedupExpires time.Time
	// Replay is as in Delivery: the answer of the request that carries
	// the messages, recorded in the same write (ErrConflict when its key
	// holds an alive entry; nothing is written then, nor on ErrDuplicate).
	Replay *ReplayRecord
}

// OutboxAdder writes to the outbox outside a group's write: the receipt
// of a deliver_message whose messages go on to the legacy backend.
type OutboxAdder interface {
	// OutboxAdd writes w in one durable write and answers the id each
	// message got, in order. An invalid w is ErrInvalid; a recorded
	// Dedup is ErrDuplicate, and nothing is written.
	OutboxAdd(ctx context.Context, w OutboxWrite) ([]uint64, error)
}
