package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/retryenc"
)

// SetOutboxRetry implements store.OutboxRetries with one upsert: of the
// gateways of one database, the last to write a destination's state wins.
func (s *Store) SetOutboxRetry(ctx context.Context, r store.OutboxRetry) error {
	const doing = "keeping a destination's outbox backoff"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := retryenc.Check(r); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO outbox_retries
		(destination, failures, last_error, last_attempt_ms, level_ms, next_ms, groups, rate_limited)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (destination) DO UPDATE SET failures = excluded.failures, last_error = excluded.last_error,
		last_attempt_ms = excluded.last_attempt_ms, level_ms = excluded.level_ms, next_ms = excluded.next_ms,
		groups = excluded.groups, rate_limited = excluded.rate_limited`,
		r.Destination, int64(r.Failures), r.LastError, check.Millis(r.LastAttempt), r.Backoff.Level.Milliseconds(),
		check.Millis(r.Backoff.Next), retryenc.EncodeGroups(r.Groups), r.RateLimited)
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// ClearOutboxRetry implements store.OutboxRetries.
func (s *Store) ClearOutboxRetry(ctx context.Context, destination string) error {
	const doing = "clearing a destination's outbox backoff"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.Domain("destination", destination); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM outbox_retries WHERE destination = $1`, destination); err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// OutboxRetries implements store.OutboxRetries.
func (s *Store) OutboxRetries(ctx context.Context) ([]store.OutboxRetry, error) {
	const doing = "reading the outbox backoffs"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT destination, failures, last_error, last_attempt_ms, level_ms, next_ms, groups,
		rate_limited FROM outbox_retries ORDER BY destination COLLATE "C"`)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	out := []store.OutboxRetry{}
	for rows.Next() {
		var r store.OutboxRetry
		var failures, attempt, level, next int64
		var groups []byte
		if err := rows.Scan(&r.Destination, &failures, &r.LastError, &attempt, &level, &next, &groups, &r.RateLimited); err != nil {
			return nil, s.fail(doing, err)
		}
		r.Failures = int(failures)
		r.LastAttempt, r.Backoff.Level, r.Backoff.Next = check.Time(attempt), time.Duration(level)*time.Millisecond, check.Time(next)
		if r.Groups, err = retryenc.DecodeGroups(groups); err != nil {
			return nil, fmt.Errorf("%s: destination %q: %w", doing, r.Destination, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	return out, nil
}

var _ store.OutboxRetries = (*Store)(nil) // interface guard
