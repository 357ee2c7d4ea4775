package pgstore

import (
	"context"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestSharedKeys runs the shared key contract on two stores on one
// database, as two gateways would open it.
func TestSharedKeys(t *testing.T) {
	storetest.RunSharedKeyTests(t, twoGateways)
}

// TestOutboxLeases runs the outbox's drain lease contract on two stores
// on one database, as two gateways would open it.
func TestOutboxLeases(t *testing.T) {
	storetest.RunOutboxLeaseTests(t, twoGateways)
}

// twoGateways opens two stores on one new database, as two gateways
// would, for the contract suites that take several; each must close
// cleanly when t ends.
func twoGateways(t *testing.T) []store.Store {
	dsn := pgtest.NewDB(t)
	stores := make([]store.Store, 2)
	for i := range stores {
		s, err := Open(context.Background(), dsn, Options{MaxConns: 4})
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		stores[i] = s
	}
	return stores
}
