// Package ratelimit is a keyed token-bucket limiter built on
// golang.org/x/time/rate, for caddy-mimi's named limit zones. It has no
// Caddy dependency.
//
// A Zone holds one rate.Limiter per key (remote IP prefix, sending provider,
// group id, ...) in a sharded map. Memory stays bounded with millions of
// distinct keys:
//
//   - A bucket that has refilled to its burst is indistinguishable from a
//     new one, so it is dropped losslessly by a sweep that each shard runs
//     at most once per SweepInterval, when it inserts a key.
//   - The number of keys has a hard cap (Config.MaxKeys). When a shard is
//     full and nothing can be dropped losslessly, inserting evicts the least
//     recently used of a few sampled buckets (as Redis does); an evicted key
//     starts over with a full bucket. Stats counts those evictions.
//   - Keys longer than MaxKeyLen bytes are stored as their SHA-256, so a
//     bucket costs at most a fixed number of bytes whatever the key.
//
// AllowAll spends a token of several keys at once, all or none, for a
// request that needs the budget of each (the KeyPackages of several
// users): a refusal leaves every key's budget as it was. AllowBytesThen
// does the same for one key of a zone and a second limit (another zone's
// Allow): a request refused by either spends nothing of the other (in a
// local zone; see there for Redis). ReturnN gives back the tokens an
// AllowN took, for a request refused afterwards for another reason.
//
// A Zone can keep its buckets in Redis instead (SetRedis), so that several
// processes share one budget per key: a GCRA (generic cell rate algorithm)
// run atomically by a Lua script, loaded with EVALSHA and EVAL on NOSCRIPT.
// The client that runs it is registered (RegisterRedis) by package redisrl's
// user, so that only builds with Redis zones link a Redis client. It makes the same decisions, with the same Retry-After, as the local
// buckets (TestRedisMatchesLocal), except that:
//
//   - Redis keeps times in microseconds as doubles: the rate is at most
//     MaxRedisRate, and rounded (see there);
//   - the time is Redis's clock (TIME), not the caller's now, with
//     redisrl.New's clients: every process using a key counts on one clock,
//     so processes whose clocks differ still share it exactly. Clients of
//     redisrl.NewCallerClock, for tests, pass the caller's now instead: the
//     same Allow(key, now) contract as local zones, testable with a fake
//     clock, and deterministic, but processes whose clocks differ by d
//     share a key fairly only up to d (a process ahead by d may spend up to
//     d*rate events early, never more than burst; one behind by d finds
//     d*rate fewer), and where a local bucket takes a now earlier than its
//     last one as no time elapsed, the script counts from it;
//   - Redis stores the theoretical arrival time, not a token count, so a
//     new rate or burst (UpdateLimits) applies to the debt in time: tokens
//     become burst' - (TAT - now)*rate', where a local bucket keeps its
//     token count;
//   - the cap MaxKeys and the sweep do not apply: each key expires (PX)
//     a second after its bucket is full again, equivalent to an absent
//     one. Redis counts that TTL on its own clock, so with the caller's
//     clock keys outlive skews between processes of up to a second. (A
//     test clock that runs slower than the real one sees keys vanish
//     early.)
//
// A Redis zone decides locally, with its own buckets, when a call fails or
// takes longer than RedisConfig.Timeout, and for RedisConfig.Retry after
// that, then tries Redis again; Stats counts those fallbacks. While it
// falls back, each process limits on its own: n processes admit up to n
// times the budget, and the local buckets start full.
//
// A Zone is meant to outlive configuration reloads: the Caddy layer keeps
// zones in a caddy.UsagePool keyed by zone name (*Zone implements
// caddy.Destructor through its Destruct method) and calls UpdateLimits when
// the new configuration changes rate or burst.
package ratelimit

