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
	// Oldest is when the oldest of them was written.
	Oldest time.Time
}

// OutboxBacklog reports the outbox's backlog per destination, for the
// operator (metrics, the admin view). It is a read; it does not go
// through the write path.
type OutboxBacklog interface {
	// OutboxBacklog lists every destination with messages waiting, in
	// byte order of the domain.
	OutboxBacklog(ctx context.Context) ([]Backlog, error)
}
