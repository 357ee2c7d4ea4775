package service

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// fetcherRef is a fetcher and the calls using it. It is current until
// Apply or Close retires it, and closed once it is retired and unused.
type fetcherRef struct {
	f   *provider.KeyFetcher
	log func() *zap.Logger // the service's current logger

	mu      sync.Mutex
	users   int
	retired bool
	closed  bool
}

// newFetcher builds a fetcher that applies p with the service's store as
// its cache.
func (s *Service) newFetcher(p provider.FetchPolicy) *fetcherRef {
	p.Cache = s.store
	return &fetcherRef{f: provider.NewKeyFetcher(p), log: s.log}
}

// acquireFetcher returns the current fetcher, counted as in use until
// release. It fails with store.ErrClosed after Close.
func (s *Service) acquireFetcher() (*fetcherRef, error) {
	for {
		r := s.fetcher.Load()
		if r.acquire() {
			return r, nil
		}
		// r was closed: either Apply swapped in a new one (try again) or
		// the service is closed.
		if s.fetcher.Load() == r {
			return nil, fmt.Errorf("fetching peer key: %w", store.ErrClosed)
		}
	}
}

// acquire counts a user unless r is closed.
func (r *fetcherRef) acquire() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.users++
	return true
}

// release ends a use; the last use of a retired fetcher closes it.
func (r *fetcherRef) release() {
	r.mu.Lock()
	r.users--
	last := r.retired && r.users == 0 && !r.closed
	if last {
		r.closed = true
	}
	r.mu.Unlock()
	if last {
		r.close()
	}
}

// retire marks r as replaced; it is closed now if unused, else by the
// last release.
func (r *fetcherRef) retire() {
	r.mu.Lock()
	r.retired = true
	idle := r.users == 0 && !r.closed
	if idle {
		r.closed = true
	}
	r.mu.Unlock()
	if idle {
		r.close()
	}
}

// close closes the fetcher: its transport's idle connections, and later
// fetches through it fail fast (KeyFetcher.Close).
func (r *fetcherRef) close() { r.f.Close() }

// samePolicy reports whether a and b fetch alike, so Apply keeps the
// fetcher (and its in-memory state) across a reload that changed nothing.
// Root pools are compared by content: every reload rebuilds them. Fields
// reflect.DeepEqual cannot compare (functions) count as changed, which
// only costs a new fetcher.
func samePolicy(a, b provider.FetchPolicy) bool {
	if !a.RootCAs.Equal(b.RootCAs) {
		return false
	}
	if !slices.Equal(a.AllowedPorts, b.AllowedPorts) || !maps.Equal(a.Resolve, b.Resolve) {
		return false
	}
	a.RootCAs, b.RootCAs = nil, nil
	a.AllowedPorts, b.AllowedPorts = nil, nil
	a.Resolve, b.Resolve = nil, nil
	a.Cache, b.Cache = nil, nil
	return reflect.DeepEqual(a, b)
}
