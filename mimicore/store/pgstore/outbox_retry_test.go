package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestMigrationOutboxRetryRateLimited applies the migration that records
// whether a destination's stored backoff is a 429's to a database of the
// version before it: the retry state stored before it reads back as it
// was, not rate limited, and one stored after it keeps the flag.
func TestMigrationOutboxRetryRateLimited(t *testing.T) {
	ctx := context.Background()
	dsn, pool, version := poolBefore(t, schemaOutboxRetryRateLimited)
	next := time.UnixMilli(time.Now().Add(time.Hour).UnixMilli()).UTC()
	old := store.OutboxRetry{Destination: "dest.example", Failures: 3, LastError: "status 429 rate_limited",
		LastAttempt: next.Add(-2 * time.Hour), Backoff: store.OutboxBackoff{Level: time.Hour, Next: next}}
	_, err := pool.Exec(ctx, `INSERT INTO outbox_retries (destination, failures, last_error, last_attempt_ms, level_ms, next_ms, groups)
		VALUES ($1, $2, $3, $4, $5, $6, ''::bytea)`, old.Destination, int64(old.Failures), old.LastError, old.LastAttempt.UnixMilli(),
		old.Backoff.Level.Milliseconds(), old.Backoff.Next.UnixMilli())
	pool.Close()
	if err != nil {
		t.Fatalf("writing a retry state of version %d: %v", version, err)
	}
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("opening the database of version %d: %v", version, err)
	}
	t.Cleanup(func() { s.Close() })
	storetest.CheckOutboxRetryMigrated(t, s, old)
}
