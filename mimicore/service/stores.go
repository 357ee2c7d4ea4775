package service

import (
	"context"
	"fmt"
	"sync"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// DefaultMaxConns is the PostgreSQL pool size when StoreOptions.MaxConns
// is zero: openStore passes it to the registered opener, and
// StoreOptions.String names it.
const DefaultMaxConns = 16

// PostgresStore is the name under which a PostgreSQL store opener
// registers (RegisterStore), used when StoreOptions.Postgres is set.
const PostgresStore = "postgres"

// ClusterPackage is the package whose import adds the cluster backends
// (the PostgreSQL store among them) to a build; errors name it.
const ClusterPackage = "github.com/caddy-mimi/caddy-mimi/caddymodule/cluster"

// ClusterHint says how to get a build with the cluster backends, for the
// errors of a build without them.
const ClusterHint = "build with " + ClusterPackage + " (xcaddy build --with " + ClusterPackage + ", or CLUSTER=1 ./xcaddy.sh)"

// StoreOpener opens a store of the kind it was registered for. opts has
// MaxConns filled in (DefaultMaxConns when zero).
type StoreOpener func(ctx context.Context, opts StoreOptions) (store.Store, error)

var (
	storesMu sync.RWMutex
	stores   = map[string]StoreOpener{}
)

// RegisterStore makes the store opener open available under name, so
// that the package of a store the default build does not link (the
// PostgreSQL one, registered as PostgresStore by ClusterPackage) stays
// out of builds that do not import it. It is meant for init functions,
// and panics if open is nil or name is already registered, as
// database/sql.Register does.
func RegisterStore(name string, open StoreOpener) {
	if open == nil {
		panic("service: RegisterStore of a nil opener for " + name)
	}
	storesMu.Lock()
	defer storesMu.Unlock()
	if _, dup := stores[name]; dup {
		panic("service: RegisterStore called twice for " + name)
	}
	stores[name] = open
}

// storeOpener returns the opener registered under name, or an error
// that says the build has no store of kind (a name for people) and names
// the package to add to the build.
func storeOpener(name, kind string) (StoreOpener, error) {
	storesMu.RLock()
	open := stores[name]
	storesMu.RUnlock()
	if open == nil {
		return nil, fmt.Errorf("this build has no %s store: %s", kind, ClusterHint)
	}
	return open, nil
}
