package store

import (
	"context"
	"time"
)

// Bounds of an OutboxRetry.
const (
	// MaxOutboxRetryGroups bounds the group backoffs an OutboxRetry
	// holds: a sender keeps those of the groups that wait longest.
	MaxOutboxRetryGroups = 1024
	// MaxOutboxRetryError bounds OutboxRetry.LastError, in bytes.
	MaxOutboxRetryError = 1024
)

// OutboxBackoff is one backoff of the outbox's sender: the base of its
// last wait (doubling from the sender's minimum to its cap after each
// failure) and the time of the next attempt.
type OutboxBackoff struct {
	Level time.Duration
	Next  time.Time
}

// OutboxGroupBackoff is the backoff of one group of a destination, whose
// head failed on its own.
type OutboxGroupBackoff struct {
	GroupID []byte
	OutboxBackoff
}

// OutboxRetry is what the outbox's sender keeps of a destination that is
// failing, so that a restarted gateway resumes its backoffs where they
// were instead of trying every failing destination at once, from the
// minimum backoff (docs/protocol.md §9, "Sending the outbox").
type OutboxRetry struct {
	// Destination is the provider domain, or BackendDestination.
	Destination string
	// Failures counts the attempts that failed since the last success.
	Failures int
	// LastError describes the last failure, at most MaxOutboxRetryError
	// bytes of UTF-8 without NUL.
	LastError string
	// LastAttempt is the time of the last failed attempt.
	LastAttempt time.Time
	// Backoff is the destination's own backoff (a zero Level when the
	// destination does not back off as a whole).
	Backoff OutboxBackoff
	// RateLimited is set when Backoff is a 429's: the destination limits
	// this provider and was up all along, so a request from it does not
	// end the backoff (docs/protocol.md §5.4.2). It requires a Backoff of
	// a positive Level.
	RateLimited bool
	// Groups are the backoffs of its groups that wait, at most
	// MaxOutboxRetryGroups, each group once.
	Groups []OutboxGroupBackoff
}

// OutboxRetries keeps the sender's retry state per destination across
// restarts: one small write when a destination's backoffs change after a
// failed attempt, one when they end.
type OutboxRetries interface {
	// SetOutboxRetry replaces r.Destination's retry state with r. A
	// destination of 1..MaxDomainSize bytes, Failures and levels not
	// negative, RateLimited only with a destination backoff, LastError
	// (UTF-8 without NUL) and Groups within their bounds and group ids of
	// 1..MaxIDSize bytes, each once, else ErrInvalid.
	SetOutboxRetry(ctx context.Context, r OutboxRetry) error
	// ClearOutboxRetry removes destination's retry state; none is not an
	// error.
	ClearOutboxRetry(ctx context.Context, destination string) error
	// OutboxRetries returns the retry state of every destination that
	// has one, in byte order of the destination; times are kept to the
	// millisecond.
	OutboxRetries(ctx context.Context) ([]OutboxRetry, error)
}