import (
	"crypto/sha256"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Defaults for zero Config fields.
const (
	DefaultMaxKeys = 1 << 20
	DefaultShards  = 64
	// SweepInterval is how often, at most, a shard looks for buckets that
	// have refilled and can be dropped.
	SweepInterval = 10 * time.Second
	// MaxKeyLen is the longest key stored as is; longer keys are hashed.
	MaxKeyLen = 64
	// evictionSample is how many buckets a full shard samples to pick the
	// least recently used one to evict.
	evictionSample = 8
)

// MinRate is the least rate of a zone, in events per second: one event in
// about 32 years. Below it a bucket's refill time no longer fits the
// durations its arithmetic uses (time.Duration, about 292 years): a new
// local bucket would not be full.
const MinRate = 1e-9

// Config configures a Zone.
type Config struct {
	// Rate is the sustained rate in events per second; must be at least
	// MinRate (math.Inf(1) means unlimited).
	Rate float64
	// Burst is the bucket size: how many events a key may spend at once.
	// Must be at least 1.
	Burst int
	// MaxKeys is the hard cap on the number of keys held; default 1<<20
	// (about 200 MiB at most). Must be at least Shards.
	MaxKeys int
	// Shards is the number of independently locked shards; rounded up to a
	// power of two; default 64.
	Shards int
}

// Stats are counters of a Zone.
type Stats struct {
	// Keys is the number of buckets held now.
	Keys int
	// Evictions counts buckets dropped before they had refilled, because a
	// shard was at its cap. A steady rise means MaxKeys is too small for
	// the traffic (or an attacker is spraying keys).
	Evictions uint64
	// Redis says the zone keeps its buckets in Redis (SetRedis).
	Redis bool
	// RedisHealthy says Redis answered the last call (or none was made
	// yet); false while the zone decides locally.
	RedisHealthy bool
	// RedisFallbacks counts the events decided locally because Redis
	// failed, timed out or had failed less than a retry interval before.
	RedisFallbacks uint64
}

// Zone is a named set of token buckets sharing one rate and burst. It is
// safe for concurrent use.
type Zone struct {
	name     string
	limits   atomic.Pointer[limits]
	seed     maphash.Seed
	shards   []shard
	mask     uint64
	perShard int
	evicted  atomic.Uint64

	// allMu serializes AllowAll's and AllowBytesThen's local takes: the
	// only reservations of a bucket left waiting, even for a moment, are
	// then their own, so that cancelling them gives back every token they
	// took.
	allMu sync.Mutex

	// redis, when set, holds the buckets instead of shards, which then
	// serve as the fallback (SetRedis).
	redis          atomic.Pointer[redisBackend]
	redisMu        sync.Mutex // serializes SetRedis
	redisFallbacks atomic.Uint64
}

type limits struct {
	rate  rate.Limit
	burst int
}

type shard struct {
	mu        sync.Mutex
	m         map[string]*bucket
	lastSweep int64 // unix nanoseconds
	_         [40]byte
}

type bucket struct {
	lim rate.Limiter
	// lastSeen is the latest now any caller passed for this bucket (unix
	// nanoseconds), set before the limiter is used, so it is never behind
	// the limiter's own clock.
	lastSeen atomic.Int64
}

// touch raises lastSeen to n.
func (b *bucket) touch(n int64) {
	for {
		old := b.lastSeen.Load()
		if n <= old || b.lastSeen.CompareAndSwap(old, n) {
			return
		}
	}
}

func checkLimits(r float64, burst int) error {
	if math.IsNaN(r) || r <= 0 {
		return fmt.Errorf("rate %v must be positive", r)
	}
	if r < MinRate {
		return fmt.Errorf("rate %v/s is below the least rate, %v/s (an event in about 32 years)", r, MinRate)
	}
	if burst < 1 {
		return fmt.Errorf("burst %d must be at least 1", burst)
	}
	return nil
}

// NewZone creates an empty zone.
func NewZone(name string, cfg Config) (*Zone, error) {
	if err := checkLimits(cfg.Rate, cfg.Burst); err != nil {
		return nil, fmt.Errorf("zone %q: %w", name, err)
	}
	shards := cfg.Shards
	if shards == 0 {
		shards = DefaultShards
	}
	if shards < 1 || shards > 1<<16 {
		return nil, fmt.Errorf("zone %q: %d shards out of range [1, 65536]", name, shards)
	}
	n := 1
	for n < shards {
		n <<= 1
	}
	maxKeys := cfg.MaxKeys
	if maxKeys == 0 {
		maxKeys = DefaultMaxKeys
	}
	if maxKeys < n {
		return nil, fmt.Errorf("zone %q: max keys %d is below the shard count %d", name, maxKeys, n)
	}
	z := &Zone{name: name, seed: maphash.MakeSeed(), shards: make([]shard, n), mask: uint64(n - 1), perShard: maxKeys / n}
	for i := range z.shards {
		z.shards[i].m = make(map[string]*bucket)
	}
	z.limits.Store(&limits{rate: rate.Limit(cfg.Rate), burst: cfg.Burst})
	return z, nil
}

// Name returns the zone name.
func (z *Zone) Name() string { return z.name }

// Limits returns the current rate (events per second) and burst.
func (z *Zone) Limits() (ratePerSecond float64, burst int) {
	l := z.limits.Load()
	return float64(l.rate), l.burst
}

// UpdateLimits applies a new rate and burst to the zone and to every
// existing bucket, keeping each bucket's token count (capped at the new
// burst). Each bucket switches to the new rate as of its last use, so the
// update works with whatever clock callers pass to Allow. Used when a
// reloaded configuration changes a shared zone.
func (z *Zone) UpdateLimits(ratePerSecond float64, burst int) error {
	if err := checkLimits(ratePerSecond, burst); err != nil {
		return fmt.Errorf("zone %q: %w", z.name, err)
	}
	z.applyLimits(&limits{rate: rate.Limit(ratePerSecond), burst: burst})
	return nil
}

// applyLimits puts l in force on the zone and its buckets.
func (z *Zone) applyLimits(l *limits) {
	z.limits.Store(l)
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		for _, b := range s.m {
			var at time.Time
			if n := b.lastSeen.Load(); n != 0 {
				at = time.Unix(0, n)
			}
			b.lim.SetLimitAt(at, l.rate)
			b.lim.SetBurstAt(at, l.burst)
		}
		s.mu.Unlock()
	}
}

