package caddymodule

import (
	"context"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
)

// servicePool holds one service.Service per data directory, that is per
// provider, across handler instances and config reloads. Caddy provisions
// the new config before it cleans up the old one, so the new config finds
// the running service, brings its options to it with Apply, and the store,
// key ring and background work are never opened twice. The service closes
// when the last config using it is cleaned up.
//
// A Caddy app (caddy.App with Start and Stop) is not used because Caddy
// builds each config's apps anew and starts the new one before stopping the
// old: an app instance is not "once per provider across reloads" and would
// itself need this pool; and a provider's options live in its mimi
// directive, not in global options.
var servicePool = caddy.NewUsagePool()

// loadService returns the service of opts.DataDir, opening it on first use
// and applying opts to a running one.
func loadService(opts service.Options) (*service.Service, error) {
	v, loaded, err := servicePool.LoadOrNew(opts.DataDir, func() (caddy.Destructor, error) {
		return service.Open(context.Background(), opts)
	})
	if err != nil {
		return nil, err
	}
	s := v.(*service.Service)
	if loaded {
		if err := s.Apply(opts); err != nil {
			servicePool.Delete(opts.DataDir) //nolint:errcheck // not ours to keep
			return nil, err
		}
	}
	return s, nil
}
