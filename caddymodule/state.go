package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
)

// servicePool holds one service.Service per data directory, that is per
// provider, across handler instances and config reloads. Caddy provisions
// the new config before it cleans up the old one, so the new config finds
// the running service and brings its options to it with Apply when Caddy
// starts the config (the mimi app, app.go: a config Caddy rejects never
// changes the running service; one rejected after its mimi app started
// gets the old options put back: commit.go), and the store, key ring and
// background work are never opened twice. The service closes when the
// last config using it is cleaned up.
//
// The pool is not kept in the mimi app because Caddy builds each config's
// apps anew and starts the new one before stopping the old: an app
// instance is not "once per provider across reloads" and would itself
// need this pool; and a provider's options live in its mimi directive,
// not in global options.
var servicePool = caddy.NewUsagePool()

// loadService returns the service of opts.DataDir, opening it with opts on
// first use. loaded reports a running service, whose options are still
// those of the running config: the caller applies opts to it (Apply) when
// Caddy starts the new config, and releases its hold (servicePool.Delete)
// if anything fails.
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

// gatewayDirs records, for each config, which data directory each
// gateway (`mimi` handler) serves its provider domains from, so that a
// `mimi_local` handler without data_dir finds the store and key ring of
// the gateway of its domains (LocalAPI.resolveDataDir) whatever
// data_dir, or first provider, that gateway has.
var gatewayDirs = &dirRegistry{entries: map[*dirEntry]struct{}{}}

// dirRegistry is the type of gatewayDirs.
type dirRegistry struct {
	mu      sync.Mutex
	entries map[*dirEntry]struct{}
}

// dirEntry is one gateway's record: its config, provider domains and
// data directory.
type dirEntry struct {
	// config identifies the config the gateway belongs to: the Done
	// channel of its caddy.Context, one per config load (Caddy
	// provisions a new config while the old one still runs, and the two
	// may place a domain in different directories).
	config  <-chan struct{}
	domains []string
	dataDir string
	// maxKeyPackageLifetime is the gateway's max_key_package_lifetime
	// (0: the default; negative: unlimited), which the mimi_local
	// handlers of its data directory apply too.
	maxKeyPackageLifetime time.Duration
}

// configOf identifies ctx's config for gatewayDirs: the Done channel of
// the context Caddy made for the config load, which every module of the
// config is provisioned under (Caddy adds values to it, not cancels).
func configOf(ctx caddy.Context) <-chan struct{} {
	if ctx.Context == nil {
		return nil
	}
	return ctx.Done()
}

// register records that a gateway of config serves domains from
// dataDir, with the given max_key_package_lifetime, until release.
func (r *dirRegistry) register(config <-chan struct{}, domains []string, dataDir string, maxKeyPackageLifetime time.Duration) *dirEntry {
	e := &dirEntry{config: config, domains: slices.Clone(domains), dataDir: dataDir, maxKeyPackageLifetime: maxKeyPackageLifetime}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries[e] = struct{}{}
	return e
}

// release removes e, if not nil.
func (r *dirRegistry) release(e *dirEntry) {
	if e == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.entries, e)
}

// errNoGateway is the error of resolve when no gateway of the config
// serves a domain.
var errNoGateway = errors.New("no mimi gateway of this config serves the domain")

// resolve answers the data directory of the gateways of config that
// serve domains: every domain must be served, and all from one
// directory (one store, one key ring); errNoGateway names the first
// domain without a gateway.
func (r *dirRegistry) resolve(config <-chan struct{}, domains []string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	dir := ""
	for _, d := range domains {
		var found []string
		for e := range r.entries {
			if e.config == config && slices.Contains(e.domains, d) && !slices.Contains(found, e.dataDir) {
				found = append(found, e.dataDir)
			}
		}
		switch {
		case len(found) == 0:
			return "", fmt.Errorf("provider %s: %w", d, errNoGateway)
		case len(found) > 1:
			slices.Sort(found)
			return "", fmt.Errorf("provider %s is served by gateways of different data directories (%s)", d, strings.Join(found, ", "))
		case dir != "" && found[0] != dir:
			return "", fmt.Errorf("providers %s and %s are served from different data directories (%s, %s), which one handler cannot use at once",
				domains[0], d, dir, found[0])
		}
		dir = found[0]
	}
	return dir, nil
}

// keyPackageLifetime answers the max_key_package_lifetime of the
// gateways of config that serve from dataDir, for a mimi_local handler of
// that directory: zero (the default) when there is none, and the
// strictest when they differ (zero counting as the default, a negative
// value, unlimited, as longer than any).
func (r *dirRegistry) keyPackageLifetime(config <-chan struct{}, dataDir string) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var lt time.Duration
	found := false
	for e := range r.entries {
		if e.config != config || e.dataDir != dataDir {
			continue
		}
		v := e.maxKeyPackageLifetime
		if v == 0 {
			v = mls.DefaultMaxLifetime
		}
		if !found || (v >= 0 && (lt < 0 || v < lt)) {
			lt, found = v, true
		}
	}
	return lt
}

// serviceHolders records, per data directory, the configs that hold its
// service in servicePool: a gateway's from its Provision, a mimi_local's
// from its join, each as often as it holds it. A mimi_local that joins at
// its first request must not join a service that only a config Caddy has
// not started holds: that config opened it with its options (its store,
// its keys), and when Caddy rejects it and cleans it up, the service would
// stay open, held by the running mimi_local, with the rejected options,
// which Apply cannot put back (a store is chosen at open).
var serviceHolders = &holderRegistry{dirs: map[string]map[<-chan struct{}]int{}}

// errServiceNotRunning is the error of joinService while the service of
// the directory is held only by configs other than the joiner's, none of
// them the running one: a config Caddy is loading opened it. The join is
// tried again at the next request.
var errServiceNotRunning = errors.New("the provider service is held only by a configuration that Caddy has not started; retry once the reload ends")

// holderRegistry is the type of serviceHolders.
type holderRegistry struct {
	mu   sync.Mutex
	dirs map[string]map[<-chan struct{}]int
}

// hold records that config holds the service of dir once more.
func (r *holderRegistry) hold(dir string, config <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holdLocked(dir, config)
}

// holdLocked is hold, with r.mu held.
func (r *holderRegistry) holdLocked(dir string, config <-chan struct{}) {
	m := r.dirs[dir]
	if m == nil {
		m = map[<-chan struct{}]int{}
		r.dirs[dir] = m
	}
	m[config]++
}

// release records that config holds the service of dir once less.
func (r *holderRegistry) release(dir string, config <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.dirs[dir]
	if m[config]--; m[config] <= 0 {
		delete(m, config)
	}
	if len(m) == 0 {
		delete(r.dirs, dir)
	}
}

// mayJoinLocked reports whether a handler of config may join the service
// of dir as it is, with r.mu held: when nothing holds it (it is opened
// with the defaults), when config itself holds it, when no config runs
// (the first config loads, or Caddy stops), or when the running config
// (caddy.ActiveContext, set once a config's apps started) holds it. A
// service held only by a config Caddy is still loading, or is cleaning up
// after rejecting it, is refused.
func (r *holderRegistry) mayJoinLocked(dir string, config <-chan struct{}) bool {
	m := r.dirs[dir]
	if len(m) == 0 || m[config] > 0 {
		return true
	}
	active := configOf(caddy.ActiveContext())
	return active == nil || m[active] > 0
}
