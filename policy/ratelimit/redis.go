package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Defaults of RedisConfig.
const (
	// DefaultRedisTimeout bounds each Redis call (dial included): past it
	// the zone decides locally.
	DefaultRedisTimeout = 5 * time.Millisecond
	// DefaultRedisPrefix starts every key the zones write.
	DefaultRedisPrefix = "mimi:rl:"
	// DefaultRedisRetry is how often, at most, a zone that fell back to
	// its local buckets tries Redis again.
	DefaultRedisRetry = time.Second
	// MaxRedisRate is the highest rate, in events per second, of a zone in
	// Redis. The script keeps times as doubles in microseconds since 1970,
	// which resolve a quarter of a microsecond until 2041: each event's
	// interval 1/rate is rounded to that grid, so a rate r is off by at
	// most 0.125e-6*r of itself (0.0125% at 1000/s, 1.25% at 100000/s;
	// exact when 1/r is a multiple of 0.25 µs, as at 1e6/s).
	MaxRedisRate = 1e6
)

// RedisConfig makes a zone keep its buckets in Redis, shared by every
// process that uses the same server, prefix and zone name. It is
// comparable: a reload with an equal RedisConfig keeps the connection.
type RedisConfig struct {
	// Addr is the server's host:port. Required.
	Addr string
	// Password authenticates with AUTH; empty: none.
	Password string
	// DB is the database number (SELECT); default 0.
	DB int
	// Timeout bounds each call, the dial included; default
	// DefaultRedisTimeout.
	Timeout time.Duration
	// Prefix starts every key, followed by the zone name, ":" and the
	// limited key (hashed like a local key when longer than MaxKeyLen);
	// default DefaultRedisPrefix. Give providers sharing one Redis
	// different prefixes.
	Prefix string
	// Retry is how often, at most, a zone decided locally tries Redis
	// again; default DefaultRedisRetry.
	Retry time.Duration
}

func (c RedisConfig) withDefaults() RedisConfig {
	if c.Timeout == 0 {
		c.Timeout = DefaultRedisTimeout
	}
	if c.Prefix == "" {
		c.Prefix = DefaultRedisPrefix
	}
	if c.Retry == 0 {
		c.Retry = DefaultRedisRetry
	}
	return c
}

// Validate checks c without connecting.
func (c RedisConfig) Validate() error {
	if c.Addr == "" {
		return errors.New("redis: the address is required")
	}
	if c.DB < 0 {
		return fmt.Errorf("redis: db %d must not be negative", c.DB)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("redis: timeout %s must be positive", c.Timeout)
	}
	if c.Retry < 0 {
		return fmt.Errorf("redis: retry %s must be positive", c.Retry)
	}
	return nil
}

// ErrRedisClosed is wrapped by the error of a call on a RedisClient that
// was closed: a call racing with a reload that replaced the client, which
// says nothing of the server's health.
var ErrRedisClosed = errors.New("redis client closed")

// RedisClient decides a zone's events in Redis. A Redis client package
// provides it (RegisterRedis), so that a build without Redis zones does not
// link a Redis client. It must be safe for concurrent use.
type RedisClient interface {
	// Allow runs the GCRA (see the package doc) over the Redis key key at
	// now, or at the Redis server's time (one clock for every process),
	// for a zone of rate events per second and burst: it admits the
	// event and records it, or refuses it and says how long until one
	// event would be admitted, to the microsecond. ctx bounds the call.
	// A call after Close fails with an error wrapping ErrRedisClosed.
	Allow(ctx context.Context, key string, now time.Time, rate float64, burst int) (ok bool, wait time.Duration, err error)
	// AllowAll is Allow over several distinct Redis keys, all or none,
	// atomically: it admits the event of every key and records them all,
	// or, when any key would refuse it, records nothing and says how long
	// until every key would admit one, to the microsecond.
	AllowAll(ctx context.Context, keys []string, now time.Time, rate float64, burst int) (ok bool, wait time.Duration, err error)
	// Close closes the connections.
	Close() error
}

// NewRedisClient makes the client of cfg, whose zero fields hold their
// defaults. It connects lazily: a server that is down makes calls fail,
// not the constructor.
type NewRedisClient func(cfg RedisConfig) (RedisClient, error)

// ClusterPackage is the package whose import registers the Redis client
// (RegisterRedis) in a Caddy build; errors name it.
const ClusterPackage = "github.com/caddy-mimi/caddy-mimi/caddymodule/cluster"

var (
	redisNewMu sync.Mutex
	redisNew   NewRedisClient
)

// RegisterRedis makes newClient the maker of every Redis zone's client
// (SetRedis), so that only a build that imports a Redis client package
// (package redisrl, registered by ClusterPackage) links one. It is meant
// for init functions, and panics if newClient is nil or a client is
// already registered.
func RegisterRedis(newClient NewRedisClient) {
	if newClient == nil {
		panic("ratelimit: RegisterRedis of a nil constructor")
	}
	redisNewMu.Lock()
	defer redisNewMu.Unlock()
	if redisNew != nil {
		panic("ratelimit: RegisterRedis called twice")
	}
	redisNew = newClient
}

