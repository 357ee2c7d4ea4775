package store

import (
	"context"
	"fmt"
	"time"
)

// Limits and defaults of Queues. A value over a Max* bound is ErrInvalid.
const (
	// MaxQueuedMessageSize bounds one queued message: the largest
	// MLSMessage a deliver_message or a local send can carry.
	MaxQueuedMessageSize = 1 << 20
	// MaxAppendRecipients bounds the recipients of one Append; a larger
	// fan-out is split by the caller, each part one durable write.
	MaxAppendRecipients = 4096
	// DefaultQueueTTL is how long a queued message is kept, unacknowledged,
	// when an Append gives no expiry.
	DefaultQueueTTL = 30 * 24 * time.Hour
	// DefaultQueueMaxMessages and DefaultQueueMaxBytes are the limits of
	// one queue when an Append gives none (QueueLimits).
	DefaultQueueMaxMessages = 10000
	DefaultQueueMaxBytes    = 256 << 20
	// DefaultFetchMessages and DefaultFetchBytes bound a Fetch that gives
	// no bound; MaxFetchMessages is the most one Fetch returns.
	DefaultFetchMessages = 100
	DefaultFetchBytes    = 4 << 20
	MaxFetchMessages     = 1000
)

// ErrQueueFull reports a queue that would hold more than its limits
// (QueueLimits) with one more message. It wraps ErrConflict.
var ErrQueueFull = fmt.Errorf("queue is full: %w", ErrConflict)

// ErrDuplicate reports an Append of a message whose Delivery.Dedup an
// earlier Append recorded: the message was delivered already. It wraps
// ErrConflict.
var ErrDuplicate = fmt.Errorf("message delivered already: %w", ErrConflict)

// QueuedMessage is a message in a local client's queue.
type QueuedMessage struct {
	// Seq is its sequence number, from the store's one global sequence:
	// assigned by the write that stored it (an Append, or a Fanout's
	// GroupPost), from 1, never reused. A client's messages have
	// strictly increasing numbers, with gaps: the numbers between went to
	// other clients' messages.
	Seq uint64
	// GroupID is the MLS group it belongs to, 0..MaxIDSize bytes (empty
	// for a message of no group).
	GroupID []byte
	// Sender names who sent it (a provider domain or a client URI),
	// 0..MaxClientURISize bytes.
	Sender string
	// Arrived is when Append stored it (the backend's clock).
	Arrived time.Time
	// Expires is when it stops being delivered, acknowledged or not.
	Expires time.Time
	// Message is the message itself, opaque to the store,
	// 1..MaxQueuedMessageSize bytes.
	Message []byte
}

// QueueLimits bound one queue: an Append that would leave it holding more
// than MaxMessages messages or MaxBytes bytes of messages is refused for
// that queue (ErrQueueFull). A zero field means its default
// (DefaultQueueMaxMessages, DefaultQueueMaxBytes). Expired messages do
// not count, swept or not.
type QueueLimits struct {
	MaxMessages int
	MaxBytes    int64
}

// Delivery is one message for the queues of many local clients.
type Delivery struct {
	// Recipients are the client URIs whose queues get the message,
	// 1..MaxAppendRecipients distinct URIs of 1..MaxClientURISize bytes.
	Recipients []string
	// GroupID, Sender and Message are as in QueuedMessage.
	GroupID []byte
	Sender  string
	Message []byte
	// Expires ends the message's life in every queue; zero means the
	// arrival time plus DefaultQueueTTL.
	Expires time.Time
	// Limits bound each recipient's queue.
	Limits QueueLimits
	// Dedup, when not empty, names the message for duplicate suppression:
	// a 32-byte digest (SHA-256 of a domain-separated encoding, so that it
	// cannot equal a SeenSignatures digest, with which it shares its
	// records). An Append whose Dedup is recorded and alive writes nothing
	// and fails with ErrDuplicate; otherwise the Append records it, in
	// the same write, until DedupExpires (required with Dedup). This is
	// how a message that a peer delivers again under a new request id
	// after the replay window reaches each queue once.
	Dedup        []byte
	DedupExpires time.Time
	// Replay, when not nil, is the replay log entry of the provider
	// request that carries this delivery, recorded in the same write as
	// RecordReplay would record it: the queue entries and the request's
	// answer become durable together. An alive entry of its key fails
	// the Append with ErrConflict and nothing is written; a Dedup hit
	// (ErrDuplicate) writes nothing either, Replay included.
	Replay *ReplayRecord
}

// Appended is the outcome of a Delivery for one recipient.
type Appended struct {
	// Seq is the message's sequence number (the same for every
	// recipient of one Append), 0 when Err is set.
	Seq uint64
	// Err is nil, or wraps ErrQueueFull: this recipient's queue refused
	// the message and the others still got it.
	Err error
}

// FetchLimit bounds a Fetch. A zero field means its default
// (DefaultFetchMessages, DefaultFetchBytes); Messages over
// MaxFetchMessages is ErrInvalid.
type FetchLimit struct {
	Messages int
	Bytes    int
}