// Allow spends one token of key's bucket at now. When the bucket is empty it
// returns false and how long until a token is available, rounded up to
// whole seconds (at least 1 s) for a Retry-After header. For a key that
// already has a bucket it does not allocate.
func (z *Zone) Allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if len(key) > MaxKeyLen {
		sum := sha256.Sum256([]byte(key))
		return z.allow(sum[:], "", now)
	}
	return z.allow(nil, key, now)
}

// AllowBytes is Allow for a key held in a byte slice, such as one built with
// AppendIPKey into a reused buffer; it does not allocate for an existing
// key and does not retain key.
func (z *Zone) AllowBytes(key []byte, now time.Time) (ok bool, retryAfter time.Duration) {
	if len(key) > MaxKeyLen {
		sum := sha256.Sum256(key)
		return z.allow(sum[:], "", now)
	}
	return z.allow(key, "", now)
}

// AllowN spends n tokens of key's bucket at now, all or none: when the
// bucket holds fewer than n it spends nothing, and returns false and how
// long until it holds n, rounded up to whole seconds (at least 1 s) as
// Allow's. A request that costs several events (the KeyPackages of one
// publish, say) takes them with one call, so that a refusal leaves the
// budget untouched. n must be from 1 to the zone's burst: more never
// fits, and is refused with the longest Retry-After. A zone whose buckets
// are in Redis (SetRedis) counts AllowN on its local buckets, as when
// Redis fails: each process limits on its own.
func (z *Zone) AllowN(key string, n int, now time.Time) (ok bool, retryAfter time.Duration) {
	if len(key) > MaxKeyLen {
		sum := sha256.Sum256([]byte(key))
		key = string(sum[:])
	}
	if n < 1 {
		n = 1
	}
	b := z.bucketOf(nil, key, now)
	if b.lim.AllowN(now, n) {
		return true, 0
	}
	r := float64(b.lim.Limit())
	missing := float64(n) - b.lim.TokensAt(now)
	if n > b.lim.Burst() || r <= 0 {
		return false, wholeSeconds(math.Inf(1))
	}
	if missing <= 0 {
		return false, time.Second
	}
	return false, wholeSeconds(missing / r)
}

