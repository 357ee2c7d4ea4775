package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// AcquireLease implements store.Leases with one conditional upsert. Under
// READ COMMITTED, of gateways racing for a free lease one inserts the row;
// the others' INSERT meets the conflict, waits for that transaction, and
// evaluates the WHERE on the committed row, which is neither theirs nor
// expired, so they change no row. Racing for an expired row works the same
// way through the row lock that ON CONFLICT DO UPDATE takes.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error) {
	const doing = "acquiring lease"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	if err := check.Lease(name, holder, ttl, true); err != nil {
		return false, fmt.Errorf("%s: %w", doing, err)
	}
	nowMs := check.Millis(now)
	tag, err := s.pool.Exec(ctx, `INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms
		WHERE leases.holder = excluded.holder OR leases.expires_ms <= $4`,
		name, holder, nowMs+ttl.Milliseconds(), nowMs)
	if err != nil {
		return false, s.fail(doing, err)
	}
	return tag.RowsAffected() == 1, nil
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
	if _, err := s.pool.Exec(ctx, `UPDATE leases SET expires_ms = 0 WHERE name = $1 AND holder = $2`, name, holder); err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// Interface guard.
var _ store.Leases = (*Store)(nil)
