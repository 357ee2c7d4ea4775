package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// Statements of the drain leases (store.OutboxLeases).
const (
	// outboxClaimLeaseSQL is AcquireLease's upsert.
	outboxClaimLeaseSQL = `INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
		WHERE leases.holder = excluded.holder OR leases.expires_ms <= $4`
	// outboxReleaseSQL deletes destination $1's messages of ids $2,
	// uncounts them in its head and frees lease $3 if holder $4 holds it;
	// it returns how many it deleted.
	outboxReleaseSQL = `WITH d AS (
			DELETE FROM outbox WHERE destination = $1 AND id = ANY($2::bigint[]) RETURNING size),
		h AS (UPDATE outbox_heads SET messages = messages - (SELECT count(*) FROM d),
			bytes = bytes - (SELECT COALESCE(sum(size), 0) FROM d)
			WHERE destination = $1 AND EXISTS (SELECT 1 FROM d)),
		l AS (UPDATE leases SET expires_ms = 0 WHERE name = $3 AND holder = $4)
		SELECT count(*) FROM d`
)

// outboxClaimReadSQL reads destination $1's head, up to $5 messages and
// store.MaxOutboxListBytes (outboxCapSQL), when holder $3 holds lease $2
// until $4: what the upsert before it wrote when it was granted.
var outboxClaimReadSQL = outboxCapSQL(outboxReadSQL + `
	WHERE o.destination = $1 AND EXISTS (SELECT 1 FROM leases WHERE name = $2 AND holder = $3 AND expires_ms = $4)
	ORDER BY o.id LIMIT $5`)

// OutboxClaim implements store.OutboxLeases in one round trip: a batch of
// the lease's upsert and the read of the head, the read only returning
// rows when the upsert wrote the lease. The read is a statement of its
// own, so under READ COMMITTED its snapshot is taken after the upsert,
// which waited for a holder releasing the lease at that moment: it sees
// that holder's removals, and never sends again what it delivered.
func (s *Store) OutboxClaim(ctx context.Context, destination, holder string, now time.Time, ttl time.Duration, limit int) ([]store.OutboxEntry, bool, error) {
	const doing = "claiming outbox"
	if err := s.checkOpen(doing); err != nil {
		return nil, false, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return nil, false, fmt.Errorf("%s: %w", doing, err)
	}
	name := store.OutboxLeaseName(destination)
	if err := check.Lease(name, holder, ttl, true); err != nil {
		return nil, false, fmt.Errorf("%s: %w", doing, err)
	}
	if limit < 1 || limit > store.MaxOutboxList {
		return nil, false, fmt.Errorf("%s: limit %d, want 1..%d: %w", doing, limit, store.MaxOutboxList, store.ErrInvalid)
	}
	nowMs := check.Millis(now)
	expires := nowMs + ttl.Milliseconds()
	var (
		ok  bool
		out []store.OutboxEntry
	)
	b := &pgx.Batch{}
	b.Queue(outboxClaimLeaseSQL, name, holder, expires, nowMs).Exec(func(tag pgconn.CommandTag) error {
		ok = tag.RowsAffected() == 1
		return nil
	})
	b.Queue(outboxClaimReadSQL, destination, name, holder, expires, limit).Query(func(rows pgx.Rows) error {
		var err error
		out, err = collectOutbox(rows, destination)
		return err
	})
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, false, s.fail(doing, err)
	}
	if !ok {
		return nil, false, nil
	}
	return out, true, nil
}

// OutboxRelease implements store.OutboxLeases in one statement: the
// DELETE of the ids, the update of the destination's head and the
// release of the lease.
func (s *Store) OutboxRelease(ctx context.Context, destination, holder string, ids []uint64) (int, error) {
	const doing = "releasing outbox"
	if err := s.checkOpen(doing); err != nil {
		return 0, err
	}
	if err := check.Domain("destination", destination); err != nil {
		return 0, fmt.Errorf("%s: %w", doing, err)
	}
	name := store.OutboxLeaseName(destination)
	if err := check.Lease(name, holder, 0, false); err != nil {
		return 0, fmt.Errorf("%s: %w", doing, err)
	}
	if len(ids) > store.MaxOutboxList {
		return 0, fmt.Errorf("%s: %d ids, over the %d limit: %w", doing, len(ids), store.MaxOutboxList, store.ErrInvalid)
	}
	list := outboxIDs(ids)
	var n int64
	if err := s.pool.QueryRow(ctx, outboxReleaseSQL, destination, list, name, holder).Scan(&n); err != nil {
		return 0, s.fail(doing, err)
	}
	return int(n), nil
}

var _ store.OutboxLeases = (*Store)(nil) // interface guard