// ReturnN gives back n tokens of key's bucket at now, capped at the
// zone's burst: the tokens an AllowN took for a request that was refused
// afterwards for another reason (a publish its store refused, say), so
// that such a request costs nothing of the budget. Takes and returns add
// up whatever their order, so concurrent callers each get back exactly
// what they took (less only what a full bucket cannot hold). As AllowN,
// it counts on the zone's local buckets, also in a zone whose buckets are
// in Redis. n below 1 gives nothing back.
func (z *Zone) ReturnN(key string, n int, now time.Time) {
	if n < 1 {
		return
	}
	if len(key) > MaxKeyLen {
		sum := sha256.Sum256([]byte(key))
		key = string(sum[:])
	}
	b := z.bucketOf(nil, key, now)
	// Never before the bucket's last use, so that the limiter's clock
	// does not step back and count a refill twice.
	if seen := time.Unix(0, b.lastSeen.Load()); seen.After(now) {
		now = seen
	}
	// A reservation of -n tokens adds n to the bucket, under the
	// limiter's lock (rate.Limiter has no other way to add tokens). The
	// limiter caps the tokens at the burst whenever it reads them, so a
	// bucket given back more than it lacks is merely full.
	b.lim.ReserveN(now, -n)
}

// allow takes the key from kb when non-nil, else from ks.
func (z *Zone) allow(kb []byte, ks string, now time.Time) (bool, time.Duration) {
	if b := z.redis.Load(); b != nil {
		if ok, retry, done := z.allowRedis(b, kb, ks, now); done {
			return ok, retry
		}
	}
	b := z.bucketOf(kb, ks, now)
	if b.lim.AllowN(now, 1) {
		return true, 0
	}
	return false, retryAfter(&b.lim, now)
}

// AllowBytesThen is AllowBytes for a request that a second limit (next,
// another zone's Allow, say) must admit too: key's token is spent only
// when its bucket has one and next allows. When key's bucket is empty it
// returns false and Allow's retry without calling next; when next
// refuses, the token taken from key's bucket is given back and next's
// answer is returned, so that a request refused by the second limit
// costs nothing of this one. Locally the token is reserved, and the
// reservation cancelled on next's refusal (rate.Reservation.CancelAt),
// under the zone's lock that AllowAll takes (next runs under it, so it
// must not call back into this zone); an Allow of the same key between
// the two may find that token taken. A zone in Redis cannot give a token
// back: there key's token stays spent when next refuses.
func (z *Zone) AllowBytesThen(key []byte, now time.Time, next func() (bool, time.Duration)) (bool, time.Duration) {
	if len(key) > MaxKeyLen {
		sum := sha256.Sum256(key)
		key = sum[:]
	}
	if b := z.redis.Load(); b != nil {
		if ok, retry, done := z.allowRedis(b, key, "", now); done {
			if !ok {
				return false, retry
			}
			return next()
		}
	}
	// allMu, as for AllowAll: two reservations that wait, cancelled in
	// the other order, would leave a token spent (rate.Reservation.CancelAt
	// gives back only what no later reservation relies on).
	z.allMu.Lock()
	defer z.allMu.Unlock()
	b := z.bucketOf(key, "", now)
	r := b.lim.ReserveN(now, 1)
	if !r.OK() || r.DelayFrom(now) > 0 {
		r.CancelAt(now)
		return false, retryAfter(&b.lim, now)
	}
	if ok, retry := next(); !ok {
		r.CancelAt(now)
		return false, retry
	}
	return true, 0
}

