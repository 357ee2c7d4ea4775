package pgstore

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestClaimBehindLockedPackage claims a client's KeyPackage while a
// concurrent claim holds the row of one of its single-use packages (a
// transaction that locked it, then rolls back or claims it): single-use
// packages still come first. A claim takes another available single-use
// package, of another suite too, and otherwise waits for the concurrent
// claim: the package is its own when that claim rolls back, and only
// once it committed does the last-resort package come.
func TestClaimBehindLockedPackage(t *testing.T) {
	const client = "mimi://a.example/d/alice/phone"
	exp := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name     string
		kps      []store.KeyPackage
		suite    uint16
		commit   bool // the concurrent claim commits, else it rolls back
		wantRef  string
		noneLeft bool // want ErrNotFound
	}{
		{name: "any suite, another suite's single-use package available", suite: 0, commit: true,
			kps:     []store.KeyPackage{storetest.KP(client, 1, "s1", exp, false), storetest.KP(client, 2, "s2", exp, false), storetest.KP(client, 1, "lr1", exp, true)},
			wantRef: "s2"},
		{name: "any suite, concurrent claim rolls back", suite: 0,
			kps:     []store.KeyPackage{storetest.KP(client, 1, "s1", exp, false), storetest.KP(client, 1, "lr1", exp, true)},
			wantRef: "s1"},
		{name: "one suite, concurrent claim rolls back", suite: 1,
			kps:     []store.KeyPackage{storetest.KP(client, 1, "s1", exp, false), storetest.KP(client, 1, "lr1", exp, true)},
			wantRef: "s1"},
		{name: "one suite, concurrent claim commits", suite: 1, commit: true,
			kps:     []store.KeyPackage{storetest.KP(client, 1, "s1", exp, false), storetest.KP(client, 1, "lr1", exp, true)},
			wantRef: "lr1"},
		{name: "any suite, concurrent claim commits, last resort of another suite", suite: 0, commit: true,
			kps:     []store.KeyPackage{storetest.KP(client, 1, "s1", exp, false), storetest.KP(client, 2, "lr2", exp, true)},
			wantRef: "lr2"},
		{name: "any suite, concurrent claim commits, nothing left", suite: 0, commit: true,
			kps:      []store.KeyPackage{storetest.KP(client, 1, "s1", exp, false)},
			noneLeft: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := openTemp(t, Options{})
			if err := s.PublishKeyPackages(ctx, client, tc.kps, store.KeyPackageLimits{}); err != nil {
				t.Fatalf("PublishKeyPackages: %v", err)
			}
			// The concurrent claim: s1's row locked in an open transaction.
			tx, err := s.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if _, err := tx.Exec(ctx, `SELECT ref FROM key_packages WHERE ref = $1 FOR UPDATE`, []byte("ref:s1")); err != nil {
				t.Fatal(err)
			}
			type result struct {
				kp  store.KeyPackage
				err error
			}
			done := make(chan result, 1)
			go func() {
				kp, err := s.ClaimKeyPackage(ctx, client, tc.suite)
				done <- result{kp, err}
			}()
			var res result
			select {
			case res = <-done:
			case <-time.After(300 * time.Millisecond):
				// Waiting for the concurrent claim: end it.
				if tc.commit {
					if _, err := tx.Exec(ctx, `UPDATE key_packages SET claimed_ms = $2 WHERE ref = $1`, []byte("ref:s1"), time.Now().UnixMilli()); err != nil {
						t.Fatal(err)
					}
					err = tx.Commit(ctx)
				} else {
					err = tx.Rollback(ctx)
				}
				if err != nil {
					t.Fatal(err)
				}
				res = <-done
			}
			switch {
			case tc.noneLeft:
				if !errors.Is(res.err, store.ErrNotFound) {
					t.Fatalf("claim: %s, %v; want ErrNotFound", res.kp.Ref, res.err)
				}
			case res.err != nil:
				t.Fatalf("claim: %v, want %s", res.err, tc.wantRef)
			case string(res.kp.Ref) != "ref:"+tc.wantRef:
				t.Fatalf("claim got %s, want %s", res.kp.Ref, tc.wantRef)
			}
		})
	}
}