// registeredRedis returns the registered constructor, or an error that
// names the package to add to the build.
func registeredRedis() (NewRedisClient, error) {
	redisNewMu.Lock()
	defer redisNewMu.Unlock()
	if redisNew == nil {
		return nil, fmt.Errorf("redis: this build has no Redis client: build with %s (xcaddy build --with %[1]s, or CLUSTER=1 ./xcaddy.sh)", ClusterPackage)
	}
	return redisNew, nil
}

// redisBackend is a zone's connection to Redis and its health.
type redisBackend struct {
	cfg    RedisConfig
	client RedisClient
	prefix string // cfg.Prefix + zone name + ":"
	logger *zap.Logger
	zone   string
	// healthy is false from a failed call until one succeeds.
	healthy atomic.Bool
	// nextTry is when (unix ns, wall clock) an unhealthy backend may be
	// tried again.
	nextTry atomic.Int64
}

func newRedisBackend(zone string, cfg RedisConfig, newClient NewRedisClient, logger *zap.Logger) (*redisBackend, error) {
	cfg = cfg.withDefaults()
	client, err := newClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", cfg.Addr, err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	b := &redisBackend{cfg: cfg, client: client, prefix: cfg.Prefix + zone + ":", logger: logger, zone: zone}
	b.healthy.Store(true)
	return b, nil
}

// allow decides key (the stored form: hashed when long) at now in Redis,
// within cfg.Timeout; a refusal's retry is the wait rounded up to whole
// seconds, as a local bucket's.
func (b *redisBackend) allow(key string, now time.Time, l *limits) (bool, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
	ok, wait, err := b.client.Allow(ctx, b.prefix+key, now, float64(l.rate), l.burst)
	if err != nil || ok {
		return ok, 0, err
	}
	return false, roundRedisWait(wait), nil
}

// allowAll is allow over several keys (stored forms, distinct), all or
// none.
func (b *redisBackend) allowAll(keys []string, now time.Time, l *limits) (bool, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = b.prefix + k
	}
	ok, wait, err := b.client.AllowAll(ctx, full, now, float64(l.rate), l.burst)
	if err != nil || ok {
		return ok, 0, err
	}
	return false, roundRedisWait(wait), nil
}

// roundRedisWait rounds a wait that Redis counted in whole microseconds up
// to whole seconds, at least 1 s, as a local bucket's retry.
func roundRedisWait(wait time.Duration) time.Duration {
	return wholeSeconds(float64(wait/time.Microsecond) / 1e6)
}

// try reports whether a call should go to Redis: always when healthy, else
// once per Retry interval (one caller wins each interval).
func (b *redisBackend) try() bool {
	if b.healthy.Load() {
		return true
	}
	n := time.Now().UnixNano()
	next := b.nextTry.Load()
	return n >= next && b.nextTry.CompareAndSwap(next, n+int64(b.cfg.Retry))
}

// failed records a failed call; the transition to unhealthy is logged, so
// at most one line per Retry interval. A call on a backend that SetRedis
// closed meanwhile (a reload) says nothing of the server's health.
func (b *redisBackend) failed(err error) {
	if errors.Is(err, ErrRedisClosed) {
		return
	}
	if b.healthy.CompareAndSwap(true, false) {
		b.nextTry.Store(time.Now().UnixNano() + int64(b.cfg.Retry))
		b.logger.Warn("redis rate limit failed; limiting locally until it answers",
			zap.String("zone", b.zone), zap.String("redis", b.cfg.Addr),
			zap.Duration("retry_every", b.cfg.Retry), zap.Error(err))
	}
}

// succeeded records a successful call.
func (b *redisBackend) succeeded() {
	if b.healthy.CompareAndSwap(false, true) {
		b.logger.Info("redis rate limit answers again; limiting cluster-wide",
			zap.String("zone", b.zone), zap.String("redis", b.cfg.Addr))
	}
}

// close closes the connections.
func (b *redisBackend) close() error { return b.client.Close() }

// SetRedis makes the zone keep its buckets in Redis (cfg != nil) or in
// this process (cfg == nil). A zone in Redis falls back to its local
// buckets, at once, when a call fails or exceeds cfg.Timeout, and returns
// to Redis when a call, tried once per cfg.Retry, succeeds again. An equal
// cfg keeps the current connection; a different one replaces it. logger
// receives the transitions (nil: none).
func (z *Zone) SetRedis(cfg *RedisConfig, logger *zap.Logger) error {
	r, err := z.prepareRedis(cfg, logger)
	if err != nil {
		return err
	}
	return z.applyRedis(r, logger)
}

// redisChange is a Redis setting of a zone prepared by prepareRedis: the
// setting (nil: local buckets) and, when it differs from the zone's at
// preparation, its backend, built but not yet in use.
type redisChange struct {
	cfg     *RedisConfig
	backend *redisBackend
}