// AllowAll spends one token of each key's bucket at now, all or none: when
// any bucket is empty it spends nothing, and returns false and how long
// until every bucket has a token, rounded up to whole seconds (at least
// 1 s) as Allow's. A key named twice counts once. A request that needs
// the budget of several keys (the KeyPackages of several users, say) takes
// them with one call, so that a refusal leaves the other keys' budgets
// untouched. In Redis the keys are checked and then spent by one script;
// locally, AllowAll calls are serialized in the zone (Allow calls are
// not), and a take that meets an empty bucket gives back what it took.
func (z *Zone) AllowAll(keys []string, now time.Time) (ok bool, retryAfter time.Duration) {
	stored := make([]string, 0, len(keys))
	for _, k := range keys {
		if len(k) > MaxKeyLen {
			sum := sha256.Sum256([]byte(k))
			k = string(sum[:])
		}
		if !slices.Contains(stored, k) {
			stored = append(stored, k)
		}
	}
	if len(stored) == 0 {
		return true, 0
	}
	if b := z.redis.Load(); b != nil {
		if ok, retry, done := z.allowAllRedis(b, stored, now); done {
			return ok, retry
		}
	}
	return z.allowAllLocal(stored, now)
}

// allowAllLocal is AllowAll on the local buckets, of keys in their stored
// form, without duplicates. It reserves a token of each bucket; a
// reservation that would have to wait is the refusal of its key, and is
// cancelled at once. When any key is refused every reservation is
// cancelled, which gives its token back: allMu keeps every other
// AllowAll out meanwhile, and Allow never leaves a reservation waiting,
// so no reservation was made after them that they would have to leave
// in place (rate.Reservation.CancelAt).
func (z *Zone) allowAllLocal(keys []string, now time.Time) (bool, time.Duration) {
	z.allMu.Lock()
	defer z.allMu.Unlock()
	taken := make([]*rate.Reservation, 0, len(keys))
	var wait time.Duration
	refused := false
	for _, k := range keys {
		b := z.bucketOf(nil, k, now)
		r := b.lim.ReserveN(now, 1)
		if d := r.DelayFrom(now); d > 0 {
			r.CancelAt(now)
			refused = true
			wait = max(wait, d)
			continue
		}
		taken = append(taken, r)
	}
	if !refused {
		return true, 0
	}
	for i := len(taken) - 1; i >= 0; i-- {
		taken[i].CancelAt(now)
	}
	return false, roundRetry(wait)
}

// roundRetry rounds a wait up to whole seconds, at least 1 s, for a
// Retry-After header.
func roundRetry(wait time.Duration) time.Duration {
	return wholeSeconds(wait.Seconds())
}

// wholeSeconds rounds a wait of secs seconds up to whole seconds, at
// least 1 s and at most 2^31 s, for a Retry-After header.
func wholeSeconds(secs float64) time.Duration {
	secs = math.Ceil(secs - 1e-9)
	if secs < 1 {
		secs = 1
	}
	if secs > 1<<31 {
		secs = 1 << 31
	}
	return time.Duration(secs) * time.Second
}

