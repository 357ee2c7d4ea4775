package ratelimit

import (
	"fmt"
	"math"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Unix(1_800_000_000, 0)

func mustZone(t testing.TB, cfg Config) *Zone {
	t.Helper()
	z, err := NewZone("test", cfg)
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func TestAllowBurstAndRefill(t *testing.T) {
	z := mustZone(t, Config{Rate: 1, Burst: 3})
	for i := 0; i < 3; i++ {
		if ok, ra := z.Allow("a", t0); !ok || ra != 0 {
			t.Fatalf("event %d refused (retry %v)", i, ra)
		}
	}
	ok, ra := z.Allow("a", t0)
	if ok || ra != time.Second {
		t.Fatalf("4th event: ok=%v retry=%v, want refused with 1s", ok, ra)
	}
	// Other keys are independent.
	if ok, _ := z.Allow("b", t0); !ok {
		t.Fatal("key b limited by key a")
	}
	// Refused events do not consume: after 1 s exactly one more is allowed.
	if ok, _ := z.Allow("a", t0.Add(time.Second)); !ok {
		t.Fatal("no token after 1 s")
	}
	if ok, _ := z.Allow("a", t0.Add(time.Second)); ok {
		t.Fatal("two tokens after 1 s")
	}
}

func TestRetryAfterRounding(t *testing.T) {
	cases := []struct {
		rate    float64
		burst   int
		elapsed time.Duration
		want    time.Duration
	}{
		{0.1, 1, 0, 10 * time.Second},
		{0.1, 1, 2500 * time.Millisecond, 8 * time.Second}, // 7.5 s rounds up
		{0.1, 1, 9999 * time.Millisecond, 1 * time.Second},
		{10, 1, 0, time.Second},            // 0.1 s rounds up to 1 s
		{1.0 / 60, 5, 0, 60 * time.Second}, // 1 per minute
		{1.0 / 3600, 1, time.Minute, 59 * time.Minute},
	}
	for i, c := range cases {
		z := mustZone(t, Config{Rate: c.rate, Burst: c.burst})
		for j := 0; j < c.burst; j++ {
			z.Allow("k", t0)
		}
		ok, ra := z.Allow("k", t0.Add(c.elapsed))
		if ok || ra != c.want {
			t.Errorf("case %d: ok=%v retry=%v, want refused with %v", i, ok, ra, c.want)
		}
		if ra%time.Second != 0 {
			t.Errorf("case %d: retry %v is not whole seconds", i, ra)
		}
	}
}

func TestRateOverTime(t *testing.T) {
	// 10/s with burst 5 over 10 simulated seconds, polled every 1 ms: 5 + 100.
	z := mustZone(t, Config{Rate: 10, Burst: 5})
	allowed := 0
	for ms := 0; ms < 10_000; ms++ {
		if ok, _ := z.Allow("k", t0.Add(time.Duration(ms)*time.Millisecond)); ok {
			allowed++
		}
	}
	if allowed < 104 || allowed > 105 {
		t.Fatalf("%d allowed, want 5 + 10/s * 10 s", allowed)
	}
}

func TestUpdateLimits(t *testing.T) {
	z := mustZone(t, Config{Rate: 1, Burst: 10})
	for i := 0; i < 10; i++ {
		z.Allow("old", t0)
	}
	if err := z.UpdateLimits(100, 2); err != nil {
		t.Fatal(err)
	}
	if r, b := z.Limits(); r != 100 || b != 2 {
		t.Fatalf("Limits() = %v, %v", r, b)
	}
	// The existing bucket (empty at t0) now refills at 100/s: 50 ms later it
	// holds 2 tokens, the new burst, not 5.
	later := t0.Add(50 * time.Millisecond)
	if ok, _ := z.Allow("old", later); !ok {
		t.Fatal("existing bucket did not get the new rate")
	}
	z.Allow("old", later)
	if ok, _ := z.Allow("old", later); ok {
		t.Fatal("existing bucket not capped at the new burst")
	}
	// New buckets get the new burst.
	n := 0
	for i := 0; i < 5; i++ {
		if ok, _ := z.Allow("new", later); ok {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("new bucket allowed %d, want burst 2", n)
	}
	for _, bad := range [][2]float64{{0, 1}, {-1, 1}, {math.NaN(), 1}, {1, 0}, {MinRate / 2, 1}} {
		if err := z.UpdateLimits(bad[0], int(bad[1])); err == nil {
			t.Errorf("UpdateLimits(%v, %v) accepted", bad[0], bad[1])
		}
	}
}

// TestPrepareUpdate checks that a prepared update changes nothing until
// Apply, that Discard drops it, and that bad limits are refused when
// preparing.
func TestPrepareUpdate(t *testing.T) {
	z := mustZone(t, Config{Rate: 1, Burst: 10})
	for _, tc := range []struct {
		name  string
		apply bool
		want  [2]float64
	}{
		{"discarded", false, [2]float64{1, 10}},
		{"applied", true, [2]float64{100, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := z.PrepareUpdate(100, 2, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r, b := z.Limits(); r != 1 || b != 10 {
				t.Fatalf("prepared: Limits() = %v, %v; want 1, 10", r, b)
			}
			if tc.apply {
				err = u.Apply()
			} else {
				err = u.Discard()
			}
			if err != nil {
				t.Fatal(err)
			}
			if r, b := z.Limits(); r != tc.want[0] || b != int(tc.want[1]) {
				t.Fatalf("Limits() = %v, %v; want %v", r, b, tc.want)
			}
			if err := z.UpdateLimits(1, 10); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := z.PrepareUpdate(0, 1, nil, nil); err == nil {
		t.Error("PrepareUpdate(0, 1) accepted")
	}
	if _, err := z.PrepareUpdate(1, 1, &RedisConfig{}, nil); err == nil {
		t.Error("PrepareUpdate with a Redis setting without address accepted")
	}
}

func TestSweepDropsRefilledBuckets(t *testing.T) {
	z := mustZone(t, Config{Rate: 1, Burst: 2, Shards: 4})
	for i := 0; i < 1000; i++ {
		z.Allow(strconv.Itoa(i), t0)
	}
	z.Allow("busy", t0.Add(1500*time.Millisecond))
	z.Allow("busy", t0.Add(1500*time.Millisecond))
	if z.Len() != 1001 {
		t.Fatalf("Len %d, want 1001", z.Len())
	}
	// Each key spent 1 of 2 tokens; after 1 s at 1/s they are full again.
	z.Sweep(t0.Add(1500 * time.Millisecond))
	if n := z.Len(); n != 1 {
		t.Fatalf("after sweep %d buckets, want only the busy one", n)
	}
	// A key whose bucket was dropped starts full, exactly as if kept.
	if ok, _ := z.Allow("7", t0.Add(1500*time.Millisecond)); !ok {
		t.Fatal("dropped key refused")
	}
	if s := z.Stats(); s.Evictions != 0 {
		t.Fatalf("lossless sweep counted %d evictions", s.Evictions)
	}
	// Inserting sweeps on its own once SweepInterval has passed.
	later := t0.Add(SweepInterval + 2*time.Second)
	for i := 0; i < 100; i++ {
		z.Allow("x"+strconv.Itoa(i), later)
	}
	if n := z.Len(); n > 100+2 {
		t.Fatalf("inline sweep left %d buckets", n)
	}
}

func TestHardCapWithMillionsOfKeys(t *testing.T) {
	keys := 2_000_000
	if raceEnabled || testing.Short() {
		keys = 200_000
	}
	const maxKeys = 50_000
	// A slow rate means no bucket refills: only the cap bounds memory.
	z := mustZone(t, Config{Rate: 0.001, Burst: 2, MaxKeys: maxKeys})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	buf := make([]byte, 0, 32)
	for i := 0; i < keys; i++ {
		buf = strconv.AppendInt(append(buf[:0], "client-"...), int64(i), 10)
		if ok, _ := z.AllowBytes(buf, t0.Add(time.Duration(i)*time.Microsecond)); !ok {
			t.Fatalf("first event of key %d refused", i)
		}
		if i%100_000 == 0 && z.Len() > maxKeys {
			t.Fatalf("%d keys held after %d inserts, cap %d", z.Len(), i, maxKeys)
		}
	}
	if n := z.Len(); n > maxKeys || n < maxKeys*9/10 {
		t.Fatalf("%d keys held, want close to and at most %d", n, maxKeys)
	}
	st := z.Stats()
	if st.Evictions < uint64(keys-maxKeys) {
		t.Fatalf("%d evictions, want at least %d", st.Evictions, keys-maxKeys)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	perKey := grown / int64(maxKeys)
	t.Logf("%d inserts, %d keys held, %d evictions, heap +%d KiB (%d B/key)", keys, st.Keys, st.Evictions, grown>>10, perKey)
	if perKey > 400 {
		t.Fatalf("heap grew %d bytes per held key, want at most 400", perKey)
	}
	runtime.KeepAlive(z)
}

func TestEvictionPrefersIdleKeys(t *testing.T) {
	z := mustZone(t, Config{Rate: 0.001, Burst: 1, MaxKeys: 64, Shards: 1})
	// "hot" is used on every step; 10k other keys stream through.
	for i := 0; i < 10_000; i++ {
		now := t0.Add(time.Duration(i) * time.Millisecond)
		z.Allow("hot", now)
		z.Allow("cold-"+strconv.Itoa(i), now)
	}
	// hot's bucket (burst 1, no refill) must have survived: still empty.
	if ok, _ := z.Allow("hot", t0.Add(11*time.Second)); ok {
		t.Fatal("the most recently used key was evicted and reset")
	}
}

func TestConcurrentExactBurst(t *testing.T) {
	z := mustZone(t, Config{Rate: 1e-6, Burst: 100, Shards: 4})
	const workers, perWorker, keys = 8, 500, 10
	var allowed [keys]atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				k := (i + w) % keys
				if ok, ra := z.Allow("k"+strconv.Itoa(k), t0); ok {
					allowed[k].Add(1)
				} else if ra < time.Second {
					t.Errorf("refusal with retry %v", ra)
				}
			}
		}(w)
	}
	// Reloads race with traffic.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20; i++ {
			if err := z.UpdateLimits(1e-6, 100); err != nil {
				t.Error(err)
			}
			_ = z.Stats()
		}
	}()
	wg.Wait()
	for k := range allowed {
		if n := allowed[k].Load(); n != 100 {
			t.Errorf("key %d: %d allowed, want exactly the burst of 100", k, n)
		}
	}
}

func TestAllowDoesNotAllocate(t *testing.T) {
	z := mustZone(t, Config{Rate: 1, Burst: 1})
	z.Allow("existing", t0)
	addr := netip.MustParseAddr("2001:db8:1:2:3:4:5:6")
	buf := make([]byte, 0, 64)
	buf, _ = AppendIPKey(buf[:0], addr, 32, 64)
	z.AllowBytes(buf, t0)
	now := t0
	if n := testing.AllocsPerRun(1000, func() { z.Allow("existing", now) }); n != 0 {
		t.Errorf("Allow (refused path) allocates %v times", n)
	}
	zi := mustZone(t, Config{Rate: math.Inf(1), Burst: 1})
	zi.Allow("existing", t0)
	if n := testing.AllocsPerRun(1000, func() { zi.Allow("existing", now) }); n != 0 {
		t.Errorf("Allow (allowed path) allocates %v times", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		buf, _ = AppendIPKey(buf[:0], addr, 32, 64)
		z.AllowBytes(buf, now)
	}); n != 0 {
		t.Errorf("AppendIPKey+AllowBytes allocates %v times", n)
	}
}

func TestLongKeysAreHashed(t *testing.T) {
	z := mustZone(t, Config{Rate: 1e-6, Burst: 1})
	long := strings.Repeat("x", 1000)
	if ok, _ := z.Allow(long, t0); !ok {
		t.Fatal("first use refused")
	}
	if ok, _ := z.Allow(long, t0); ok {
		t.Fatal("long key not tracked")
	}
	if ok, _ := z.AllowBytes([]byte(long), t0); ok {
		t.Fatal("Allow and AllowBytes disagree on a long key")
	}
	if ok, _ := z.Allow(long[:999]+"y", t0); !ok {
		t.Fatal("long keys differing in the last byte collide")
	}
	for i := range z.shards {
		for k := range z.shards[i].m {
			if len(k) > MaxKeyLen {
				t.Fatalf("stored a %d-byte key", len(k))
			}
		}
	}
}

func TestNewZoneValidation(t *testing.T) {
	for i, c := range []Config{
		{Rate: 0, Burst: 1},
		{Rate: -1, Burst: 1},
		{Rate: math.NaN(), Burst: 1},
		{Rate: 1e-12, Burst: 1},
		{Rate: 1, Burst: 0},
		{Rate: 1, Burst: 1, Shards: -1},
		{Rate: 1, Burst: 1, Shards: 1 << 17},
		{Rate: 1, Burst: 1, MaxKeys: 10, Shards: 64},
	} {
		if _, err := NewZone("z", c); err == nil {
			t.Errorf("case %d accepted: %+v", i, c)
		}
	}
	z, err := NewZone("z", Config{Rate: 1, Burst: 1, Shards: 5, MaxKeys: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(z.shards) != 8 || z.perShard != 12 || z.Name() != "z" {
		t.Fatalf("shards %d, per shard %d", len(z.shards), z.perShard)
	}
	if err := z.Destruct(); err != nil || z.Len() != 0 {
		t.Fatal("Destruct")
	}
}

func TestIPKeys(t *testing.T) {
	cases := []struct {
		addr   string
		v4, v6 int
		want   string
	}{
		{"192.0.2.77", 32, 64, "192.0.2.77/32"},
		{"192.0.2.77", 24, 64, "192.0.2.0/24"},
		{"::ffff:192.0.2.77", 24, 64, "192.0.2.0/24"},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", 32, 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:1::1", 32, 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:1::1", 32, 48, "2001:db8:1::/48"},
		{"fe80::1%eth0", 32, 64, "fe80::/64"},
		{"2001:db8::1", 32, 128, "2001:db8::1/128"},
	}
	for _, c := range cases {
		got, err := PrefixKey(netip.MustParseAddr(c.addr), c.v4, c.v6)
		if err != nil || got != c.want {
			t.Errorf("PrefixKey(%s, %d, %d) = %q, %v; want %q", c.addr, c.v4, c.v6, got, err, c.want)
		}
	}
	a, _ := IPKey(netip.MustParseAddr("2001:db8:1:2::1"))
	b, _ := IPKey(netip.MustParseAddr("2001:db8:1:2:ffff::1"))
	c, _ := IPKey(netip.MustParseAddr("2001:db8:1:3::1"))
	if a != b || a == c {
		t.Fatalf("IPv6 /64 grouping: %q %q %q", a, b, c)
	}
	for _, bad := range []struct {
		addr   netip.Addr
		v4, v6 int
	}{{netip.Addr{}, 32, 64}, {netip.MustParseAddr("192.0.2.1"), 33, 64}, {netip.MustParseAddr("::1"), 32, 129}, {netip.MustParseAddr("::1"), 32, -1}} {
		if _, err := PrefixKey(bad.addr, bad.v4, bad.v6); err == nil {
			t.Errorf("PrefixKey(%v, %d, %d) accepted", bad.addr, bad.v4, bad.v6)
		}
	}
}

func BenchmarkAllowExistingKey(b *testing.B) {
	z := mustZone(b, Config{Rate: 1e9, Burst: 1 << 30})
	z.Allow("203.0.113.7/32", t0)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		z.Allow("203.0.113.7/32", now)
	}
}

func BenchmarkAllowRefused(b *testing.B) {
	z := mustZone(b, Config{Rate: 1e-9, Burst: 1})
	z.Allow("k", t0)
	b.ReportAllocs()
	for b.Loop() {
		z.Allow("k", t0)
	}
}

func BenchmarkAllowIPv6Key(b *testing.B) {
	z := mustZone(b, Config{Rate: 1e9, Burst: 1 << 30})
	addr := netip.MustParseAddr("2001:db8:1:2:3:4:5:6")
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = AppendIPKey(buf[:0], addr, 32, 64)
		z.AllowBytes(buf, t0)
	}
}

func BenchmarkAllowParallel(b *testing.B) {
	z := mustZone(b, Config{Rate: 1e9, Burst: 1 << 30})
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("10.0.%d.%d/32", i/256, i%256)
		z.Allow(keys[i], t0)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			z.Allow(keys[i&1023], t0)
			i++
		}
	})
}

func BenchmarkAllowNewKeysAtCap(b *testing.B) {
	z := mustZone(b, Config{Rate: 0.001, Burst: 2, MaxKeys: 1 << 16})
	buf := make([]byte, 0, 32)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		buf = strconv.AppendInt(buf[:0], int64(i), 10)
		z.AllowBytes(buf, t0)
		i++
	}
}
