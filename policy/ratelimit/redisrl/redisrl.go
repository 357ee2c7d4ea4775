// Package redisrl is the Redis client of ratelimit's Redis zones, on
// go-redis: New makes a ratelimit.RedisClient that runs the zone's GCRA
// as a Lua script, loaded with EVALSHA and EVAL on NOSCRIPT, on the Redis
// server's clock (NewCallerClock, for tests, on the caller's). It is kept
// out of package ratelimit so that a build without Redis zones does not
// link go-redis: a build gets it by registering New with
// ratelimit.RegisterRedis, as package caddymodule/cluster does.
package redisrl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/caddy-mimi/caddy-mimi/policy/ratelimit"
)

// gcra is the generic cell rate algorithm over the keys of KEYS, all or
// none, atomic as a Lua script. Each key holds its theoretical arrival time
// (TAT) in microseconds.
// ARGV: now (µs), or "" for Redis's clock (TIME), the emission interval
// T = 1/rate (µs) and the burst b. A key admits an event when, after it,
// TAT - now <= b*T: the same decision as a token bucket of b tokens
// refilled at rate, full when new, whose tokens at now are
// b - (TAT - now)/T. A refused event changes nothing. The key expires when
// TAT passes, when its bucket is full again and equivalent to an absent
// one, plus a second: Redis counts the TTL on its own clock, so without the
// slack a caller's clock (NewCallerClock) behind the writer's would find the
// key gone while its bucket is not yet full. The script reads every key's
// TAT and decides each key, then writes them all only when every key
// admits its event: a refusal changes nothing and answers the longest wait
// of the keys that refused, so that every key admits an event by then.
// The keys must be distinct. The reply is {1, 0} or {0, µs until one event would
// be admitted at every key}. TIME before a write needs effects
// replication, the default since Redis 5 and asked for on older servers.
var gcra = redis.NewScript(`
local now
if ARGV[1] == '' then
  if redis.replicate_commands then redis.replicate_commands() end
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
else
  now = tonumber(ARGV[1])
end
local t = tonumber(ARGV[2])
local tau = t * tonumber(ARGV[3])
local news = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new = tat + t
  if new - now > tau then
    local w = math.ceil(new - now - tau)
    if w > wait then wait = w end
  end
  news[i] = new
end
if wait > 0 then
  return {0, wait}
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.17g', news[i]), 'PX', math.ceil((news[i] - now) / 1000) + 1000)
end
return {1, 0}
`)

// Client is a ratelimit.RedisClient on one go-redis connection pool.
type Client struct {
	client *redis.Client
	// callerClock runs the script at the now Allow is given rather than
	// at Redis's TIME (NewCallerClock).
	callerClock bool
}

// New makes the client of cfg, whose zero fields hold their defaults (the
// zone fills them in before calling it). It connects lazily, on the first
// call; it never fails. It is a ratelimit.NewRedisClient. Its script counts
// time on Redis's clock (TIME), not on the now Allow is given, so that
// gateways whose clocks differ share each key's budget exactly.
func New(cfg ratelimit.RedisConfig) (ratelimit.RedisClient, error) {
	return newClient(cfg, false), nil
}

// NewCallerClock is New whose script counts time on the now Allow is given
// instead of Redis's clock, as a local zone does: deterministic under a
// fake clock, for tests. Gateways whose clocks differ by d share a key
// fairly only to within d*rate events with it.
func NewCallerClock(cfg ratelimit.RedisConfig) (ratelimit.RedisClient, error) {
	return newClient(cfg, true), nil
}

func newClient(cfg ratelimit.RedisConfig, callerClock bool) *Client {
	return &Client{callerClock: callerClock, client: redis.NewClient(&redis.Options{
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
	})}
}

// Allow implements ratelimit.RedisClient with the gcra script, at Redis's
// TIME unless the client is NewCallerClock's.
func (c *Client) Allow(ctx context.Context, key string, now time.Time, rate float64, burst int) (bool, time.Duration, error) {
	return c.run(ctx, gcra, []string{key}, now, rate, burst)
}

// AllowAll implements ratelimit.RedisClient with the gcra script, at
// Redis's TIME unless the client is NewCallerClock's. The keys, distinct,
// are in one script call: a Redis Cluster would need them in one hash
// slot, but the client talks to one server.
func (c *Client) AllowAll(ctx context.Context, keys []string, now time.Time, rate float64, burst int) (bool, time.Duration, error) {
	return c.run(ctx, gcra, keys, now, rate, burst)
}

// run runs script over keys and reads its {admitted, wait} reply.
func (c *Client) run(ctx context.Context, script *redis.Script, keys []string, now time.Time, rate float64, burst int) (bool, time.Duration, error) {
	interval := 1e6 / rate // µs
	at := ""
	if c.callerClock {
		at = strconv.FormatInt(now.UnixMicro(), 10)
	}
	res, err := script.Run(ctx, c.client, keys,
		at, strconv.FormatFloat(interval, 'g', -1, 64), burst).Int64Slice()
	if err != nil {
		if errors.Is(err, redis.ErrClosed) {
			return false, 0, fmt.Errorf("%w: %w", ratelimit.ErrRedisClosed, err)
		}
		return false, 0, err
	}
	if len(res) != 2 {
		return false, 0, fmt.Errorf("the rate limit script answered %d values", len(res))
	}
	if res[0] == 1 {
		return true, 0, nil
	}
	return false, micros(res[1]), nil
}

// micros is n microseconds, saturated at the longest Duration rather than
// wrapped: the script's answer comes from another process, and the zone
// caps the retry it gives in any case. (ratelimit.MinRate keeps a zone's
// waits within a Duration.)
func micros(n int64) time.Duration {
	if n > math.MaxInt64/int64(time.Microsecond) {
		return math.MaxInt64
	}
	return time.Duration(n) * time.Microsecond
}

// Close closes the connections; later calls fail with
// ratelimit.ErrRedisClosed.
func (c *Client) Close() error { return c.client.Close() }

// Interface guards.
var (
	_ ratelimit.RedisClient    = (*Client)(nil)
	_ ratelimit.NewRedisClient = New
	_ ratelimit.NewRedisClient = NewCallerClock
)