// bucketOf returns the bucket of the key kb (when non-nil) or ks, in its
// stored form, creating it at now if absent, and marks it used at now.
func (z *Zone) bucketOf(kb []byte, ks string, now time.Time) *bucket {
	var h uint64
	if kb != nil {
		h = maphash.Bytes(z.seed, kb)
	} else {
		h = maphash.String(z.seed, ks)
	}
	s := &z.shards[h&z.mask]
	nowNano := now.UnixNano()
	s.mu.Lock()
	var b *bucket
	if kb != nil {
		b = s.m[string(kb)] // no allocation for a map index
	} else {
		b = s.m[ks]
	}
	if b == nil {
		if kb != nil {
			ks = string(kb)
		}
		b = z.insert(s, ks, now)
	}
	s.mu.Unlock()
	b.touch(nowNano)
	return b
}

// retryAfter is the time until lim has one token, rounded up to seconds.
func retryAfter(lim *rate.Limiter, now time.Time) time.Duration {
	r := float64(lim.Limit())
	missing := 1 - lim.TokensAt(now)
	if r <= 0 || missing <= 0 {
		return time.Second
	}
	return wholeSeconds(missing / r)
}

// insert adds a bucket for key to s, whose lock is held, keeping the shard
// within its cap.
func (z *Zone) insert(s *shard, key string, now time.Time) *bucket {
	nowNano := now.UnixNano()
	// Sweeping is O(shard size), so it runs at most once per interval even
	// when the shard is full; between sweeps a full shard evicts by sampling.
	if nowNano-s.lastSweep >= int64(SweepInterval) {
		s.lastSweep = nowNano
		z.sweep(s, now)
	}
	for len(s.m) >= z.perShard {
		z.evictOne(s)
	}
	l := z.limits.Load()
	b := &bucket{}
	// Setting the limits as of the zero time makes the bucket full at its
	// first use, like rate.NewLimiter, without a second allocation.
	b.lim.SetLimitAt(time.Time{}, l.rate)
	b.lim.SetBurstAt(time.Time{}, l.burst)
	s.m[key] = b
	return b
}

// sweep drops the buckets of s that have refilled to their burst: they are
// equivalent to absent ones.
func (z *Zone) sweep(s *shard, now time.Time) {
	for k, b := range s.m {
		if b.lim.TokensAt(now) >= float64(b.lim.Burst()) {
			delete(s.m, k)
		}
	}
}

// evictOne drops the least recently used of a few buckets sampled in map
// iteration order, which Go randomizes.
func (z *Zone) evictOne(s *shard) {
	var (
		victim string
		oldest int64 = math.MaxInt64
		n      int
	)
	for k, b := range s.m {
		if t := b.lastSeen.Load(); t < oldest {
			victim, oldest = k, t
		}
		if n++; n >= evictionSample {
			break
		}
	}
	if n == 0 {
		return
	}
	delete(s.m, victim)
	z.evicted.Add(1)
}

// Len returns the number of buckets held.
func (z *Zone) Len() int {
	n := 0
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Stats returns the zone's counters.
func (z *Zone) Stats() Stats {
	st := Stats{Keys: z.Len(), Evictions: z.evicted.Load(), RedisFallbacks: z.redisFallbacks.Load()}
	if b := z.redis.Load(); b != nil {
		st.Redis, st.RedisHealthy = true, b.healthy.Load()
	}
	return st
}

// Sweep drops every bucket that has refilled by now. Zones also sweep on
// their own as keys are inserted; calling Sweep from a timer returns memory
// sooner on a zone that has gone quiet.
func (z *Zone) Sweep(now time.Time) {
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		z.sweep(s, now)
		s.lastSweep = now.UnixNano()
		s.mu.Unlock()
	}
}

// Destruct releases the zone's buckets. It implements caddy.Destructor so
// that a *Zone can be held in a caddy.UsagePool directly; the pool calls it
// when the last configuration using the zone is unloaded. It closes the
// zone's Redis connections.
func (z *Zone) Destruct() error {
	for i := range z.shards {
		s := &z.shards[i]
		s.mu.Lock()
		s.m = make(map[string]*bucket)
		s.mu.Unlock()
	}
	return z.SetRedis(nil, nil)
}
