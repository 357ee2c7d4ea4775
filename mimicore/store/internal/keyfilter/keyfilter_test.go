package keyfilter

import (
	"fmt"
	"sync"
	"testing"
)

const minute = 60_000

func key(f *Filter, i int) uint64 { return f.Key("sender.example", fmt.Appendf(nil, "request-%d", i)) }

// TestNoFalseNegatives: every key added is "maybe present" until it
// expires, across generations and chain growth.
func TestNoFalseNegatives(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys int
		span int64
	}{
		{"one bloom", 1000, 4 * minute},
		{"chain growth", 100_000, 4 * minute},
		{"many generations", 20_000, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := New(tc.span, 0, 64<<20)
			const now = 1_000_000_000
			for i := range tc.keys {
				f.Add(key(f, i), now+11*minute+int64(i%5000), now)
			}
			for i := range tc.keys {
				if !f.MayContain(key(f, i), now+11*minute-1) {
					t.Fatalf("key %d: absent before it expired", i)
				}
			}
			if _, _, sat := f.Stats(); sat {
				t.Fatal("saturated within its budget")
			}
		})
	}
}

// TestFalsePositiveRate: keys never added are "absent" for all but about
// 1% of lookups, at every fill level of the chain.
func TestFalsePositiveRate(t *testing.T) {
	f := New(4*minute, 0, 64<<20)
	const now, n = 0, 200_000
	for i := range n {
		f.Add(key(f, i), now+11*minute, now)
	}
	fp := 0
	for i := n; i < 2*n; i++ {
		if f.MayContain(key(f, i), now) {
			fp++
		}
	}
	rate := float64(fp) / n
	t.Logf("%d keys: %.2f%% false positives", n, 100*rate)
	if rate > 0.03 {
		t.Fatalf("false-positive rate %.2f%%, want about 1%%", 100*rate)
	}
}

// TestExpiry: keys are absent once they expire, and their generations'
// memory is given back at the next Add.
func TestExpiry(t *testing.T) {
	f := New(minute, 0, 64<<20)
	for i := range 10_000 {
		f.Add(key(f, i), 11*minute, 0)
	}
	// A generation is dropped whole: keys may stay "maybe present" until
	// its span ends, never less.
	if f.MayContain(key(f, 1), 12*minute) {
		t.Error("key alive after its generation ended")
	}
	if !f.MayContain(key(f, 1), 11*minute-1) {
		t.Error("key absent just before its expiry")
	}
	if gens, bytes, _ := f.Stats(); gens != 1 || bytes == 0 {
		t.Fatalf("stats before expiry: %d generations, %d bytes", gens, bytes)
	}
	f.Add(key(f, -1), 30*minute, 20*minute)
	if gens, bytes, _ := f.Stats(); gens != 1 || bytes != firstCapacity*bitsPerKey/8 {
		t.Fatalf("stats after expiry: %d generations, %d bytes; want only the new key's", gens, bytes)
	}
	f.Add(key(f, -2), 5, 10)
	if f.MayContain(key(f, -2), 0) {
		t.Error("a key added already expired was kept")
	}
}

// TestGrace: a generation outlives its keys by the grace period, so a
// clock that steps back finds them again; past the grace it is dropped.
func TestGrace(t *testing.T) {
	f := New(minute, 3*minute, 64<<20)
	h := key(f, 1)
	f.Add(h, 11*minute, 0)
	f.Add(key(f, 2), 30*minute, 13*minute) // 2 minutes after h expired
	if !f.MayContain(h, 10*minute) {
		t.Error("key lost within the grace period, for a clock stepped back")
	}
	f.Add(key(f, 3), 30*minute, 16*minute) // past the grace
	if f.MayContain(h, 10*minute) {
		t.Error("key kept past the grace period (1% chance: re-run)")
	}
}

// TestAddWithinGrace: a key added after it expired, but within the grace
// period (a store loading its table after a clock stepped forward), is
// found by a clock set back before its expiry; one added past the grace
// is not recorded.
func TestAddWithinGrace(t *testing.T) {
	f := New(minute, 3*minute, 64<<20)
	within, past := key(f, 1), key(f, 2)
	f.Add(within, 10*minute, 12*minute) // expired 2 minutes ago
	f.Add(past, 10*minute, 14*minute)   // expired 4 minutes ago
	if !f.MayContain(within, 9*minute) {
		t.Error("a key added within the grace is absent for a clock stepped back before its expiry")
	}
	if f.MayContain(past, 9*minute) {
		t.Error("a key added past the grace was recorded (1% chance: re-run)")
	}
}

// TestSaturation: over its budget a generation answers "maybe" for every
// key, until it expires.
func TestSaturation(t *testing.T) {
	budget := int64(firstCapacity * bitsPerKey / 8) // one first bloom
	f := New(minute, 0, budget)
	for i := range firstCapacity + 1 {
		f.Add(key(f, i), 2*minute, 0)
	}
	if _, _, sat := f.Stats(); !sat {
		t.Fatal("not saturated over budget")
	}
	for i := range firstCapacity + 1 {
		if !f.MayContain(key(f, i), 0) {
			t.Fatalf("key %d absent in a saturated filter", i)
		}
	}
	if !f.MayContain(key(f, 1<<30), 0) {
		t.Error("a saturated generation answered absent for an unknown key")
	}
	f.Add(key(f, 1<<31), 10*minute, 3*minute) // drops the saturated generation
	if _, _, sat := f.Stats(); sat {
		t.Error("still saturated after the saturated generation expired")
	}
	if f.MayContain(key(f, 1<<30), 3*minute) {
		t.Error("unknown key maybe-present after saturation ended (1% chance: re-run)")
	}
}

// TestKeyBoundary: the boundary between the two parts of a key counts.
func TestKeyBoundary(t *testing.T) {
	f := New(minute, 0, 1<<20)
	for _, tc := range []struct{ s1, b1, s2, b2 string }{
		{"ab", "c", "a", "bc"},
		{"", "ab", "a", "b"},
		{"a", "", "", "a"},
	} {
		t.Run(tc.s1+"|"+tc.b1, func(t *testing.T) {
			if f.Key(tc.s1, []byte(tc.b1)) == f.Key(tc.s2, []byte(tc.b2)) {
				t.Errorf("(%q, %q) and (%q, %q) hash alike", tc.s1, tc.b1, tc.s2, tc.b2)
			}
		})
	}
}

// TestConcurrent adds and looks up from many goroutines (run with -race):
// a key added before a lookup starts is always found.
func TestConcurrent(t *testing.T) {
	f := New(minute, 0, 64<<20)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				h := f.Key(fmt.Sprint(w), fmt.Append(nil, i))
				f.Add(h, 11*minute, int64(i))
				if !f.MayContain(h, int64(i)) {
					t.Errorf("worker %d key %d: absent after Add", w, i)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkMayContain(b *testing.B) {
	f := New(4*minute, 0, 64<<20)
	for i := range 1_000_000 {
		f.Add(key(f, i), 11*minute+int64(i), 0)
	}
	hs := make([]uint64, 1024)
	for i := range hs {
		hs[i] = key(f, -i)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		f.MayContain(hs[i&1023], 0)
	}
}
