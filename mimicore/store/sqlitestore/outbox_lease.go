package sqlitestore

import (
	"context"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// OutboxClaim implements store.OutboxLeases: AcquireLease, then
// OutboxPending (store.OutboxClaimWith). One process opens a SQLite store,
// so the federation sender does not use drain leases on it; this is for
// the contract and for tools.
func (s *Store) OutboxClaim(ctx context.Context, destination, holder string, now time.Time, ttl time.Duration, limit int) ([]store.OutboxEntry, bool, error) {
	return store.OutboxClaimWith(ctx, s, destination, holder, now, ttl, limit)
}

// OutboxRelease implements store.OutboxLeases: OutboxDelivered, then
// ReleaseLease (store.OutboxReleaseWith).
func (s *Store) OutboxRelease(ctx context.Context, destination, holder string, ids []uint64) (int, error) {
	return store.OutboxReleaseWith(ctx, s, destination, holder, ids)
}

var _ store.OutboxLeases = (*Store)(nil) // interface guard