// TestMigrationKeyPackagesHandedOut applies the migration that records
// whether a last-resort KeyPackage was handed out to a database of the
// version before it: a last-resort package stored then may have been
// handed out, so its replacement keeps it as replaced rather than delete
// it, while single-use packages stay available.
func TestMigrationKeyPackagesHandedOut(t *testing.T) {
	const client = "mimi://a.example/d/alice/phone"
	ctx := context.Background()
	dsn, pool, version := poolBefore(t, schemaKeyPackagesHandedOut)
	exp := time.Now().Add(time.Hour)
	old := storetest.KP(client, 1, "old lr", exp, true)
	one := storetest.KP(client, 1, "one", exp, false)
	for _, kp := range []store.KeyPackage{old, one} {
		if _, err := pool.Exec(ctx, `INSERT INTO key_packages (ref, client, suite, key_package, not_after_ms, last_resort, published_ms, claimed_ms, expires_ms)
			VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $5)`,
			kp.Ref, kp.Client, int32(kp.Suite), kp.KeyPackage, exp.UnixMilli(), kp.LastResort, time.Now().UnixMilli()); err != nil {
			pool.Close()
			t.Fatalf("writing a KeyPackage of version %d: %v", version, err)
		}
	}
	pool.Close()
	s, err := Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	storetest.CheckHandedOutMigrated(t, s, client, old, one, exp)
}

// TestMigrationKeyPackagesRetained applies the migration that keeps a
// claimed KeyPackage's ref until its NotAfter to a database of the version
// before it holding a package claimed then: KeyPackageByRef finds it
// within the retention, a publish of it is refused past the retention,
// when the sweep has dropped its bytes, and the sweep after its NotAfter
// removes it.
func TestMigrationKeyPackagesRetained(t *testing.T) {
	const client = "mimi://a.example/d/alice/phone"
	ctx := context.Background()
	dsn, pool, version := poolBefore(t, schemaKeyPackagesRetained)
	clock := storetest.NewClock()
	exp := clock.Now().Add(store.ClaimedKeyPackageRetention + 24*time.Hour)
	kp := storetest.KP(client, 1, "claimed", exp, false)
	claimed := clock.Now().Add(-time.Hour)
	_, err := pool.Exec(ctx, `INSERT INTO key_packages (ref, client, suite, key_package, not_after_ms, last_resort, published_ms, claimed_ms, expires_ms)
		VALUES ($1, $2, $3, $4, $5, false, $6, $6, $7)`,
		kp.Ref, kp.Client, int32(kp.Suite), kp.KeyPackage, exp.UnixMilli(), claimed.UnixMilli(),
		claimed.Add(store.ClaimedKeyPackageRetention).UnixMilli())
	pool.Close()
	if err != nil {
		t.Fatalf("writing a KeyPackage of version %d: %v", version, err)
	}
	s, err := Open(ctx, dsn, withClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	storetest.CheckRetainedMigrated(t, s, clock, client, kp, func() (size int, err error) {
		err = s.pool.QueryRow(ctx, `SELECT length(key_package) + length(client) FROM key_packages WHERE ref = $1`, kp.Ref).Scan(&size)
		return size, err
	})
}

// poolBefore creates a database migrated to the version before the
// migration whose SQL is schema, for a test of that migration: it returns
// the database's DSN, a pool on it, which the test closes, and the
// version it is at.
func poolBefore(t *testing.T, schema string) (string, *pgxpool.Pool, int) {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	before := slices.IndexFunc(migrations, func(m migration) bool { return m.sql == schema })
	if before < 1 {
		t.Fatal("the migration is not listed")
	}
	version := migrations[before-1].version
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrateTo(ctx, pool, migrations[:before], time.Now()); err != nil {
		pool.Close()
		t.Fatalf("migrating to version %d: %v", version, err)
	}
	return dsn, pool, version
}
