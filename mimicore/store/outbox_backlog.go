package store

import (
	"context"
	"time"
)

// Backlog is what waits in the outbox for one destination.
type Backlog struct {
	// Destination is the provider domain.
	Destination string
	// Messages is how many messages wait for it.
	Messages int
	// Bytes is the size of the messages waiting (OutboxMessage.Size),
	// what OutboxLimits.MaxBytes bounds.
	Bytes int64
	// Oldest is when the oldest of them was written; zero for none.
	Oldest time.Time
	// Dropped counts the messages the store dropped for it (OutboxBound);
	// zero for a store that does not bound the outbox.
	Dropped Dropped
}

// OutboxBacklog reports the outbox's backlog per destination, for the
// operator (metrics, the admin view). It is a read; it does not go
// through the write path.
type OutboxBacklog interface {
	// OutboxBacklog lists every destination with messages waiting, or
	// with dropped messages counted, in byte order of the domain.
	OutboxBacklog(ctx context.Context) ([]Backlog, error)
}
