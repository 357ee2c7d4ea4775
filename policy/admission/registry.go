package admission

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// zones keeps rate-limit zones across Policies, keyed by scope, zone name,
// key kind and bound on keys (registryKey): Caddy provisions a new
// configuration before it cleans up the old one, so the new Policy finds
// the old zone and its buckets.
var zones = &registry{m: map[string]*zoneEntry{}}

// registry is a reference-counted map of shared zones.
type registry struct {
	mu sync.Mutex
	m  map[string]*zoneEntry
}

type zoneEntry struct {
	zone *ratelimit.Zone
	refs int
	// committed are the Policies holding the zone that committed their
	// settings to it, oldest first: the settings in force are the last
	// one's (or, while none has committed, those the zone was created
	// with).
	committed []*Policy
}

// registryKey is the key of cfg's zone in the registry: its scope and name,
// and what a built zone cannot change in place, its key kind (its buckets
// are keyed on it) and its bound on keys (ratelimit sizes its shards by
// it). A reload that changes either builds a zone of its own, with empty
// buckets, beside the old one, which the old Policy holds until it
// releases it, as it would a zone of another name: acquire and release
// need no other case.
func registryKey(scope string, cfg *ZoneConfig) string {
	maxKeys := cfg.MaxKeys
	if maxKeys == 0 {
		maxKeys = ratelimit.DefaultMaxKeys
	}
	return scope + "\x00" + cfg.Name + "\x00" + cfg.Key.String() + "\x00" + strconv.Itoa(maxKeys)
}

// acquire returns the zone of cfg in scope, creating it with cfg's rate,
// burst and Redis settings on first use. An existing zone of the same
// registryKey, which a running Policy may use, is not changed: acquire
// returns with it an update to cfg's settings, prepared (its Redis
// connection built, unless the setting is unchanged) but not applied,
// which the caller applies once its configuration is in force, or
// discards; the update is nil for a new zone. Every successful acquire is
// paired with a release of the returned key. logger receives the zone's
// Redis fallbacks and recoveries.
func (r *registry) acquire(scope string, cfg *ZoneConfig, logger *zap.Logger) (*ratelimit.Zone, string, *ratelimit.Update, error) {
	key := registryKey(scope, cfg)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.m[key]; e != nil {
		u, err := e.zone.PrepareUpdate(cfg.Rate, cfg.Burst, cfg.Redis, logger)
		if err != nil {
			return nil, "", nil, fmt.Errorf("updating the zone: %w", err)
		}
		e.refs++
		return e.zone, key, u, nil
	}
	z, err := ratelimit.NewZone(cfg.Name, ratelimit.Config{Rate: cfg.Rate, Burst: cfg.Burst, MaxKeys: cfg.MaxKeys})
	if err != nil {
		return nil, "", nil, err
	}
	if err := z.SetRedis(cfg.Redis, logger); err != nil {
		return nil, "", nil, errors.Join(err, z.Destruct())
	}
	r.m[key] = &zoneEntry{zone: z, refs: 1}
	return z, key, nil, nil
}

// commit applies updates, p's prepared settings of the zones it reused,
// and records p as the newest committed Policy of each zone at keys, under
// the registry's lock, so that a concurrent release finds the settings in
// force and the order they were committed in agreeing.
func (r *registry) commit(p *Policy, keys []string, updates []*ratelimit.Update) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, u := range updates {
		if err := u.Apply(); err != nil {
			errs = append(errs, fmt.Errorf("applying rate-limit settings: %w", err))
		}
	}
	for _, key := range keys {
		if e := r.m[key]; e != nil {
			e.committed = append(e.committed, p)
		}
	}
	return errors.Join(errs...)
}

// release drops p's reference to the zone at key, and the zone with the
// last one. When p's settings are in force on a zone that other Policies
// still hold, the newest committed one of them puts its own back: rate,
// burst (the buckets keep their tokens, capped) and Redis setting.
func (r *registry) release(key string, p *Policy) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.m[key]
	if e == nil {
		return fmt.Errorf("releasing rate-limit zone %q: not held", key)
	}
	err := e.uncommitLocked(key, p)
	if e.refs--; e.refs > 0 {
		return err
	}
	delete(r.m, key)
	return errors.Join(err, e.zone.Destruct())
}

// uncommit drops p from the committed Policies of the zone at key, which
// p keeps holding: when p's settings are in force and other Policies
// committed theirs, the newest of them puts its own back.
func (r *registry) uncommit(key string, p *Policy) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.m[key]; e != nil {
		return e.uncommitLocked(key, p)
	}
	return nil
}

// uncommitLocked is uncommit of e, the zone at key, with the registry's
// lock held.
func (e *zoneEntry) uncommitLocked(key string, p *Policy) error {
	i := slices.Index(e.committed, p)
	if i < 0 {
		return nil
	}
	newest := i == len(e.committed)-1
	e.committed = slices.Delete(e.committed, i, i+1)
	if !newest || len(e.committed) == 0 {
		return nil
	}
	s := e.committed[len(e.committed)-1].settings[key]
	err := e.zone.UpdateLimits(s.rate, s.burst)
	if err == nil {
		err = e.zone.SetRedis(s.redis, s.logger)
	}
	if err != nil {
		return fmt.Errorf("restoring the settings of rate-limit zone %s: %w", e.zone.Name(), err)
	}
	return nil
}

// refs returns the references held on the zone at key (0 when absent).
func (r *registry) refs(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.m[key]; e != nil {
		return e.refs
	}
	return 0
}

// each calls f for every live zone, under the registry lock.
func (r *registry) each(f func(*ratelimit.Zone)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.m {
		f(e.zone)
	}
}