// Queues holds, per local client, the ordered stream of messages waiting
// for it (PROFILE §9, local client API): what the DS accepted for the
// client's groups here and what peers delivered (issue 10's fan-out and
// deliver_message). A client's stream merges two sources:
//
//   - its personal queue: what an Append (or a Fanout's Local) names it a
//     recipient of, such as a Welcome or a deliver_message from a peer,
//     written per recipient and bounded by QueueLimits;
//   - the logs of the groups hosted here that it is a local member of
//     (GroupPost): a message to a group's N local members is written once,
//     and the client sees the posts of the range of the global sequence in
//     which it was a member, but not those whose GroupPost.Except it is.
//     A group's log is bounded by expiry alone (GroupPost.Expires), not by
//     QueueLimits.
//
// Both take their sequence numbers from one global sequence, assigned
// inside the write that stores the message (one number per Append, shared
// by its recipients, and one per GroupPost), strictly increasing, also
// under concurrent writes; a client's stream is ordered by them. They have
// gaps: a client sees only some of the numbers. A client reads with Fetch
// after its cursor (the last sequence number it processed) and
// acknowledges with Ack, which deletes the personal messages it covers and
// raises the client's acknowledged cursor, below which Fetch returns
// nothing of the group logs either. Messages that expire are skipped by
// Fetch at once and removed by DeleteExpired (in bounded batches).
//
// Append is one operation of the backend's write path as package store
// describes, whatever its number of recipients: a fan-out to N local
// clients is one transaction (one fsync under SQLite's group commit), and
// its message bytes are stored once, shared by the N queue entries. It
// takes one number from the global sequence (one row updated); per
// recipient it is one conditional upsert of the queue's head (its
// counters, within limits) and one INSERT of the entry, and a backend runs
// them for all recipients at once (the recipients as one array parameter:
// json_each in SQLite, unnest in PostgreSQL); PostgreSQL's row lock
// on the sequence row serialises the writes that take numbers, so that
// numbers commit in order. A GroupPost is the sequence row, one log row
// and a membership row per Join or Leave. Ack is one DELETE ... RETURNING,
// the head's counters and the cursor, as one operation. Fetch does not go
// through the write path.
//
// Waiting: WatchQueue tells a waiter that its stream got a message, without
// polling the database (a long poll or a stream of the local API). The
// Notifier is process-local; a backend that several processes share
// carries the wake-ups across them (pgstore: LISTEN/NOTIFY on one
// channel, NOTIFY sent in the write's transaction so that it is delivered
// at the commit), so a write through another process's store on the same
// database wakes this process's waiters too. After a GroupPost commits,
// the backend wakes the waiting clients that see it: the members it
// removed, and the group's current local members that joined before it,
// read from the index of current memberships, one row per local member,
// whoever waits. The cost of a post's wake-up follows the group's local
// members, never the number of waiters in the process, and a post costs
// no read when nobody waits at all. The SQLite backend holds its file for one Store
// (ErrInUse), so every write to it passes through its Store.
type Queues interface {
	// Append adds d's message to the queue of each of d.Recipients in one
	// durable write, under one new sequence number, and answers, in the
	// order of d.Recipients, that number for each queue that took it, or
	// ErrQueueFull for a queue that refused it (the others still got it).
	// The error is for the whole call: an argument (ErrInvalid), a
	// message delivered already (ErrDuplicate, see Delivery.Dedup) or the
	// backend.
	Append(ctx context.Context, d Delivery) ([]Appended, error)

	// Fetch returns, in sequence order, the alive messages of client's
	// stream (its personal queue and the group log posts it sees) whose
	// sequence number is above after and above client's acknowledged
	// cursor (Ack), at most limit.Messages of them and no more than
	// limit.Bytes bytes of messages, except that a first message larger
	// than limit.Bytes is returned alone, so a client always makes
	// progress. An empty stream, or a client never written to (with after
	// 0), is an empty list. An after beyond the global sequence (the last
	// number any write took) is ErrInvalid: the client's cursor does not
	// belong to this store, and waiting on it would skip messages.
	Fetch(ctx context.Context, client string, after uint64, limit FetchLimit) ([]QueuedMessage, error)

	// Ack deletes the personal messages of client's queue up to and
	// including upTo, raises client's acknowledged cursor to upTo (Fetch
	// returns nothing at or below it, group log posts included), and
	// reports how many alive messages of client's stream it
	// acknowledged. Acknowledging again, or below what was acknowledged,
	// acknowledges nothing and succeeds. An upTo beyond the global
	// sequence is ErrInvalid, not clamped: the client would take its
	// cursor past messages not yet written and skip them. For a client
	// without a queue or a group membership (one never written to) it
	// writes nothing: nothing of its stream is at or below upTo, and
	// every later message is above it.
	Ack(ctx context.Context, client string, upTo uint64) (int, error)

	// WatchQueue returns a channel that is closed once a write through
	// this store (or, with a backend shared across processes such as
	// pgstore, through any store on its database) commits a message with
	// a sequence number above after to client's stream, an Append or a
	// post to a group client is a member of (or the store closes), and a
	// stop function that
	// releases the watch; call it when done, woken or not (it is
	// idempotent). Watch first, then Fetch, then wait: a message
	// appended between the two is then either fetched or wakes the
	// channel. WatchQueue does not touch the database, starts no
	// goroutine and never blocks.
	WatchQueue(client string, after uint64) (ready <-chan struct{}, stop func())
}
