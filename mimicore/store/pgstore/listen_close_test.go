package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
)

// TestListenerLookupAtClose has the listener of one Store hear another
// Store's group post and look up the group's members while the table is
// locked, so that the lookup is under way when the next step comes: a
// Close of the Store, which must log no warning (the lookup ends because
// the Store stops, not because anything failed), or the loss of the
// lookup's connection, which must still warn. The wake-up errors are
// logged as the service logs them.
func TestListenerLookupAtClose(t *testing.T) {
	for _, tc := range []struct {
		name     string
		closing  bool // Close the Store, else kill the lookup's connection
		wantWarn bool
	}{
		{name: "close", closing: true, wantWarn: false},
		{name: "connection lost", closing: false, wantWarn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn := pgtest.NewDB(t)
			var stores [2]*Store
			for i := range stores {
				s, err := Open(ctx, dsn, Options{MaxConns: 4})
				if err != nil {
					t.Fatalf("Open %d: %v", i, err)
				}
				t.Cleanup(func() { s.Close() })
				stores[i] = s
			}
			s1, s2 := stores[0], stores[1]
			core, logs := observer.New(zapcore.WarnLevel)
			logger := zap.New(core)
			s1.SetWakeErrorLog(func(err error) {
				logger.Warn("woke every waiting client: could not tell which ones a group post concerns", zap.Error(err))
			})
			group := []byte("locked group")
			if _, err := s2.pool.Exec(ctx, `INSERT INTO group_members (client, group_id, from_seq) VALUES ($1, $2, 0)`, wakeAlice, group); err != nil {
				t.Fatal(err)
			}
			_, stop := s1.WatchQueue(wakeAlice, 0) // a waiter: the lookup runs
			defer stop()

			// The lookup waits behind this lock until the transaction ends.
			locker, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer locker.Close(ctx)
			tx, err := locker.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if _, err := tx.Exec(ctx, `LOCK TABLE group_members IN ACCESS EXCLUSIVE MODE`); err != nil {
				t.Fatal(err)
			}
			payload, err := json.Marshal(wakeEvent{G: group, S: 1})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s2.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, queueChannel, string(payload)); err != nil {
				t.Fatal(err)
			}
			var pid int32
			deadline := time.Now().Add(wakeTimeout)
			for {
				// Read outside the locking transaction, whose view of
				// pg_stat_activity is a snapshot taken at its first read.
				err := s2.pool.QueryRow(ctx, `SELECT pid FROM pg_stat_activity
					WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query LIKE '%FROM group_members%'`).Scan(&pid)
				if err == nil {
					break
				}
				if !errors.Is(err, pgx.ErrNoRows) {
					t.Fatal(err)
				}
				if time.Now().After(deadline) {
					t.Fatalf("the listener's lookup was not waiting for the lock within %v", wakeTimeout)
				}
				time.Sleep(10 * time.Millisecond)
			}

			if tc.closing {
				if err := s1.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				// Close waited for the listener: its lookup is over.
			} else {
				var killed bool
				if err := s2.pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&killed); err != nil || !killed {
					t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, killed, err)
				}
				deadline := time.Now().Add(wakeTimeout)
				for logs.Len() == 0 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
			}
			warned := logs.FilterLevelExact(zapcore.WarnLevel).All()
			if got := len(warned) > 0; got != tc.wantWarn {
				t.Fatalf("warnings %v, want a warning: %v", warned, tc.wantWarn)
			}
		})
	}
}
