package storetest

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// RunSharedKeyTests checks what lets several gateways on one database sign
// as one provider: sealed signing keys written through one store are read
// back, byte for byte, through another, and of holders racing for a lease
// through several stores exactly one wins. open must return stores on one
// fresh database, at least one, and close them with t.Cleanup; a backend
// that allows one process per database returns one store, and the races
// then run on it.
func RunSharedKeyTests(t *testing.T, open func(t *testing.T) []store.Store) {
	t.Run("SealedKeys", func(t *testing.T) { testSealedKeys(t, open(t)) })
	t.Run("Leases", func(t *testing.T) { testLeases(t, open) })
}

func testSealedKeys(t *testing.T, stores []store.Store) {
	w, r := stores[0], stores[len(stores)-1]
	sealed, file := signingKey(t, 1), signingKey(t, 2)
	sealed.Sealed = randBytes(t, store.MaxSealedKeySize)
	want := sealed
	want.Sealed = bytes.Clone(sealed.Sealed)
	noErr(t, "InsertSigningKey of a sealed key", w.InsertSigningKey(ctx(), sealed))
	noErr(t, "InsertSigningKey of a file key", w.InsertSigningKey(ctx(), file))
	sealed.Sealed[0] ^= 0xff // the store must have copied it
	wantSigningKeys(t, r, want, file)
	got, err := r.ListSigningKeys(ctx())
	noErr(t, "ListSigningKeys", err)
	if !bytes.Equal(got[0].Sealed, want.Sealed) {
		t.Fatalf("sealed key read back differs from the one written")
	}
	if got[1].Sealed != nil {
		t.Fatalf("file key read back with %d sealed bytes, want none", len(got[1].Sealed))
	}
	noErr(t, "InsertSigningKey of the same sealed key", r.InsertSigningKey(ctx(), want))
	other := want
	other.Sealed = randBytes(t, 64)
	wantErr(t, "InsertSigningKey with other sealed bytes", r.InsertSigningKey(ctx(), other), store.ErrConflict)
	tooLong := signingKey(t, 3)
	tooLong.Sealed = make([]byte, store.MaxSealedKeySize+1)
	wantErr(t, "InsertSigningKey with a sealed key over the limit", w.InsertSigningKey(ctx(), tooLong), store.ErrInvalid)
	wantSigningKeys(t, w, want, file)
}

func testLeases(t *testing.T, open func(t *testing.T) []store.Store) {
	const name = "job"
	now := time.Unix(1_800_000_000, 0)
	acquire := func(t *testing.T, s store.Store, holder string, at time.Time) bool {
		t.Helper()
		ok, err := s.AcquireLease(ctx(), name, holder, at, time.Minute)
		noErr(t, "AcquireLease by "+holder, err)
		return ok
	}

	t.Run("Race", func(t *testing.T) {
		stores := open(t)
		const holders = 16
		for round := range 3 {
			at := now.Add(time.Duration(round) * time.Hour) // each round finds the lease expired
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				winners []string
				start   = make(chan struct{})
			)
			for i := range holders {
				holder := fmt.Sprintf("holder-%d", i)
				s := stores[i%len(stores)]
				wg.Go(func() {
					<-start
					ok, err := s.AcquireLease(ctx(), name, holder, at, time.Minute)
					if err != nil {
						t.Errorf("AcquireLease by %s: %v", holder, err)
						return
					}
					if ok {
						mu.Lock()
						winners = append(winners, holder)
						mu.Unlock()
					}
				})
			}
			close(start)
			wg.Wait()
			if len(winners) != 1 {
				t.Fatalf("round %d: %d holders won the lease (%v), want exactly one", round, len(winners), winners)
			}
		}
	})

	t.Run("HoldRenewReleaseExpire", func(t *testing.T) {
		stores := open(t)
		a, b := stores[0], stores[len(stores)-1]
		for _, c := range []struct {
			name   string
			s      store.Store
			holder string
			at     time.Time
			want   bool
		}{
			{"free lease", a, "a", now, true},
			{"held by another", b, "b", now.Add(30 * time.Second), false},
			{"renewed by its holder", a, "a", now.Add(50 * time.Second), true},
			{"renewal extended it", b, "b", now.Add(90 * time.Second), false},
			{"expired lease taken over", b, "b", now.Add(110 * time.Second), true},
			{"taken over from the old holder", a, "a", now.Add(120 * time.Second), false},
		} {
			t.Run(c.name, func(t *testing.T) {
				if got := acquire(t, c.s, c.holder, c.at); got != c.want {
					t.Fatalf("AcquireLease by %s at +%s = %t, want %t", c.holder, c.at.Sub(now), got, c.want)
				}
			})
		}
		noErr(t, "ReleaseLease by a non-holder", a.ReleaseLease(ctx(), name, "a"))
		if acquire(t, a, "a", now.Add(121*time.Second)) {
			t.Fatalf("a release by a non-holder freed the lease")
		}
		noErr(t, "ReleaseLease", b.ReleaseLease(ctx(), name, "b"))
		if !acquire(t, a, "a", now.Add(122*time.Second)) {
			t.Fatalf("a released lease could not be taken")
		}
		if !acquire(t, b, "b", now.Add(122*time.Second).Add(time.Minute)) {
			t.Fatalf("a lease at its expiry could not be taken over")
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		s := open(t)[0]
		long := string(bytes.Repeat([]byte("n"), store.MaxLeaseNameSize+1))
		for _, c := range []struct {
			name, lease, holder string
			ttl                 time.Duration
		}{
			{"empty name", "", "h", time.Minute},
			{"long name", long, "h", time.Minute},
			{"empty holder", name, "", time.Minute},
			{"long holder", name, long, time.Minute},
			{"zero ttl", name, "h", 0},
			{"negative ttl", name, "h", -time.Second},
		} {
			t.Run(c.name, func(t *testing.T) {
				_, err := s.AcquireLease(ctx(), c.lease, c.holder, now, c.ttl)
				wantErr(t, "AcquireLease", err, store.ErrInvalid)
			})
		}
		wantErr(t, "ReleaseLease with an empty name", s.ReleaseLease(ctx(), "", "h"), store.ErrInvalid)
		if !acquire(t, s, "h", now) {
			t.Fatalf("refused calls changed the lease")
		}
	})
}
