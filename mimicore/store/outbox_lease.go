package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"
)

// OutboxLeases lets several gateways on one database drain one outbox
// without delivering a message twice: a destination's messages are read
// and removed only by the holder of its drain lease, a Leases lease named
// OutboxLeaseName(destination). The holder keeps it while it drains
// (renewing it with Leases.AcquireLease, or with the next OutboxClaim) and
// frees it with OutboxRelease when the destination's outbox is drained or
// its delivery failed; a holder that dies keeps it until it expires, and
// then another gateway takes it over and sends, from the head of the
// outbox, what the dead one had not removed. Since the holder removes what
// it delivered before it frees the lease, and the next holder reads from
// the head, each destination's messages are sent one holder at a time, in
// ID order per (destination, group); a message sent by a holder whose
// lease expired under it is sent once more by the next one, which the
// receiver's duplicate suppression turns into one delivery.
type OutboxLeases interface {
	Outbox
	Leases

	// OutboxClaim gives destination's drain lease to holder until
	// now+ttl, as AcquireLease does, and when it got it returns
	// destination's pending messages as OutboxPending(ctx, destination,
	// 0, limit) does. When another holder holds the lease and it has not
	// expired at now, it returns ok false, reads nothing and changes
	// nothing. holder is 1..MaxLeaseNameSize bytes, ttl positive and
	// limit 1..MaxOutboxList, else ErrInvalid.
	OutboxClaim(ctx context.Context, destination, holder string, now time.Time, ttl time.Duration, limit int) (entries []OutboxEntry, ok bool, err error)

	// OutboxRelease removes the messages with the given ids from
	// destination's outbox, as OutboxDelivered does, and frees
	// destination's drain lease if holder holds it, so that another
	// holder may take it at once. It reports how many messages it
	// removed.
	OutboxRelease(ctx context.Context, destination, holder string, ids []uint64) (int, error)
}

// outboxLeasePrefix starts the name of every drain lease.
const outboxLeasePrefix = "outbox:"

// OutboxLeaseName is the name of destination's drain lease
// (OutboxLeases): "outbox:" and the destination, or, for a destination
// too long for a lease name, "outbox#" and the hex SHA-256 of it.
func OutboxLeaseName(destination string) string {
	if len(outboxLeasePrefix)+len(destination) <= MaxLeaseNameSize {
		return outboxLeasePrefix + destination
	}
	sum := sha256.Sum256([]byte(destination))
	return "outbox#" + hex.EncodeToString(sum[:])
}

// OutboxClaimWith implements OutboxLeases.OutboxClaim for a store whose
// outbox and leases are one process's: an AcquireLease, then an
// OutboxPending when it was granted. The two are not one write, which is
// right for a store that one process opens (SQLite): nothing else removes
// its messages meanwhile.
func OutboxClaimWith(ctx context.Context, s interface {
	Outbox
	Leases
}, destination, holder string, now time.Time, ttl time.Duration, limit int) ([]OutboxEntry, bool, error) {
	if limit < 1 || limit > MaxOutboxList {
		return nil, false, fmt.Errorf("claiming outbox: limit %d, want 1..%d: %w", limit, MaxOutboxList, ErrInvalid)
	}
	ok, err := s.AcquireLease(ctx, OutboxLeaseName(destination), holder, now, ttl)
	if err != nil || !ok {
		return nil, false, err
	}
	entries, err := s.OutboxPending(ctx, destination, 0, limit)
	if err != nil {
		return nil, true, err
	}
	return entries, true, nil
}

// OutboxReleaseWith implements OutboxLeases.OutboxRelease as
// OutboxClaimWith does OutboxClaim: an OutboxDelivered, then a
// ReleaseLease. The lease is kept when the removal failed, so that no
// other holder resends what was delivered before the lease expires.
func OutboxReleaseWith(ctx context.Context, s interface {
	Outbox
	Leases
}, destination, holder string, ids []uint64) (int, error) {
	n, err := s.OutboxDelivered(ctx, destination, ids)
	if err != nil {
		return n, err
	}
	if err := s.ReleaseLease(ctx, OutboxLeaseName(destination), holder); err != nil {
		return n, fmt.Errorf("releasing the outbox lease: %w", err)
	}
	return n, nil
}