// prepareRedis validates cfg and builds its backend unless the zone's
// backend already has cfg; it does not change the zone.
func (z *Zone) prepareRedis(cfg *RedisConfig, logger *zap.Logger) (redisChange, error) {
	if cfg == nil {
		return redisChange{}, nil
	}
	if err := cfg.Validate(); err != nil {
		return redisChange{}, fmt.Errorf("zone %q: %w", z.name, err)
	}
	c := *cfg
	if old := z.redis.Load(); old != nil && old.cfg == c.withDefaults() {
		return redisChange{cfg: &c}, nil
	}
	newClient, err := registeredRedis()
	if err != nil {
		return redisChange{}, fmt.Errorf("zone %q: %w", z.name, err)
	}
	b, err := newRedisBackend(z.name, c, newClient, logger)
	if err != nil {
		return redisChange{}, fmt.Errorf("zone %q: %w", z.name, err)
	}
	return redisChange{cfg: &c, backend: b}, nil
}

// applyRedis puts r in force, closing the backend it replaces. A setting
// prepared as unchanged whose zone's backend changed since gets a backend
// of its own, built with logger.
func (z *Zone) applyRedis(r redisChange, logger *zap.Logger) error {
	z.redisMu.Lock()
	defer z.redisMu.Unlock()
	old := z.redis.Load()
	b := r.backend
	if r.cfg != nil && b == nil {
		if old != nil && old.cfg == r.cfg.withDefaults() {
			return nil
		}
		newClient, err := registeredRedis()
		if err != nil {
			return fmt.Errorf("zone %q: %w", z.name, err)
		}
		if b, err = newRedisBackend(z.name, *r.cfg, newClient, logger); err != nil {
			return fmt.Errorf("zone %q: %w", z.name, err)
		}
	}
	z.redis.Store(b)
	if old != nil {
		return old.close()
	}
	return nil
}

// Update is a change of a zone's rate, burst and Redis setting that
// PrepareUpdate checked and made ready without changing the zone, so that
// a reload can prepare its changes while the running configuration still
// uses the zone and put them in force only once the reload can no longer
// fail. Exactly one of Apply and Discard must be called.
type Update struct {
	z      *Zone
	limits *limits
	redis  redisChange
	logger *zap.Logger
	done   bool
}

// PrepareUpdate checks ratePerSecond, burst and redis (nil: local
// buckets) and builds the Redis backend they need, without changing the
// zone: Apply puts them in force, as UpdateLimits and SetRedis would;
// Discard drops them. logger receives the new backend's fallbacks and
// recoveries.
func (z *Zone) PrepareUpdate(ratePerSecond float64, burst int, redis *RedisConfig, logger *zap.Logger) (*Update, error) {
	if err := checkLimits(ratePerSecond, burst); err != nil {
		return nil, fmt.Errorf("zone %q: %w", z.name, err)
	}
	r, err := z.prepareRedis(redis, logger)
	if err != nil {
		return nil, err
	}
	return &Update{z: z, limits: &limits{rate: rate.Limit(ratePerSecond), burst: burst}, redis: r, logger: logger}, nil
}

// Apply puts the update in force: the zone and its buckets take its rate
// and burst, and its Redis setting (an unchanged one keeps its
// connection). A second call does nothing.
func (u *Update) Apply() error {
	if u.done {
		return nil
	}
	u.done = true
	u.z.applyLimits(u.limits)
	return u.z.applyRedis(u.redis, u.logger)
}

// Discard drops an update not applied, closing the Redis backend it
// built. A call after Apply or Discard does nothing.
func (u *Update) Discard() error {
	if u.done {
		return nil
	}
	u.done = true
	if b := u.redis.backend; b != nil {
		return b.close()
	}
	return nil
}

// allowRedis decides in Redis when the zone has a healthy (or due to be
// retried) backend; done is false when the caller must decide locally.
// kb or ks is the key as Allow and AllowBytes store it.
func (z *Zone) allowRedis(b *redisBackend, kb []byte, ks string, now time.Time) (ok bool, retry time.Duration, done bool) {
	l := z.limits.Load()
	if math.IsInf(float64(l.rate), 1) {
		return true, 0, true
	}
	if !b.try() {
		z.redisFallbacks.Add(1)
		return false, 0, false
	}
	if kb != nil {
		ks = string(kb)
	}
	ok, retry, err := b.allow(ks, now, l)
	if err != nil {
		b.failed(err)
		z.redisFallbacks.Add(1)
		return false, 0, false
	}
	b.succeeded()
	return ok, retry, true
}

// allowAllRedis is allowRedis for AllowAll, over keys in their stored
// form, without duplicates.
func (z *Zone) allowAllRedis(b *redisBackend, keys []string, now time.Time) (ok bool, retry time.Duration, done bool) {
	l := z.limits.Load()
	if math.IsInf(float64(l.rate), 1) {
		return true, 0, true
	}
	if !b.try() {
		z.redisFallbacks.Add(1)
		return false, 0, false
	}
	ok, retry, err := b.allowAll(keys, now, l)
	if err != nil {
		b.failed(err)
		z.redisFallbacks.Add(1)
		return false, 0, false
	}
	b.succeeded()
	return ok, retry, true
}
