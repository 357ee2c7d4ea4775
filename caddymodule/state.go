package caddymodule

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

// statePool shares one sharedState per data directory across handler
// instances and config reloads: Caddy provisions the new config before it
// cleans up the old one, and the key ring and store must not be opened
// twice.
var statePool = caddy.NewUsagePool()

// sharedState is what every gateway instance with the same data directory
// shares: the signing keys and the background rotation.
type sharedState struct {
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

// openState opens the key ring and starts its rotation loop.
func openState(dataDir string, opts provider.KeyRingOptions, logger *zap.Logger) (*sharedState, error) {
	keys, err := provider.OpenKeyRing(keysDir(dataDir), opts, time.Now())
	if err != nil {
		return nil, fmt.Errorf("opening signing keys: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &sharedState{keys: keys, cancel: cancel}
	s.done.Add(1)
	go s.rotate(ctx, logger.With(zap.String("data_dir", dataDir)))
	return s, nil
}

func keysDir(dataDir string) string { return dataDir + "/keys" }

// rotate runs KeyRing.Rotate whenever it next has work, until ctx ends.
func (s *sharedState) rotate(ctx context.Context, logger *zap.Logger) {
	defer s.done.Done()
	for {
		wait := time.Until(s.keys.NextRotation())
		// Wake at least hourly so a suspended machine or a clock jump is
		// noticed without waiting a whole rotation interval.
		wait = min(max(wait, time.Second), time.Hour)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case now := <-t.C:
			created, err := s.keys.Rotate(now)
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

// Destruct implements caddy.Destructor.
func (s *sharedState) Destruct() error {
	s.cancel()
	s.done.Wait()
	return nil
}
