package caddymodule

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
)

// servicePool holds one service.Service per data directory, that is per
// provider, across handler instances and config reloads. Caddy provisions
// the new config before it cleans up the old one, so the new config finds
// the running service, brings its options to it with Apply once nothing
// else in its Provision can fail (Caddy keeps the old config when the new
// one fails, and with it the old options; when Caddy rejects the new
// config later, because another module failed, the Cleanup of its gateway
// puts the old options back: commit.go), and the store, key ring and
// background work are never opened twice. The service closes when the
// last config using it is cleaned up.
//
// A Caddy app (caddy.App with Start and Stop) is not used because Caddy
// builds each config's apps anew and starts the new one before stopping the
// old: an app instance is not "once per provider across reloads" and would
// itself need this pool; and a provider's options live in its mimi
// directive, not in global options.
var servicePool = caddy.NewUsagePool()

// loadService returns the service of opts.DataDir, opening it with opts on
// first use. loaded reports a running service, whose options are still
// those of the running config: the caller applies opts to it (Apply) once
// the new config is otherwise provisioned, and releases its hold
// (servicePool.Delete) if anything fails.
func loadService(opts service.Options) (s *service.Service, loaded bool, err error) {
	v, loaded, err := servicePool.LoadOrNew(opts.DataDir, func() (caddy.Destructor, error) {
		return service.Open(context.Background(), opts)
	})
	if err != nil {
		return nil, false, err
	}
	return v.(*service.Service), loaded, nil
}

// poolDataDir is dir as the service opens it, absolute and clean: the key
// of servicePool and of the pools beside it, so that every spelling of a
// directory (`/x`, `/x/`, a relative path) shares its one service, where
// another spelling opened a second one on the same files.
func poolDataDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("data_dir %s: %w", dir, err)
	}
	return abs, nil
}
