package caddymodule

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
)

// sampleSlots is the number of counters a sampler keeps per level:
// messages whose hashes fall on the same slot share one budget.
const sampleSlots = 256

// sampler is a zapcore.Core that passes, of each message (by level and
// text), the first entries of every tick and then one in every
// thereafter: the policy of zapcore.NewSamplerWithOptions, with 256
// counters per level instead of 4096, so that its table takes 28 KiB
// rather than 448 KiB of live heap, which every gateway keeps (and twice
// during a reload). A gateway logs a few dozen distinct messages, so
// slots are rarely shared.
type sampler struct {
	zapcore.Core
	t *sampleTable
}

// sampleTable is the counters and the policy; the cores With derives from
// a sampler share it.
type sampleTable struct {
	tick              time.Duration
	first, thereafter uint64
	counts            [zapcore.FatalLevel - zapcore.DebugLevel + 1][sampleSlots]sampleCounter
}

// sampleCounter counts the entries of one slot since resetAt (Unix ns).
type sampleCounter struct {
	resetAt atomic.Int64
	n       atomic.Uint64
}

// newSampler wraps core: of each message, first entries per tick, then
// every thereafter-th (none if thereafter is 0).
func newSampler(core zapcore.Core, tick time.Duration, first, thereafter int) zapcore.Core {
	return &sampler{Core: core, t: &sampleTable{tick: tick, first: uint64(first), thereafter: uint64(thereafter)}}
}

// With adds fields to the wrapped core, keeping the counters.
func (s *sampler) With(fields []zapcore.Field) zapcore.Core {
	return &sampler{Core: s.Core.With(fields), t: s.t}
}

// Check drops the entry if its message is over its budget for the tick.
func (s *sampler) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if !s.Enabled(ent.Level) {
		return ce
	}
	if ent.Level >= zapcore.DebugLevel && ent.Level <= zapcore.FatalLevel {
		c := &s.t.counts[ent.Level-zapcore.DebugLevel][fnv32a(ent.Message)%sampleSlots]
		n := c.inc(ent.Time, s.t.tick)
		if n > s.t.first && (s.t.thereafter == 0 || (n-s.t.first)%s.t.thereafter != 0) {
			return ce
		}
	}
	return s.Core.Check(ent, ce)
}

// inc counts an entry at t and returns its number within the current tick,
// starting a new tick when the last one is over.
func (c *sampleCounter) inc(t time.Time, tick time.Duration) uint64 {
	now := t.UnixNano()
	reset := c.resetAt.Load()
	if reset > now {
		return c.n.Add(1)
	}
	c.n.Store(1)
	if !c.resetAt.CompareAndSwap(reset, now+tick.Nanoseconds()) {
		// Another entry started the tick first: count this one in it.
		return c.n.Add(1)
	}
	return 1
}

// fnv32a is FNV-1a of s, without the allocations of hash/fnv.
func fnv32a(s string) uint32 {
	const offset, prime = 2166136261, 16777619
	h := uint32(offset)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= prime
	}
	return h
}
