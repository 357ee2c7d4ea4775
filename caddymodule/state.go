package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// statePool shares one sharedState per data directory across handler
// instances and config reloads: Caddy provisions the new config before it
// cleans up the old one, and the store and key ring must not be opened
// twice.
var statePool = caddy.NewUsagePool()

// sweepEvery is how often expired replay entries, spent tokens and cached
// peer keys are deleted.
const sweepEvery = 5 * time.Minute

// sharedState is what every gateway instance with the same data directory
// shares: the embedded store, the signing keys, and the background key
// rotation and expiry sweep.
type sharedState struct {
	store  store.Store
	keys   *provider.KeyRing
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// loadState returns the shared state of dataDir, opening it on first use.
func loadState(dataDir string, opts provider.KeyRingOptions, logger *zap.Logger) (*sharedState, error) {
	v, _, err := statePool.LoadOrNew(dataDir, func() (caddy.Destructor, error) {
		return openState(dataDir, opts, logger)
	})
	if err != nil {
		return nil, err
	}
	return v.(*sharedState), nil
}

// openState opens the SQLite store and the key ring in dataDir and starts
// the background loops.
func openState(dataDir string, opts provider.KeyRingOptions, logger *zap.Logger) (*sharedState, error) {
	ctx, cancel := context.WithCancel(context.Background())
	db, err := sqlitestore.Open(ctx, filepath.Join(dataDir, sqlitestore.DefaultFileName))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("opening store: %w", err)
	}
	opts.Metadata = db
	keys, err := provider.OpenKeyRing(ctx, filepath.Join(dataDir, "keys"), opts, time.Now())
	if err != nil {
		cancel()
		return nil, errors.Join(fmt.Errorf("opening signing keys: %w", err), db.Close())
	}
	s := &sharedState{store: db, keys: keys, cancel: cancel}
	logger = logger.With(zap.String("data_dir", dataDir))
	s.done.Add(2)
	go s.rotate(ctx, logger)
	go s.sweep(ctx, logger)
	return s, nil
}

// rotate runs KeyRing.Rotate whenever it next has work, until ctx ends.
func (s *sharedState) rotate(ctx context.Context, logger *zap.Logger) {
	defer s.done.Done()
	for {
		// Wake at least hourly so a suspended machine or a clock jump is
		// noticed without waiting a whole rotation interval.
		wait := min(max(time.Until(s.keys.NextRotation()), time.Second), time.Hour)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case now := <-t.C:
			created, err := s.keys.Rotate(ctx, now)
			if err != nil {
				logger.Error("rotating signing keys", zap.Error(err))
				continue
			}
			if created {
				cur, _ := s.keys.Current(now)
				logger.Info("rotated signing key", zap.Binary("key_id", cur.ID))
			}
		}
	}
}

// sweep deletes expired records every sweepEvery, until ctx ends.
func (s *sharedState) sweep(ctx context.Context, logger *zap.Logger) {
	defer s.done.Done()
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n, err := s.store.DeleteExpired(ctx, now)
			if err != nil && ctx.Err() == nil {
				logger.Error("deleting expired records", zap.Error(err))
			} else if n > 0 {
				logger.Debug("deleted expired records", zap.Int64("count", n))
			}
		}
	}
}

// Destruct implements caddy.Destructor: it stops the loops and closes the
// store.
func (s *sharedState) Destruct() error {
	s.cancel()
	s.done.Wait()
	return s.store.Close()
}
