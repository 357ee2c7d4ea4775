package caddymodule

import (
	"hash/fnv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestSamplerPolicy(t *testing.T) {
	obs, logs := observer.New(zapcore.DebugLevel)
	s := newSampler(obs, time.Second, 10, 100)
	t0 := time.Unix(1_800_000_000, 0)
	write := func(at time.Time, lvl zapcore.Level, msg string) {
		ent := zapcore.Entry{Level: lvl, Time: at, Message: msg}
		if ce := s.Check(ent, nil); ce != nil {
			ce.Write()
		}
	}
	count := func(msg string) int { return logs.FilterMessage(msg).Len() }

	t.Run("first then one in thereafter", func(t *testing.T) {
		for range 250 {
			write(t0, zapcore.WarnLevel, "a")
		}
		// Entries 1-10, 110 and 210 of the tick.
		if n := count("a"); n != 12 {
			t.Fatalf("%d of 250 entries passed, want 12", n)
		}
	})
	t.Run("other level counted apart", func(t *testing.T) {
		for range 10 {
			write(t0, zapcore.ErrorLevel, "a")
		}
		if n := count("a"); n != 22 {
			t.Fatalf("%d entries passed, want 22", n)
		}
	})
	t.Run("new tick resets", func(t *testing.T) {
		for range 10 {
			write(t0.Add(time.Second), zapcore.WarnLevel, "a")
		}
		if n := count("a"); n != 32 {
			t.Fatalf("%d entries passed, want 32", n)
		}
	})
	t.Run("With shares the budget", func(t *testing.T) {
		w := s.With([]zapcore.Field{{Key: "k", Type: zapcore.StringType, String: "v"}})
		at := t0.Add(5 * time.Second)
		for i := range 20 {
			c := s
			if i%2 == 1 {
				c = w
			}
			if ce := c.Check(zapcore.Entry{Level: zapcore.InfoLevel, Time: at, Message: "b"}, nil); ce != nil {
				ce.Write()
			}
		}
		if n := count("b"); n != 10 {
			t.Fatalf("%d of 20 entries through two derived cores passed, want 10", n)
		}
	})
	t.Run("disabled level", func(t *testing.T) {
		obs, logs := observer.New(zapcore.InfoLevel)
		s := newSampler(obs, time.Second, 10, 100)
		if ce := s.Check(zapcore.Entry{Level: zapcore.DebugLevel, Time: t0, Message: "c"}, nil); ce != nil {
			t.Fatal("a disabled level was checked in")
		}
		if logs.Len() != 0 {
			t.Fatal("a disabled level was written")
		}
	})
}

// The point of the sampler: a small table (zapcore's is 448 KiB).
func TestSamplerTableSize(t *testing.T) {
	if n := unsafe.Sizeof(sampleTable{}); n > 32<<10 {
		t.Fatalf("the sampler's table takes %d bytes, want at most 32 KiB", n)
	}
}

func TestSamplerConcurrent(t *testing.T) {
	obs, logs := observer.New(zapcore.DebugLevel)
	s := newSampler(obs, time.Hour, 10, 100)
	now := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 125 {
				if ce := s.Check(zapcore.Entry{Level: zapcore.WarnLevel, Time: now, Message: "d"}, nil); ce != nil {
					ce.Write()
				}
			}
		})
	}
	wg.Wait()
	// 1000 entries in one tick: 1-10, 110, 210, ..., 910.
	if n := logs.Len(); n != 19 {
		t.Fatalf("%d of 1000 concurrent entries passed, want 19", n)
	}
}

func TestFNV32a(t *testing.T) {
	for _, s := range []string{"", "a", "foobar", "deliver_message refused"} {
		h := fnv.New32a()
		h.Write([]byte(s))
		if got, want := fnv32a(s), h.Sum32(); got != want {
			t.Errorf("fnv32a(%q) = %#x, want %#x (hash/fnv)", s, got, want)
		}
	}
}
