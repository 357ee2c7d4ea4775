package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
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

// gcra is the generic cell rate algorithm over one key, atomic as a Lua
// script. KEYS[1] holds the theoretical arrival time (TAT) in microseconds.
// ARGV: now (µs, the caller's clock), the emission interval T = 1/rate
// (µs) and the burst b. A key admits an event when, after it, TAT - now <=
// b*T: the same decision as a token bucket of b tokens refilled at rate,
// full when new, whose tokens at now are b - (TAT - now)/T. A refused event
// changes nothing. The key expires when TAT passes, when its bucket is full
// again and equivalent to an absent one, plus a second:
// Redis counts the TTL on its own clock, so without the slack a process
// whose clock is behind the writer's would find the key gone while its
// bucket is not yet full. The reply is {1, 0} or {0, µs until one event
// would be admitted}.
var gcra = redis.NewScript(`
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local tau = t * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + t
if new - now > tau then
  return {0, math.ceil(new - now - tau)}
end
redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return {1, 0}
`)

// redisBackend is a zone's connection to Redis and its health.
type redisBackend struct {
	cfg    RedisConfig
	client *redis.Client
	prefix string // cfg.Prefix + zone name + ":"
	logger *zap.Logger
	zone   string
	// healthy is false from a failed call until one succeeds.
	healthy atomic.Bool
	// nextTry is when (unix ns, wall clock) an unhealthy backend may be
	// tried again.
	nextTry atomic.Int64
}

func newRedisBackend(zone string, cfg RedisConfig, logger *zap.Logger) *redisBackend {
	cfg = cfg.withDefaults()
	client := redis.NewClient(&redis.Options{
		Addr:     cfg.Addr,
		Password: cfg.Password,
		DB:       cfg.DB,
		// RESP2 without CLIENT SETINFO nor maintenance notifications:
		// nothing but AUTH and SELECT on a new connection.
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		DialTimeout:              cfg.Timeout,
		ReadTimeout:              cfg.Timeout,
		WriteTimeout:             cfg.Timeout,
		ContextTimeoutEnabled:    true,
		PoolTimeout:              cfg.Timeout,
		// A failed call is decided locally at once, not retried.
		MaxRetries:    -1,
		DialerRetries: 1,
	})
	if logger == nil {
		logger = zap.NewNop()
	}
	b := &redisBackend{cfg: cfg, client: client, prefix: cfg.Prefix + zone + ":", logger: logger, zone: zone}
	b.healthy.Store(true)
	return b
}

// allow runs the GCRA for key (the stored form: hashed when long) at now.
func (b *redisBackend) allow(key string, now time.Time, l *limits) (bool, time.Duration, error) {
	interval := 1e6 / float64(l.rate) // µs
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
	res, err := gcra.Run(ctx, b.client, []string{b.prefix + key},
		now.UnixMicro(), strconv.FormatFloat(interval, 'g', -1, 64), l.burst).Int64Slice()
	if err != nil {
		return false, 0, err
	}
	if len(res) != 2 {
		return false, 0, fmt.Errorf("the rate limit script answered %d values", len(res))
	}
	if res[0] == 1 {
		return true, 0, nil
	}
	secs := math.Ceil(float64(res[1])/1e6 - 1e-9)
	if secs < 1 {
		secs = 1
	}
	if secs > 1<<31 {
		secs = 1 << 31
	}
	return false, time.Duration(secs) * time.Second, nil
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
	if errors.Is(err, redis.ErrClosed) {
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
	z.redisMu.Lock()
	defer z.redisMu.Unlock()
	old := z.redis.Load()
	if cfg == nil {
		z.redis.Store(nil)
		if old != nil {
			return old.close()
		}
		return nil
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("zone %q: %w", z.name, err)
	}
	if old != nil && old.cfg == cfg.withDefaults() {
		return nil
	}
	z.redis.Store(newRedisBackend(z.name, *cfg, logger))
	if old != nil {
		return old.close()
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
