package store

import (
	"context"
	"fmt"
	"time"
)

// ReplayCache remembers provider-signed requests (docs/protocol.md §4, step
// 8) so that a byte-identical retry gets the first answer and a reused
// request_id with other bytes is refused.
//
// An entry is keyed on (sender, requestID), where sender is the sender's
// provider FQDN (compared byte for byte, so the caller passes it in the
// canonical lowercase form of docs/protocol.md §1), and holds the SHA-256 digest of the request's signed bytes.
// It is pending from Reserve until Complete stores the answer, or until
// Release drops it. The caller writes an entry only after the request's
// signature verified, and passes an expiry at least 11 minutes ahead.
//
// The life of a request:
//
//	r, err := c.Reserve(ctx, sender, id, digest, now.Add(11*time.Minute))
//	switch r.Status {
//	case ReplayNew:        // process, then Complete (or Release)
//	case ReplayDuplicate:  // send r.Answer again
//	case ReplayInProgress: // in_progress: the first copy is still running
//	case ReplayConflict:   // replay: same id, other bytes
//	}
//
// A process that dies while a request is pending leaves the entry pending
// until it expires, so retries are told "in progress" and the request is
// never run twice: its side effects may have been committed before the
// crash. A sender that still wants the request re-signs it under a new
// request_id, as docs/protocol.md §4 says.
type ReplayCache interface {
	// Reserve claims (sender, requestID) for a request whose signed bytes
	// hash to digest:
	//   - no alive entry: it records a pending entry that expires at
	//     expires and answers ReplayNew; an expired entry is replaced;
	//   - an alive entry with the same digest: ReplayDuplicate with the
	//     stored answer once the entry completed, ReplayInProgress while
	//     it is pending;
	//   - an alive entry with another digest: ReplayConflict.
	// The check and the write are atomic: of concurrent calls for the same
	// key, exactly one answers ReplayNew. sender must be 1..MaxDomainSize
	// bytes and requestID 1..MaxIDSize bytes.
	Reserve(ctx context.Context, sender string, requestID []byte, digest [32]byte, expires time.Time) (Reservation, error)

	// Complete stores answer as the result of the pending entry (sender,
	// requestID, digest), which keeps its expiry. Later Reserve calls with
	// the same digest answer ReplayDuplicate with it. It fails with
	// ErrNotFound when no alive entry with that digest exists, with
	// ErrConflict when that entry is already complete, and with ErrInvalid
	// when the body exceeds MaxAnswerSize; on error the entry is left as it
	// was.
	//
	// Complete every request whose answer must be repeated on a retry:
	// success, and refusals that a retry would meet again. Release the
	// others.
	Complete(ctx context.Context, sender string, requestID []byte, digest [32]byte, answer Answer) error

	// Release drops the pending entry (sender, requestID, digest), so that
	// a retry of the same bytes is processed afresh. Use it when processing
	// failed before it changed any state and the failure is transient
	// (store or backend unavailable), so the answer must not be cached. It fails with ErrNotFound when no alive entry with that
	// digest exists and with ErrConflict when the entry is complete (a
	// completed answer is never dropped).
	Release(ctx context.Context, sender string, requestID []byte, digest [32]byte) error
}

// ReplayStatus is the outcome of ReplayCache.Reserve.
type ReplayStatus uint8

// Outcomes of Reserve. The zero value is not one of them.
const (
	// ReplayNew: the caller holds the reservation and must process the
	// request, then Complete or Release it.
	ReplayNew ReplayStatus = iota + 1
	// ReplayDuplicate: a byte-identical request completed; its answer is in
	// Reservation.Answer.
	ReplayDuplicate
	// ReplayInProgress: a byte-identical request is still being processed.
	ReplayInProgress
	// ReplayConflict: the request id was used for other bytes.
	ReplayConflict
)

// String returns the outcome's name.
func (s ReplayStatus) String() string {
	switch s {
	case ReplayNew:
		return "new"
	case ReplayDuplicate:
		return "duplicate"
	case ReplayInProgress:
		return "in_progress"
	case ReplayConflict:
		return "conflict"
	}
	return fmt.Sprintf("ReplayStatus(%d)", uint8(s))
}

// Reservation is the answer of ReplayCache.Reserve.
type Reservation struct {
	Status ReplayStatus
	// Answer is the stored answer when Status is ReplayDuplicate, else
	// the zero Answer.
	Answer Answer
}

// Answer is the answer cached for a completed provider request: the encoded
// DSResponse, which names its own outcome (a success type, or an error with
// its DSError code), so the bytes are all there is to repeat. How an answer
// becomes an HTTP response is the HTTP layer's business, not the store's.
type Answer struct {
	// Body is the encoded DSResponse, at most MaxAnswerSize bytes. A nil
	// and an empty body are stored alike and read back as empty.
	Body []byte
}

// SeenSignatures is the replay set of client-signed DS requests
// (docs/protocol.md §5): the signatures of attachment uploads, deletes and
// copies are remembered for 11 minutes, longer than the 300 s timestamp
// window on either side, so a captured request cannot be replayed.
type SeenSignatures interface {
	// SeenSignature records digest (SHA-256 of the signature) until
	// expires and reports firstUse = true, or reports firstUse = false
	// when digest is already recorded and alive. The check and the write
	// are atomic: of concurrent calls with the same digest, at most one
	// reports first use. A replay never extends the stored expiry.
	SeenSignature(ctx context.Context, digest [32]byte, expires time.Time) (firstUse bool, err error)
	// SignatureAnswer returns the answer recorded with digest by the
	// write that completed its request (a SignatureAnswer passed to
	// CopyAttachment or CommitAttachment), while digest is alive in the
	// set. A digest absent, expired or without an answer (its request
	// still in progress, or failed) is ErrNotFound.
	SignatureAnswer(ctx context.Context, digest [32]byte) ([]byte, error)
}

// SignatureAnswer is the answer of a client-signed request that succeeded,
// recorded with its digest in the replay set by the same transaction as
// the success itself, so that a byte-identical retry gets it
// (docs/protocol.md §5.1): a crash cannot leave the one without the
// other. The answer expires with the digest's record; a digest not alive
// in the set (its request outlasted the replay window) records nothing.
// A zero SignatureAnswer (nil Body) records nothing.
type SignatureAnswer struct {
	// Digest is the request's key in the replay set.
	Digest [32]byte
	// Body is the answer, opaque to the store, at most MaxAnswerSize
	// bytes.
	Body []byte
}

// SpentNonces prevents Privacy Pass double spending (RFC 9577 §2.2.2). It
// has the method set of privacypass.SpentStore and keeps its contract.
type SpentNonces interface {
	// MarkSpent records key until expires and reports firstUse = true, or
	// reports firstUse = false when key is already recorded and alive. The
	// check and the write are atomic: of concurrent calls with the same
	// key, at most one reports first use, and first use is reported only
	// once the record is durable. A replay never extends the stored
	// expiry. key must be 1..MaxIDSize bytes.
	MarkSpent(ctx context.Context, key []byte, expires time.Time) (firstUse bool, err error)
}
