package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// AcquireLease implements store.Leases with one conditional upsert: the
// row is written when it is new, expired at now, or holder's own. Writes
// are serialised by the one writer connection, so of racing holders the
// first one's upsert takes the lease and the others' change no row.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error) {
	const doing = "acquiring lease"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	if err := check.Lease(name, holder, ttl, true); err != nil {
		return false, fmt.Errorf("%s: %w", doing, err)
	}
	nowMs := check.Millis(now)
	var won bool
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
			WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?4`,
			name, holder, nowMs+ttl.Milliseconds(), nowMs)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		won = n == 1
		return err
	})
	if err != nil {
		return false, s.fail(doing, err)
	}
	return won, nil
}

// ReleaseLease implements store.Leases.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	const doing = "releasing lease"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.Lease(name, holder, 0, false); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE leases SET expires_ms = 0 WHERE name = ?1 AND holder = ?2`, name, holder)
		return err
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// Interface guard.
var _ store.Leases = (*Store)(nil)
