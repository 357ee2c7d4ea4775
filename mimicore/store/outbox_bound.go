package store

import (
	"context"
	"fmt"
)

// Default bounds of one destination's outbox backlog (OutboxLimits).
const (
	// DefaultOutboxMaxMessages is the most messages the outbox holds for
	// one destination when no limit is set.
	DefaultOutboxMaxMessages = 100_000
	// DefaultOutboxMaxBytes is the most bytes the outbox holds for one
	// destination when no limit is set.
	DefaultOutboxMaxBytes = 1 << 30
)

// ErrOutboxFull reports an OutboxAdd refused because a destination's
// backlog would pass its bound (OutboxLimits): nothing was written, and the
// caller may try again later. It wraps ErrConflict.
var ErrOutboxFull = fmt.Errorf("destination's outbox backlog is full: %w", ErrConflict)

// OutboxLimits bound the backlog of each destination of the outbox: the
// messages waiting for it and their bytes (OutboxMessage.Size). Zero or
// negative fields mean the defaults (DefaultOutboxMaxMessages,
// DefaultOutboxMaxBytes).
//
// The bound is checked when messages are written, per destination, at a
// cost that does not depend on the backlog (the store keeps the count and
// the bytes of each destination's backlog beside it, changed in the writes
// that change the backlog):
//
//   - a Fanout's messages for a destination whose backlog would pass the
//     bound are not written, all of that Fanout's messages for it
//     together; the state change and the other destinations' messages
//     are written all the same, so a dead peer never holds up a group.
//     Their Delivered.Outbox ids are 0, and they are counted in the
//     destination's Dropped.BacklogFull;
//   - an OutboxWrite that would pass the bound of any of its
//     destinations is refused whole with ErrOutboxFull (its sender is a
//     peer, which retries).
type OutboxLimits struct {
	MaxMessages int
	MaxBytes    int64
}

// Size is what m counts against its destination's MaxBytes: the bytes of
// its Message, GroupID and Recipients.
func (m OutboxMessage) Size() int64 {
	n := len(m.Message) + len(m.GroupID)
	for _, r := range m.Recipients {
		n += len(r)
	}
	return int64(n)
}

// WithDefaults returns l with its zero fields set to the defaults.
func (l OutboxLimits) WithDefaults() OutboxLimits {
	if l.MaxMessages <= 0 {
		l.MaxMessages = DefaultOutboxMaxMessages
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultOutboxMaxBytes
	}
	return l
}

// Dropped counts the messages for one destination that the store dropped
// before they were delivered, by reason. The counts are durable: they
// survive a restart and only ever grow.
type Dropped struct {
	// BacklogFull counts the messages not written because the
	// destination's backlog was at its bound (OutboxLimits).
	BacklogFull uint64
	// AdminReset counts the messages OutboxReset removed.
	AdminReset uint64
}

// OutboxBound is the outbox's bound and the operator's reset: a store that
// keeps, per destination, the number and bytes of the messages waiting
// and the counts of those it dropped.
type OutboxBound interface {
	OutboxBacklog

	// SetOutboxLimits sets the bounds that writes check from now on (a
	// configuration reload); messages already in the outbox stay.
	SetOutboxLimits(l OutboxLimits)

	// OutboxDestinationBacklog returns destination's backlog and drop
	// counts, at a cost that does not depend on the backlog; a
	// destination the outbox never held is all zero.
	OutboxDestinationBacklog(ctx context.Context, destination string) (Backlog, error)

	// OutboxReset removes every message waiting for destination that was
	// written before the call, counts them in its Dropped.AdminReset and
	// reports how many it removed. It works in writes of bounded size, so
	// other writers are not held up; on error, what was removed stays
	// removed and counted.
	OutboxReset(ctx context.Context, destination string) (int, error)
}
