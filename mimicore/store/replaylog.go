package store

import (
	"context"
	"time"
)

// ReplayLog records completed provider requests with ONE durable write each:
// the answer. It is the fast path beside ReplayCache, which writes twice
// (the reservation, then the answer) so that a request pending when the
// process dies is never run again.
//
// The one-write path is correct for requests whose processing has no
// durable effect outside the transaction that records the answer: the
// effects of such a request become durable together with its answer, or
// not at all. So:
//
//   - a crash before RecordReplay committed leaves no trace of the request,
//     neither its answer nor its effects, and a retry of the same bytes is
//     processed afresh: nothing is processed twice;
//   - a crash after RecordReplay committed keeps the answer, and a retry
//     gets it (FindReplay): an acknowledged answer is never lost, because
//     the answer is sent only after the commit.
//
// Concurrent copies of one request inside a process are told apart by the
// caller's in-memory claim (provider.Inbound does it); across processes by
// the conditional write: of two RecordReplay calls for one key, one stores
// its answer and the other gets ErrConflict with the stored entry, and its
// effects, in the same transaction, roll back with it.
//
// Processing with effects that cannot join the answer's transaction (a call
// to a legacy backend that is not idempotent) uses ReplayCache instead.
//
// Entries share the table and the keys of ReplayCache: a ReplayCache
// reservation still pending is reported as such by FindReplay.
type ReplayLog interface {
	// FindReplay returns the alive entry of (sender, requestID), or
	// ErrNotFound. A pending entry (a ReplayCache reservation) has Pending
	// set and no answer.
	FindReplay(ctx context.Context, sender string, requestID []byte) (ReplayEntry, error)

	// RecordReplay stores answer as the completed entry of (sender,
	// requestID) for the request whose signed bytes hash to digest, alive
	// until expires, in one durable write. An alive entry of the key that
	// already exists is left as it is, and RecordReplay returns it with an
	// error wrapping ErrConflict; an expired one is replaced. Argument
	// limits are those of ReplayCache.Complete (ErrInvalid).
	RecordReplay(ctx context.Context, sender string, requestID []byte, digest [32]byte, answer Answer, expires time.Time) (ReplayEntry, error)
}

// ReplayEntry is an alive entry of the replay log.
type ReplayEntry struct {
	// Digest is the SHA-256 of the signed bytes of the request recorded.
	Digest [32]byte
	// Pending is set for a ReplayCache reservation not yet completed.
	Pending bool
	// Answer is the recorded answer of a completed entry.
	Answer Answer
}

// ReplayRecord is a replay log entry written by another store write, in
// the same durable write as that write's effects (Delivery.Replay): for a
// request whose whole effect is that write, one write instead of two, with
// RecordReplay's guarantees (an acknowledged answer and the effects it
// reports are durable together, or neither is). Fields are as
// RecordReplay's arguments, with its limits.
type ReplayRecord struct {
	Sender    string
	RequestID []byte
	Digest    [32]byte
	Answer    Answer
	Expires   time.Time
}
