package sqlitestore

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestSharedKeys runs the shared key contract on one store: a SQLite
// database is one process's (see lock_unix.go), so the lease races run
// between goroutines of that store.
func TestSharedKeys(t *testing.T) {
	storetest.RunSharedKeyTests(t, func(t *testing.T) []store.Store { return []store.Store{openTemp(t)} })
}

// TestOutboxLeases runs the outbox's drain lease contract; the drainers
// race between goroutines of one store, as in TestSharedKeys.
func TestOutboxLeases(t *testing.T) {
	storetest.RunOutboxLeaseTests(t, func(t *testing.T) []store.Store { return []store.Store{openTemp(t)} })
}
