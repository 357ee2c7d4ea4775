package service

import (
	"context"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
)

// openPostgres is the opener the cluster build registers, registered here
// for the PostgreSQL tests (the cluster package imports this one, so the
// tests cannot import it).
func openPostgres(ctx context.Context, o StoreOptions) (store.Store, error) {
	return pgstore.Open(ctx, o.Postgres, pgstore.Options{MaxConns: o.MaxConns})
}

func init() { RegisterStore(PostgresStore, openPostgres) }

// TestStoreRegistry checks the registry: a missing opener is an error
// that names the cluster package, and a nil or second registration
// panics.
func TestStoreRegistry(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		storesMu.Lock()
		saved := stores[PostgresStore]
		delete(stores, PostgresStore)
		storesMu.Unlock()
		t.Cleanup(func() {
			storesMu.Lock()
			stores[PostgresStore] = saved
			storesMu.Unlock()
		})
		s, err := Open(t.Context(), Options{DataDir: t.TempDir(), Store: StoreOptions{Postgres: "postgres://127.0.0.1:1/x"}, KeySecret: secret(1)})
		if err == nil {
			s.Close()
			t.Fatal("Open succeeded without a PostgreSQL store")
		}
		for _, want := range []string{"this build has no PostgreSQL store", ClusterPackage} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	})
	for _, c := range []struct {
		name string
		key  string
		open StoreOpener
	}{
		{"nil opener", "nil", nil},
		{"second registration", PostgresStore, openPostgres},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("RegisterStore did not panic")
				}
			}()
			RegisterStore(c.key, c.open)
		})
	}
}

// TestStoreOptionsString checks the names of stores in logs, with the
// default pool size, without the connection string.
func TestStoreOptionsString(t *testing.T) {
	for _, c := range []struct {
		opts StoreOptions
		want string
	}{
		{StoreOptions{}, "sqlite"},
		{StoreOptions{Postgres: "postgres://u:secret@h/db"}, "postgres (pool of 16)"},
		{StoreOptions{Postgres: "postgres://u:secret@h/db", MaxConns: 3}, "postgres (pool of 3)"},
	} {
		t.Run(c.want, func(t *testing.T) {
			if got := c.opts.String(); got != c.want {
				t.Fatalf("String() = %q, want %q", got, c.want)
			}
		})
	}
}
