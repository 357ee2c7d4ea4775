package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// RunKeyPackageTests runs the contract tests of store.KeyPackages as
// subtests of t. open must return a fresh, empty store whose clock is
// clock.Now and close it with t.Cleanup.
func RunKeyPackageTests(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	plain := func(t *testing.T) store.Store { return open(t, NewClock()) }
	t.Run("PublishListClaim", func(t *testing.T) { testKPPublishListClaim(t, open) })
	t.Run("SingleUse", func(t *testing.T) { testKPSingleUse(t, plain) })
	t.Run("LastResort", func(t *testing.T) { testKPLastResort(t, plain) })
	t.Run("LastResortReplacedUnused", func(t *testing.T) { testKPLastResortReplacedUnused(t, open) })
	t.Run("LastResortReplacedWhileClaimed", func(t *testing.T) { testKPLastResortReplacedWhileClaimed(t, plain) })
	t.Run("ByRef", func(t *testing.T) { testKPByRef(t, open) })
	t.Run("ClaimedRefRemembered", func(t *testing.T) { testKPClaimedRefRemembered(t, open) })
	t.Run("Invalid", func(t *testing.T) { testKPInvalid(t, plain) })
	t.Run("Limit", func(t *testing.T) { testKPLimit(t, plain) })
	t.Run("UserLimit", func(t *testing.T) { testKPUserLimit(t, open) })
	t.Run("LimitsInvalid", func(t *testing.T) { testKPLimitsInvalid(t, plain) })
	t.Run("LimitsHoldOnDisk", func(t *testing.T) { testKPLimitsHoldOnDisk(t, open) })
	t.Run("PublishRace", func(t *testing.T) { PublishRace(t, []store.Store{plain(t)}) })
	t.Run("Expiry", func(t *testing.T) { testKPExpiry(t, open) })
	t.Run("ConcurrentClaims", func(t *testing.T) { testKPConcurrentClaims(t, plain) })
	t.Run("ClaimByPrefix", func(t *testing.T) { testKPClaimByPrefix(t, open) })
	t.Run("ClaimAnySuite", func(t *testing.T) { testKPClaimAnySuite(t, open) })
	t.Run("ClaimWithReplay", func(t *testing.T) { testKPClaimWithReplay(t, plain) })
	t.Run("ClaimWithReplayInvalid", func(t *testing.T) { testKPClaimWithReplayInvalid(t, plain) })
	t.Run("ClaimWithReplayConcurrent", func(t *testing.T) { testKPClaimWithReplayConcurrent(t, plain) })
	t.Run("ClaimUsable", func(t *testing.T) { testKPClaimUsable(t, plain) })
}

const (
	alice = "mimi://a.example/d/alice/phone"
	bob   = "mimi://a.example/d/bob/laptop"
)

// KP returns a KeyPackage of client for suite whose bytes and ref derive
// from name, alive until notAfter.
func KP(client string, suite uint16, name string, notAfter time.Time, lastResort bool) store.KeyPackage {
	return store.KeyPackage{Client: client, Suite: suite, Ref: []byte("ref:" + name),
		KeyPackage: []byte("keypackage:" + name), NotAfter: notAfter, LastResort: lastResort}
}

// sameKP fails unless got is want as read back: the same fields, NotAfter
// to the millisecond.
func sameKP(t *testing.T, what string, got, want store.KeyPackage) {
	t.Helper()
	if got.Client != want.Client || got.Suite != want.Suite || !bytes.Equal(got.Ref, want.Ref) ||
		!bytes.Equal(got.KeyPackage, want.KeyPackage) || got.LastResort != want.LastResort ||
		got.Claimed != want.Claimed || !got.NotAfter.Equal(ceilMillis(want.NotAfter)) {
		t.Fatalf("%s: got %s, want %s", what, fmtKP(got), fmtKP(want))
	}
}

// ceilMillis rounds t up to the millisecond, as the store keeps expiries.
func ceilMillis(t time.Time) time.Time {
	if r := t.Truncate(time.Millisecond); !r.Equal(t) {
		return r.Add(time.Millisecond)
	}
	return t
}

func fmtKP(kp store.KeyPackage) string {
	return fmt.Sprintf("{%s suite %d ref %q kp %q not_after %s last_resort %t claimed %t}",
		kp.Client, kp.Suite, kp.Ref, kp.KeyPackage, kp.NotAfter.UTC().Format(time.RFC3339Nano), kp.LastResort, kp.Claimed)
}

func refsOf(kps []store.KeyPackage) []string {
	refs := make([]string, len(kps))
	for i, kp := range kps {
		refs[i] = string(kp.Ref)
	}
	return refs
}

func wantRefs(t *testing.T, what string, kps []store.KeyPackage, want ...string) {
	t.Helper()
	got := refsOf(kps)
	for i := range want {
		want[i] = "ref:" + want[i]
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: refs %q, want %q", what, got, want)
	}
}

func claim(t *testing.T, s store.Store, client string, suite uint16) store.KeyPackage {
	t.Helper()
	kp, err := s.ClaimKeyPackage(ctx(), client, suite)
	noErr(t, "ClaimKeyPackage", err)
	return kp
}

func list(t *testing.T, s store.Store, client string) []store.KeyPackage {
	t.Helper()
	kps, err := s.ListKeyPackages(ctx(), client)
	noErr(t, "ListKeyPackages", err)
	if kps == nil {
		t.Fatal("ListKeyPackages returned nil, want an empty list")
	}
	return kps
}

func testKPPublishListClaim(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	now := clock.Now()
	kps := []store.KeyPackage{
		KP(alice, 1, "late", now.Add(3*time.Hour), false),
		KP(alice, 1, "early", now.Add(time.Hour+time.Millisecond/2), false), // rounded up
		KP(alice, 1, "mid", now.Add(2*time.Hour), false),
		KP(alice, 1, "lr1", now.Add(9*time.Hour), true),
		KP(alice, 2, "two", now.Add(time.Hour), false),
	}
	kps[4].Client = "" // empty means the publishing client
	noErr(t, "PublishKeyPackages", s.PublishKeyPackages(ctx(), alice, kps, store.KeyPackageLimits{}))
	kps[0].KeyPackage[0] ^= 0xff // the store must have copied it
	kps[0].KeyPackage[0] ^= 0xff
	kps[4].Client = alice
	wantRefs(t, "list", list(t, s, alice), "early", "mid", "late", "lr1", "two")
	wantRefs(t, "list of another client", list(t, s, bob))

	got := list(t, s, alice)
	sameKP(t, "listed", got[0], store.KeyPackage{Client: alice, Suite: 1, Ref: []byte("ref:early"),
		KeyPackage: []byte("keypackage:early"), NotAfter: now.Add(time.Hour + time.Millisecond)})
	got[0].KeyPackage[0] = 'X' // nor may it hand out its own memory

	// Claims: single-use packages, earliest NotAfter first, each once;
	// then the last-resort one, again and again.
	for _, want := range []int{1, 2, 0, 3, 3, 3} {
		kp := claim(t, s, alice, 1)
		w := kps[want]
		if want == 1 {
			w.NotAfter = now.Add(time.Hour + time.Millisecond)
		}
		sameKP(t, "claimed", kp, w)
	}
	wantRefs(t, "list after the claims", list(t, s, alice), "lr1", "two")
	sameKP(t, "suite 2", claim(t, s, alice, 2), kps[4])
	_, err := s.ClaimKeyPackage(ctx(), alice, 2)
	wantErr(t, "claim from an exhausted suite without a last resort", err, store.ErrNotFound)
	_, err = s.ClaimKeyPackage(ctx(), alice, 3)
	wantErr(t, "claim for a suite never published", err, store.ErrNotFound)
	_, err = s.ClaimKeyPackage(ctx(), bob, 1)
	wantErr(t, "claim for an unknown client", err, store.ErrNotFound)
}

func testKPSingleUse(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	a, b := KP(alice, 1, "a", exp, false), KP(alice, 1, "b", exp, false)
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{a, b}, store.KeyPackageLimits{}))
	noErr(t, "publishing the same packages again", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{a, b}, store.KeyPackageLimits{}))
	wantRefs(t, "after a repeated publish", list(t, s, alice), "a", "b")
	sameKP(t, "claim", claim(t, s, alice, 1), a)

	for _, tc := range []struct {
		name string
		kp   store.KeyPackage
	}{
		{"claimed package again", a},
		{"other bytes under an available ref", func() store.KeyPackage { k := b; k.KeyPackage = []byte("other"); return k }()},
		{"other NotAfter under an available ref", KP(alice, 1, "b", exp.Add(time.Second), false)},
		{"other suite under an available ref", KP(alice, 2, "b", exp, false)},
		{"as last resort under an available ref", KP(alice, 1, "b", exp, true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{tc.kp}, store.KeyPackageLimits{})
			wantErr(t, "publish", err, store.ErrConflict)
		})
	}
	t.Run("another client's ref", func(t *testing.T) {
		err := s.PublishKeyPackages(ctx(), bob, []store.KeyPackage{KP(bob, 1, "b", exp, false)}, store.KeyPackageLimits{})
		wantErr(t, "publish", err, store.ErrConflict)
		wantRefs(t, "bob's packages", list(t, s, bob))
	})
	t.Run("all or nothing", func(t *testing.T) {
		err := s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{KP(alice, 1, "new", exp, false), a}, store.KeyPackageLimits{})
		wantErr(t, "publish with one claimed ref", err, store.ErrConflict)
		wantRefs(t, "after the refused publish", list(t, s, alice), "b")
	})
	sameKP(t, "claim", claim(t, s, alice, 1), b)
	_, err := s.ClaimKeyPackage(ctx(), alice, 1)
	wantErr(t, "claim when every package was claimed", err, store.ErrNotFound)
}

func testKPLastResort(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	lr1, lr2 := KP(alice, 1, "lr1", exp, true), KP(alice, 1, "lr2", exp, true)
	other := KP(alice, 2, "lr-suite2", exp, true)
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{lr1, other}, store.KeyPackageLimits{}))
	noErr(t, "publishing it again", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{lr1}, store.KeyPackageLimits{}))
	wantRefs(t, "list", list(t, s, alice), "lr1", "lr-suite2")
	for range 3 {
		sameKP(t, "claim", claim(t, s, alice, 1), lr1)
	}
	noErr(t, "publish a new last resort", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{lr2}, store.KeyPackageLimits{}))
	wantRefs(t, "list after the replacement", list(t, s, alice), "lr2", "lr-suite2")
	sameKP(t, "claim after the replacement", claim(t, s, alice, 1), lr2)
	old, err := s.KeyPackageByRef(ctx(), lr1.Ref)
	noErr(t, "KeyPackageByRef of the replaced one", err)
	lr1.Claimed = true
	sameKP(t, "replaced", old, lr1)
	err = s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{KP(alice, 1, "lr1", exp, true)}, store.KeyPackageLimits{})
	wantErr(t, "publishing the replaced one again", err, store.ErrConflict)
	// A single-use package goes first, the last resort after.
	noErr(t, "publish single-use", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{KP(alice, 1, "one", exp, false)}, store.KeyPackageLimits{}))
	wantRefs(t, "claims", []store.KeyPackage{claim(t, s, alice, 1), claim(t, s, alice, 1)}, "one", "lr2")
}

// testKPLastResortReplacedUnused replaces a client's last-resort package
// again and again without any claim in between: a replaced package that no
// claim handed out cannot be named by a Welcome, so it is gone with its
// replacement (and its bytes may be published again), while one a claim
// handed out (by any of the claim methods) is kept as a replaced one.
func testKPLastResortReplacedUnused(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	exp := clock.Now().Add(time.Hour)
	const replacements = 200
	for i := range replacements {
		noErr(t, "publishing a last resort", s.PublishKeyPackages(ctx(), alice,
			[]store.KeyPackage{KP(alice, 1, fmt.Sprintf("lr%d", i), exp, true)}, store.KeyPackageLimits{}))
	}
	_, err := s.KeyPackageByRef(ctx(), []byte("ref:lr0"))
	wantErr(t, "KeyPackageByRef of a replaced last resort never handed out", err, store.ErrNotFound)
	noErr(t, "publishing a replaced last resort never handed out again", s.PublishKeyPackages(ctx(), alice,
		[]store.KeyPackage{KP(alice, 1, "lr0", exp, true)}, store.KeyPackageLimits{}))

	// Handed out by each claim method, then replaced: kept.
	claims := []struct {
		name  string
		claim func() error
	}{
		{"ClaimKeyPackage", func() error { _, err := s.ClaimKeyPackage(ctx(), alice, 1); return err }},
		{"ClaimKeyPackagesByPrefix", func() error {
			_, err := s.ClaimKeyPackagesByPrefix(ctx(), alicePrefix, 0)
			return err
		}},
		{"ClaimKeyPackages", func() error {
			_, err := s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{alice}})
			return err
		}},
	}
	for i, c := range claims {
		t.Run(c.name, func(t *testing.T) {
			name := fmt.Sprintf("handed out %d", i)
			kp := KP(alice, 1, name, exp, true)
			noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{kp}, store.KeyPackageLimits{}))
			noErr(t, c.name, c.claim())
			noErr(t, "replacing it", s.PublishKeyPackages(ctx(), alice,
				[]store.KeyPackage{KP(alice, 1, name+" next", exp, true)}, store.KeyPackageLimits{}))
			got, err := s.KeyPackageByRef(ctx(), kp.Ref)
			noErr(t, "KeyPackageByRef of the replaced one", err)
			kp.Claimed = true
			sameKP(t, "replaced after a claim", got, kp)
			wantErr(t, "publishing it again", s.PublishKeyPackages(ctx(), alice,
				[]store.KeyPackage{KP(alice, 1, name, exp, true)}, store.KeyPackageLimits{}), store.ErrConflict)
		})
	}
	// What is left: the three handed out and replaced, and the last one.
	clock.Advance(time.Hour)
	n, err := s.DeleteExpired(ctx(), clock.Now())
	noErr(t, "DeleteExpired", err)
	if want := int64(len(claims) + 1); n != want {
		t.Fatalf("DeleteExpired removed %d packages after %d replacements, want %d", n, replacements+2*len(claims), want)
	}
}

// testKPLastResortReplacedWhileClaimed replaces a client's last-resort
// package again and again while claimers take it: every package a claim
// handed out is kept once replaced, however the claim and the replacement
// interleave.
func testKPLastResortReplacedWhileClaimed(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	const replacements, claimers = 60, 4
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{KP(alice, 1, "lr 0", exp, true)}, store.KeyPackageLimits{}))
	done := make(chan struct{})
	var wg sync.WaitGroup
	handedOut := make([][]store.KeyPackage, claimers)
	errs := make([]error, claimers)
	for c := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				kp, err := s.ClaimKeyPackage(ctx(), alice, 1)
				if err != nil {
					errs[c] = err
					return
				}
				handedOut[c] = append(handedOut[c], kp)
			}
		}()
	}
	for i := 1; i <= replacements; i++ {
		noErr(t, "replacing the last resort", s.PublishKeyPackages(ctx(), alice,
			[]store.KeyPackage{KP(alice, 1, fmt.Sprintf("lr %d", i), exp, true)}, store.KeyPackageLimits{}))
	}
	close(done)
	wg.Wait()
	for c := range claimers {
		noErr(t, "ClaimKeyPackage", errs[c])
		for _, kp := range handedOut[c] {
			got, err := s.KeyPackageByRef(ctx(), kp.Ref)
			noErr(t, fmt.Sprintf("KeyPackageByRef of %q, handed out", kp.Ref), err)
			if !bytes.Equal(got.KeyPackage, kp.KeyPackage) {
				t.Fatalf("%q: got other bytes", kp.Ref)
			}
		}
	}
}

func testKPByRef(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	kp := KP(alice, 1, "a", clock.Now().Add(store.ClaimedKeyPackageRetention+time.Hour), false)
	short := KP(alice, 1, "short", clock.Now().Add(2*time.Hour), false)
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{short, kp}, store.KeyPackageLimits{}))
	got, err := s.KeyPackageByRef(ctx(), kp.Ref)
	noErr(t, "KeyPackageByRef", err)
	sameKP(t, "available", got, kp)
	claim(t, s, alice, 1) // short
	claim(t, s, alice, 1) // kp
	kp.Claimed, short.Claimed = true, true
	got, err = s.KeyPackageByRef(ctx(), kp.Ref)
	noErr(t, "KeyPackageByRef after the claim", err)
	sameKP(t, "claimed", got, kp)
	_, err = s.KeyPackageByRef(ctx(), []byte("ref:unknown"))
	wantErr(t, "unknown ref", err, store.ErrNotFound)

	clock.Advance(2 * time.Hour) // short's NotAfter comes before the retention
	_, err = s.KeyPackageByRef(ctx(), short.Ref)
	wantErr(t, "claimed package past its NotAfter", err, store.ErrNotFound)
	got, err = s.KeyPackageByRef(ctx(), kp.Ref)
	noErr(t, "KeyPackageByRef within the retention", err)
	sameKP(t, "claimed", got, kp)
	clock.Advance(store.ClaimedKeyPackageRetention - 2*time.Hour)
	_, err = s.KeyPackageByRef(ctx(), kp.Ref)
	wantErr(t, "claimed package past the retention", err, store.ErrNotFound)
	n, err := s.DeleteExpired(ctx(), clock.Now())
	noErr(t, "DeleteExpired", err)
	if n != 2 {
		t.Fatalf("DeleteExpired removed %d records, want 2", n)
	}
}

func testKPInvalid(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	ok := KP(alice, 1, "ok", exp, false)
	with := func(f func(*store.KeyPackage)) []store.KeyPackage {
		k := ok
		f(&k)
		return []store.KeyPackage{k}
	}
	many := make([]store.KeyPackage, store.MaxKeyPackagesPerClient+1)
	for i := range many {
		many[i] = KP(alice, 1, fmt.Sprint(i), exp, false)
	}
	for _, tc := range []struct {
		name   string
		client string
		kps    []store.KeyPackage
	}{
		{"empty client", "", []store.KeyPackage{KP("", 1, "x", exp, false)}},
		{"oversized client", strings.Repeat("c", store.MaxClientURISize+1), []store.KeyPackage{KP("", 1, "x", exp, false)}},
		{"client not UTF-8", "mimi://a.example/\xff", []store.KeyPackage{KP("", 1, "x", exp, false)}},
		{"no packages", alice, nil},
		{"too many packages", alice, many},
		{"another client's package", alice, with(func(k *store.KeyPackage) { k.Client = bob })},
		{"suite 0", alice, with(func(k *store.KeyPackage) { k.Suite = 0 })},
		{"empty ref", alice, with(func(k *store.KeyPackage) { k.Ref = nil })},
		{"oversized ref", alice, with(func(k *store.KeyPackage) { k.Ref = make([]byte, store.MaxIDSize+1) })},
		{"empty package", alice, with(func(k *store.KeyPackage) { k.KeyPackage = nil })},
		{"oversized package", alice, with(func(k *store.KeyPackage) { k.KeyPackage = make([]byte, store.MaxKeyPackageSize+1) })},
		{"repeated ref", alice, []store.KeyPackage{ok, ok}},
		{"two last resorts of one suite", alice, []store.KeyPackage{KP(alice, 1, "l1", exp, true), KP(alice, 1, "l2", exp, true)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, "PublishKeyPackages", s.PublishKeyPackages(ctx(), tc.client, tc.kps, store.KeyPackageLimits{}), store.ErrInvalid)
		})
	}
	big := with(func(k *store.KeyPackage) { k.KeyPackage = randBytes(t, store.MaxKeyPackageSize) })
	noErr(t, "publishing the largest package", s.PublishKeyPackages(ctx(), alice, big, store.KeyPackageLimits{}))
	if got := claim(t, s, alice, 1); !bytes.Equal(got.KeyPackage, big[0].KeyPackage) {
		t.Fatal("largest package did not read back intact")
	}
	_, err := s.ClaimKeyPackage(ctx(), "", 1)
	wantErr(t, "claim for no client", err, store.ErrInvalid)
	_, err = s.ListKeyPackages(ctx(), "")
	wantErr(t, "list for no client", err, store.ErrInvalid)
	_, err = s.KeyPackageByRef(ctx(), nil)
	wantErr(t, "lookup of no ref", err, store.ErrInvalid)
}

func testKPLimit(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	batch := func(prefix string, n int) []store.KeyPackage {
		kps := make([]store.KeyPackage, n)
		for i := range kps {
			kps[i] = KP(alice, uint16(1+i%3), fmt.Sprint(prefix, i), exp, false)
		}
		return kps
	}
	noErr(t, "publish up to the limit", s.PublishKeyPackages(ctx(), alice, batch("a", store.MaxKeyPackagesPerClient-1), store.KeyPackageLimits{}))
	noErr(t, "publish the last one", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{KP(alice, 1, "lr", exp, true)}, store.KeyPackageLimits{}))
	err := s.PublishKeyPackages(ctx(), alice, batch("b", 1), store.KeyPackageLimits{})
	wantErr(t, "publish past the limit", err, store.ErrTooManyKeyPackages)
	wantErr(t, "publish past the limit", err, store.ErrConflict)
	if n := len(list(t, s, alice)); n != store.MaxKeyPackagesPerClient {
		t.Fatalf("%d packages after a refused publish, want %d", n, store.MaxKeyPackagesPerClient)
	}
	noErr(t, "replacing the last resort at the limit", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{KP(alice, 1, "lr2", exp, true)}, store.KeyPackageLimits{}))
	noErr(t, "another client's publish", s.PublishKeyPackages(ctx(), bob, []store.KeyPackage{KP(bob, 1, "bob", exp, false)}, store.KeyPackageLimits{}))
	claim(t, s, alice, 2)
	noErr(t, "publish after a claim freed a place", s.PublishKeyPackages(ctx(), alice, batch("c", 1), store.KeyPackageLimits{}))
}

// testKPClaimedRefRemembered publishes again, past
// ClaimedKeyPackageRetention and a sweep, the bytes of a claimed package
// and of a replaced last-resort package a claim handed out, both with a
// NotAfter after the retention: each is refused until its NotAfter (the
// same init key is never handed out twice), though KeyPackageByRef no
// longer finds it; the sweep after the NotAfter removes them.
func testKPClaimedRefRemembered(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	exp := clock.Now().Add(store.ClaimedKeyPackageRetention + 10*24*time.Hour)
	one, lr := KP(alice, 1, "one", exp, false), KP(alice, 1, "lr", exp, true)
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{one, lr}, store.KeyPackageLimits{}))
	wantRefs(t, "claims", []store.KeyPackage{claim(t, s, alice, 1), claim(t, s, alice, 1)}, "one", "lr")
	noErr(t, "replacing the last resort", s.PublishKeyPackages(ctx(), alice,
		[]store.KeyPackage{KP(alice, 1, "lr next", exp, true)}, store.KeyPackageLimits{}))
	for _, step := range []struct {
		name    string
		advance time.Duration
	}{
		{"within the retention", time.Hour},
		{"past the retention", store.ClaimedKeyPackageRetention},
		{"past the retention and a sweep", 0},
		{"a day before the NotAfter", 9*24*time.Hour - time.Hour},
	} {
		t.Run(step.name, func(t *testing.T) {
			clock.Advance(step.advance)
			if step.advance == 0 {
				_, err := s.DeleteExpired(ctx(), clock.Now())
				noErr(t, "DeleteExpired", err)
			}
			for _, kp := range []store.KeyPackage{one, lr} {
				got, err := s.KeyPackageByRef(ctx(), kp.Ref)
				if step.name == "within the retention" {
					noErr(t, "KeyPackageByRef", err)
					kp.Claimed = true
					sameKP(t, "KeyPackageByRef", got, kp)
				} else {
					wantErr(t, "KeyPackageByRef", err, store.ErrNotFound)
				}
				wantErr(t, fmt.Sprintf("publishing %q again", kp.Ref),
					s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{kp}, store.KeyPackageLimits{}), store.ErrConflict)
			}
			wantRefs(t, "available", list(t, s, alice), "lr next")
		})
	}
	clock.Advance(exp.Sub(clock.Now()))
	n, err := s.DeleteExpired(ctx(), clock.Now())
	noErr(t, "DeleteExpired past the NotAfter", err)
	if n != 3 {
		t.Fatalf("DeleteExpired past the NotAfter removed %d records, want 3", n)
	}
}

func testKPExpiry(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	now := clock.Now()
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{
		KP(alice, 1, "soon", now.Add(time.Minute), false),
		KP(alice, 1, "lr", now.Add(time.Minute), true),
		KP(alice, 1, "later", now.Add(time.Hour), false),
	}, store.KeyPackageLimits{}))
	clock.Advance(time.Minute)
	wantRefs(t, "list once two expired", list(t, s, alice), "later")
	_, err := s.KeyPackageByRef(ctx(), []byte("ref:soon"))
	wantErr(t, "lookup of an expired package", err, store.ErrNotFound)
	wantRefs(t, "claims", []store.KeyPackage{claim(t, s, alice, 1)}, "later")
	_, err = s.ClaimKeyPackage(ctx(), alice, 1)
	wantErr(t, "claim with only an expired last resort", err, store.ErrNotFound)
	// An expired ref, swept or not, may be published again.
	noErr(t, "publishing an expired ref again", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{
		KP(alice, 1, "soon", clock.Now().Add(time.Hour), false)}, store.KeyPackageLimits{}))
	n, err := s.DeleteExpired(ctx(), clock.Now())
	noErr(t, "DeleteExpired", err)
	if n != 0 { // the publish deleted lr; "later" was claimed and is kept for lookups
		t.Fatalf("DeleteExpired removed %d records, want 0", n)
	}
	wantRefs(t, "list after the sweep", list(t, s, alice), "soon")
}

// testKPConcurrentClaims runs many claimers for one client at once: every
// single-use package is handed out exactly once, then only the last-resort
// one.
func testKPConcurrentClaims(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	const packages, claimers = 200, 32
	kps := make([]store.KeyPackage, 0, packages)
	for i := range packages {
		kps = append(kps, KP(alice, 1, fmt.Sprint(i), exp, false))
	}
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, kps[:packages/2], store.KeyPackageLimits{}))
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, append(kps[packages/2:], KP(alice, 1, "lr", exp, true)), store.KeyPackageLimits{}))
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, claimers)
	for range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				kp, err := s.ClaimKeyPackage(ctx(), alice, 1)
				if err != nil {
					errs <- err
					return
				}
				if kp.LastResort {
					return
				}
				mu.Lock()
				got[string(kp.Ref)]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("ClaimKeyPackage: %v", err)
	}
	for _, kp := range kps {
		if n := got[string(kp.Ref)]; n != 1 {
			t.Errorf("package %q handed out %d times, want once", kp.Ref, n)
		}
	}
	if len(got) != packages {
		t.Errorf("%d distinct packages handed out, want %d", len(got), packages)
	}
	if _, err := s.ClaimKeyPackage(ctx(), alice, 1); err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
}

// testKPClaimByPrefix claims the packages of every client of a user: one
// per client with a package of the suite, single-use ones first and used
// up, last-resort ones kept; clients of other users (even one whose name
// extends the user's), other suites and expired packages are left alone.
func testKPClaimByPrefix(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	now := clock.Now()
	const (
		prefix = "mimi://a.example/d/bob/"
		phone  = prefix + "phone"
		laptop = prefix + "laptop"
		tablet = prefix + "tablet"
		watch  = prefix + "watch"
		bobby  = "mimi://a.example/d/bobby/phone"
	)
	publish := func(client string, kps ...store.KeyPackage) {
		t.Helper()
		noErr(t, "PublishKeyPackages "+client, s.PublishKeyPackages(ctx(), client, kps, store.KeyPackageLimits{}))
	}
	publish(phone, KP(phone, 1, "phone 1", now.Add(time.Hour), false), KP(phone, 1, "phone 2", now.Add(2*time.Hour), false))
	publish(laptop, KP(laptop, 1, "laptop lr", now.Add(time.Hour), true))
	publish(tablet, KP(tablet, 2, "tablet suite 2", now.Add(time.Hour), false))
	publish(watch, KP(watch, 1, "watch expiring", now.Add(time.Minute), false))
	publish(bobby, KP(bobby, 1, "bobby", now.Add(time.Hour), false))

	claimAll := func(what string, want ...string) []store.KeyPackage {
		t.Helper()
		kps, err := s.ClaimKeyPackagesByPrefix(ctx(), prefix, 1)
		noErr(t, what, err)
		if kps == nil {
			t.Fatalf("%s: nil, want a list", what)
		}
		wantRefs(t, what, kps, want...)
		return kps
	}
	kps := claimAll("first claim", "laptop lr", "phone 1", "watch expiring")
	sameKP(t, "the laptop's", kps[0], KP(laptop, 1, "laptop lr", now.Add(time.Hour), true))
	sameKP(t, "the phone's", kps[1], KP(phone, 1, "phone 1", now.Add(time.Hour), false))
	clock.Advance(2 * time.Minute) // the watch's package expires
	claimAll("second claim", "laptop lr", "phone 2")
	claimAll("third claim", "laptop lr")
	wantRefs(t, "bobby's packages", list(t, s, bobby), "bobby")
	wantRefs(t, "the tablet's packages", list(t, s, tablet), "tablet suite 2")
	kps, err := s.ClaimKeyPackagesByPrefix(ctx(), "mimi://a.example/d/nobody/", 1)
	noErr(t, "claim of a user without clients", err)
	if kps == nil || len(kps) != 0 {
		t.Fatalf("claim of a user without clients: %v, want an empty list", kps)
	}

	// At most MaxClaimClients clients in one claim, the first by URI.
	var many []string
	for i := range store.MaxClaimClients + 1 {
		c := fmt.Sprintf("mimi://a.example/d/many/%03d", i)
		many = append(many, c)
		publish(c, KP(c, 1, c, now.Add(time.Hour), false))
	}
	kps, err = s.ClaimKeyPackagesByPrefix(ctx(), "mimi://a.example/d/many/", 1)
	noErr(t, "claim of many clients", err)
	if len(kps) != store.MaxClaimClients || kps[0].Client != many[0] || kps[len(kps)-1].Client != many[store.MaxClaimClients-1] {
		t.Fatalf("claim of %d clients answered %d, want the first %d", len(many), len(kps), store.MaxClaimClients)
	}

	for _, tc := range []struct {
		name   string
		prefix string
		suite  uint16
	}{{"empty prefix", "", 1}, {"prefix too long", strings.Repeat("x", store.MaxClientURISize+1), 1}} {
		_, err := s.ClaimKeyPackagesByPrefix(ctx(), tc.prefix, tc.suite)
		wantErr(t, "ClaimKeyPackagesByPrefix with "+tc.name, err, store.ErrInvalid)
	}
}

// testKPClaimAnySuite claims with suite 0, as for a peer's request that
// names no suite: single-use packages first, of the lowest suite, then the
// lowest suite's last-resort package, which stays; by prefix too.
func testKPClaimAnySuite(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	now := clock.Now()
	const phone, laptop = "mimi://a.example/d/carol/phone", "mimi://a.example/d/carol/laptop"
	noErr(t, "publish", s.PublishKeyPackages(ctx(), phone, []store.KeyPackage{
		KP(phone, 3, "suite 3", now.Add(time.Hour), false),
		KP(phone, 2, "suite 2", now.Add(2*time.Hour), false),
		KP(phone, 1, "suite 1 lr", now.Add(time.Hour), true),
		KP(phone, 5, "suite 5 lr", now.Add(time.Hour), true),
	}, store.KeyPackageLimits{}))
	noErr(t, "publish", s.PublishKeyPackages(ctx(), laptop, []store.KeyPackage{KP(laptop, 7, "laptop suite 7", now.Add(time.Hour), false)}, store.KeyPackageLimits{}))
	for _, want := range []string{"suite 2", "suite 3", "suite 1 lr", "suite 1 lr"} {
		if got := claim(t, s, phone, 0); string(got.Ref) != "ref:"+want {
			t.Fatalf("claim of any suite got %s, want %s", got.Ref, want)
		}
	}
	kps, err := s.ClaimKeyPackagesByPrefix(ctx(), "mimi://a.example/d/carol/", 0)
	noErr(t, "claim of any suite by prefix", err)
	wantRefs(t, "claim of any suite by prefix", kps, "laptop suite 7", "suite 1 lr")
	_, err = s.ClaimKeyPackage(ctx(), "mimi://a.example/d/nobody/phone", 0)
	wantErr(t, "claim of any suite for a client without packages", err, store.ErrNotFound)
}

// kpReplay returns a KeyPackageClaim.Replay that records, under request
// id of c.example, an answer listing the refs claimed ("-" for a client
// without a package), and counts its runs in *runs when runs is not nil.
func kpReplay(id string, runs *int) func([]store.KeyPackage) (*store.ReplayRecord, error) {
	return func(claimed []store.KeyPackage) (*store.ReplayRecord, error) {
		if runs != nil {
			*runs++
		}
		return &store.ReplayRecord{Sender: "c.example", RequestID: []byte(id), Digest: [32]byte{1},
			Answer: store.Answer{Body: []byte(kpAnswer(claimed))}, Expires: time.Now().Add(future)}, nil
	}
}

// kpAnswer is the answer kpReplay records for claimed.
func kpAnswer(claimed []store.KeyPackage) string {
	refs := make([]string, len(claimed))
	for i, kp := range claimed {
		refs[i] = string(kp.Ref)
		if kp.Ref == nil {
			refs[i] = "-"
		}
	}
	return "claimed:" + strings.Join(refs, ",")
}

// wantReplay fails unless id's replay entry holds answer, or, for an
// empty answer, unless id has none.
func wantReplay(t *testing.T, s store.Store, id, answer string) {
	t.Helper()
	e, err := s.FindReplay(ctx(), "c.example", []byte(id))
	if answer == "" {
		wantErr(t, "FindReplay of "+id, err, store.ErrNotFound)
		return
	}
	noErr(t, "FindReplay of "+id, err)
	if got := string(e.Answer.Body); got != answer {
		t.Fatalf("replay entry of %s holds %q, want %q", id, got, answer)
	}
}

// testKPClaimWithReplay makes the claims of one request with its replay
// record (ClaimKeyPackages): by client, one result per client in order;
// by prefix, as ClaimKeyPackagesByPrefix; the record holds the answer
// built from the claims. A record whose key is taken, or whose building
// fails, fails the write: nothing is claimed.
func testKPClaimWithReplay(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	const (
		phone  = "mimi://a.example/d/bob/phone"
		laptop = "mimi://a.example/d/bob/laptop"
		tablet = "mimi://a.example/d/bob/tablet" // publishes nothing
	)
	noErr(t, "publish", s.PublishKeyPackages(ctx(), phone, []store.KeyPackage{
		KP(phone, 1, "phone 1", exp, false), KP(phone, 1, "phone 2", exp.Add(time.Minute), false), KP(phone, 1, "phone 3", exp.Add(2*time.Minute), false)}, store.KeyPackageLimits{}))
	noErr(t, "publish", s.PublishKeyPackages(ctx(), laptop, []store.KeyPackage{KP(laptop, 1, "laptop lr", exp, true)}, store.KeyPackageLimits{}))

	runs := 0
	kps, err := s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{phone, tablet, laptop}, Replay: kpReplay("first", &runs)})
	noErr(t, "ClaimKeyPackages by client", err)
	if len(kps) != 3 {
		t.Fatalf("ClaimKeyPackages of 3 clients answered %d", len(kps))
	}
	sameKP(t, "the phone's", kps[0], KP(phone, 1, "phone 1", exp, false))
	sameKP(t, "the tablet's", kps[1], store.KeyPackage{Client: tablet})
	sameKP(t, "the laptop's", kps[2], KP(laptop, 1, "laptop lr", exp, true))
	if runs == 0 {
		t.Fatal("the replay record was not built")
	}
	wantReplay(t, s, "first", "claimed:ref:phone 1,-,ref:laptop lr")
	wantRefs(t, "the phone's packages", list(t, s, phone), "phone 2", "phone 3")

	// The key recorded: the write fails whole, claiming nothing.
	_, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{phone}, Replay: kpReplay("first", nil)})
	wantErr(t, "ClaimKeyPackages with a recorded key", err, store.ErrConflict)
	_, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Prefix: "mimi://a.example/d/bob/", Replay: kpReplay("first", nil)})
	wantErr(t, "ClaimKeyPackages by prefix with a recorded key", err, store.ErrConflict)
	wantRefs(t, "the phone's packages after a recorded key", list(t, s, phone), "phone 2", "phone 3")
	wantReplay(t, s, "first", "claimed:ref:phone 1,-,ref:laptop lr")

	// A record that cannot be built fails the write.
	failed := errors.New("cannot encode")
	_, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{phone},
		Replay: func([]store.KeyPackage) (*store.ReplayRecord, error) { return nil, failed }})
	wantErr(t, "ClaimKeyPackages whose record fails", err, failed)
	wantRefs(t, "the phone's packages after a failed record", list(t, s, phone), "phone 2", "phone 3")

	// No record: the claims alone.
	kps, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{phone},
		Replay: func([]store.KeyPackage) (*store.ReplayRecord, error) { return nil, nil }})
	noErr(t, "ClaimKeyPackages without a record", err)
	wantRefs(t, "ClaimKeyPackages without a record", kps, "phone 2")

	// By prefix: as ClaimKeyPackagesByPrefix, ordered by client.
	kps, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Prefix: "mimi://a.example/d/bob/", Replay: kpReplay("second", nil)})
	noErr(t, "ClaimKeyPackages by prefix", err)
	wantRefs(t, "ClaimKeyPackages by prefix", kps, "laptop lr", "phone 3")
	wantReplay(t, s, "second", "claimed:ref:laptop lr,ref:phone 3")
	kps, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Prefix: "mimi://a.example/d/nobody/", Replay: kpReplay("third", nil)})
	noErr(t, "ClaimKeyPackages by prefix of a user without clients", err)
	if len(kps) != 0 {
		t.Fatalf("ClaimKeyPackages by prefix of a user without clients: %d packages", len(kps))
	}
	wantReplay(t, s, "third", "claimed:")
	// The last-resort package stays; single-use ones are gone.
	kps, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{laptop, phone}})
	noErr(t, "ClaimKeyPackages without Replay", err)
	if !kps[0].LastResort || kps[1].Ref != nil {
		t.Fatalf("claim after the single-use packages are gone: %s, %s", fmtKP(kps[0]), fmtKP(kps[1]))
	}
}

// testKPClaimWithReplayInvalid refuses malformed claims and records with
// ErrInvalid, claiming nothing.
func testKPClaimWithReplayInvalid(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{KP(alice, 1, "a", time.Now().Add(future), false)}, store.KeyPackageLimits{}))
	tooMany := make([]string, store.MaxClaimClients+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("mimi://a.example/d/many/%03d", i)
	}
	badRecord := func([]store.KeyPackage) (*store.ReplayRecord, error) {
		return &store.ReplayRecord{Sender: "", RequestID: []byte("id"), Expires: time.Now().Add(future)}, nil
	}
	for _, tc := range []struct {
		name string
		c    store.KeyPackageClaim
	}{
		{"neither clients nor prefix", store.KeyPackageClaim{}},
		{"clients and prefix", store.KeyPackageClaim{Clients: []string{alice}, Prefix: "mimi://a.example/d/alice/"}},
		{"too many clients", store.KeyPackageClaim{Clients: tooMany}},
		{"a client named twice", store.KeyPackageClaim{Clients: []string{alice, bob, alice}}},
		{"an empty client", store.KeyPackageClaim{Clients: []string{alice, ""}}},
		{"a client too long", store.KeyPackageClaim{Clients: []string{strings.Repeat("x", store.MaxClientURISize+1)}}},
		{"a prefix too long", store.KeyPackageClaim{Prefix: strings.Repeat("x", store.MaxClientURISize+1)}},
		{"a record without sender", store.KeyPackageClaim{Clients: []string{alice}, Replay: badRecord}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.ClaimKeyPackages(ctx(), tc.c)
			wantErr(t, "ClaimKeyPackages with "+tc.name, err, store.ErrInvalid)
			wantRefs(t, "alice's packages", list(t, s, alice), "a")
		})
	}
}

// testKPClaimWithReplayConcurrent runs copies of one request at once, as
// gateways on one store do: one claims and records its answer, the others
// fail with ErrConflict and claim nothing.
func testKPClaimWithReplayConcurrent(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	const packages, copies = 20, 16
	kps := make([]store.KeyPackage, 0, packages)
	for i := range packages {
		kps = append(kps, KP(alice, 1, fmt.Sprintf("%02d", i), exp, false))
	}
	noErr(t, "publish", s.PublishKeyPackages(ctx(), alice, kps, store.KeyPackageLimits{}))
	var wg sync.WaitGroup
	errs := make([]error, copies)
	answers := make([]string, copies)
	for i := range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got []store.KeyPackage
			got, errs[i] = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{alice, bob}, Replay: kpReplay("copied", nil)})
			answers[i] = kpAnswer(got)
		}()
	}
	wg.Wait()
	won := ""
	for i, err := range errs {
		switch {
		case err == nil && won != "":
			t.Errorf("two copies claimed: %q and %q", won, answers[i])
		case err == nil:
			won = answers[i]
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("copy %d: %v, want ErrConflict", i, err)
		}
	}
	if won == "" {
		t.Fatal("no copy claimed")
	}
	wantReplay(t, s, "copied", won)
	if n := len(list(t, s, alice)); n != packages-1 {
		t.Fatalf("%d copies of one request consumed %d KeyPackages, want 1", copies, packages-n)
	}
}

// alicePrefix is the prefix of the client URIs of alice (alice's clients
// in this file are under it).
const alicePrefix = "mimi://a.example/d/alice/"

// testKPUserLimit publishes under the limits of store.KeyPackageLimits,
// step by step: the bounds per client and per user are those configured,
// a publish that would pass one is refused whole, last-resort packages
// count (one replacing another takes its place), and claimed or expired
// packages make room.
func testKPUserLimit(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	exp := clock.Now().Add(future)
	soon := clock.Now().Add(time.Minute)
	var (
		phone   = alicePrefix + "phone"
		laptop  = alicePrefix + "laptop"
		tablet  = alicePrefix + "tablet"
		alicex  = "mimi://a.example/d/alicex/phone" // another user, whose name extends alice's
		lim     = store.KeyPackageLimits{PerClient: 3, UserPrefix: alicePrefix, PerUser: 5}
		limX    = store.KeyPackageLimits{PerClient: 3, UserPrefix: "mimi://a.example/d/alicex/", PerUser: 5}
		noLimit = store.KeyPackageLimits{}
	)
	batch := func(client, prefix string, n int, notAfter time.Time) []store.KeyPackage {
		kps := make([]store.KeyPackage, n)
		for i := range kps {
			kps[i] = KP(client, 1, fmt.Sprint(prefix, i), notAfter, false)
		}
		return kps
	}
	for _, step := range []struct {
		name   string
		client string
		kps    []store.KeyPackage
		lim    store.KeyPackageLimits
		claim  bool // claim one package of client instead of publishing
		want   error
		counts map[string]int // available packages after the step
	}{
		{name: "one client to its bound", client: phone, kps: batch(phone, "p", 3, exp), lim: lim,
			counts: map[string]int{phone: 3}},
		{name: "past the client bound", client: phone, kps: batch(phone, "q", 1, exp), lim: lim,
			want: store.ErrTooManyKeyPackages, counts: map[string]int{phone: 3}},
		{name: "another client of the user, below the user bound", client: laptop, kps: batch(laptop, "l", 1, exp), lim: lim,
			counts: map[string]int{phone: 3, laptop: 1}},
		{name: "a request that would pass the user bound is refused whole", client: tablet, kps: batch(tablet, "t", 2, exp), lim: lim,
			want: store.ErrTooManyUserKeyPackages, counts: map[string]int{phone: 3, laptop: 1, tablet: 0}},
		{name: "a last-resort package counts", client: tablet, kps: []store.KeyPackage{KP(tablet, 1, "tlr", exp, true)}, lim: lim,
			counts: map[string]int{laptop: 1, tablet: 1}},
		{name: "at the user bound, any new package is refused", client: laptop, kps: []store.KeyPackage{KP(laptop, 2, "llr", exp, true)}, lim: lim,
			want: store.ErrTooManyUserKeyPackages, counts: map[string]int{laptop: 1, tablet: 1}},
		{name: "a last-resort package replacing one takes its place", client: tablet, kps: []store.KeyPackage{KP(tablet, 1, "tlr2", exp, true)}, lim: lim,
			counts: map[string]int{tablet: 1}},
		{name: "a retry of a publish adds nothing", client: phone, kps: batch(phone, "p", 3, exp), lim: lim,
			counts: map[string]int{phone: 3}},
		{name: "another user whose name extends the user's", client: alicex, kps: batch(alicex, "x", 3, exp), lim: limX,
			counts: map[string]int{alicex: 3}},
		{name: "a claim", client: phone, claim: true, counts: map[string]int{phone: 2}},
		{name: "the claim made room", client: laptop, kps: batch(laptop, "m", 1, soon), lim: lim,
			counts: map[string]int{phone: 2, laptop: 2, tablet: 1}},
		{name: "without a user bound", client: laptop, kps: batch(laptop, "n", 1, exp), lim: noLimit,
			counts: map[string]int{laptop: 3}},
	} {
		t.Run(step.name, func(t *testing.T) {
			if step.claim {
				claim(t, s, step.client, 1)
			} else {
				err := s.PublishKeyPackages(ctx(), step.client, step.kps, step.lim)
				if step.want == nil {
					noErr(t, "PublishKeyPackages", err)
				} else {
					wantErr(t, "PublishKeyPackages", err, step.want)
					wantErr(t, "PublishKeyPackages", err, store.ErrConflict)
				}
			}
			for client, n := range step.counts {
				if got := len(list(t, s, client)); got != n {
					t.Fatalf("%s has %d packages available, want %d", client, got, n)
				}
			}
		})
	}
	t.Run("expired packages make room", func(t *testing.T) {
		lim6 := lim
		lim6.PerUser = 6 // 6 are available
		wantErr(t, "PublishKeyPackages", s.PublishKeyPackages(ctx(), tablet, batch(tablet, "v", 1, exp), lim6), store.ErrTooManyUserKeyPackages)
		clock.Advance(time.Minute) // laptop's "m0" expires: 5 left
		noErr(t, "PublishKeyPackages", s.PublishKeyPackages(ctx(), tablet, batch(tablet, "v", 1, exp), lim6))
	})
}

// testKPLimitsHoldOnDisk publishes short-lived packages up to the bounds
// again and again, as a client may: the expired packages a publish finds
// under its bound are gone with it, so what the store holds of them stays
// within the bound however often the sweeper runs.
func testKPLimitsHoldOnDisk(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	for _, tc := range []struct {
		name   string
		client func(round int) string
		lim    store.KeyPackageLimits
	}{
		{"per user, a new client each time", func(r int) string { return fmt.Sprintf("%sd%d", alicePrefix, r) },
			store.KeyPackageLimits{UserPrefix: alicePrefix, PerUser: 5}},
		{"per client", func(int) string { return alice }, store.KeyPackageLimits{PerClient: 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := NewClock()
			s := open(t, clock)
			const rounds = 4
			for r := range rounds {
				client := tc.client(r)
				kps := make([]store.KeyPackage, 5)
				for i := range kps {
					kps[i] = KP(client, 1, fmt.Sprintf("%d-%d", r, i), clock.Now().Add(time.Minute), i == 0)
				}
				noErr(t, "PublishKeyPackages", s.PublishKeyPackages(ctx(), client, kps, tc.lim))
				clock.Advance(time.Minute)
			}
			// The last round's 5 expired since; the earlier rounds' went
			// with the publishes.
			n, err := s.DeleteExpired(ctx(), clock.Now())
			noErr(t, "DeleteExpired", err)
			if n != 5 {
				t.Fatalf("the sweeper found %d expired packages after %d rounds of 5, want the last 5", n, rounds)
			}
		})
	}
}

// testKPLimitsInvalid passes limits the contract refuses.
func testKPLimitsInvalid(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	kps := []store.KeyPackage{KP(alice, 1, "a", time.Now().Add(future), false)}
	for _, tc := range []struct {
		name string
		lim  store.KeyPackageLimits
	}{
		{"negative per client", store.KeyPackageLimits{PerClient: -1}},
		{"per client above the most", store.KeyPackageLimits{PerClient: store.MaxKeyPackagesPerClient + 1}},
		{"negative per user", store.KeyPackageLimits{UserPrefix: alicePrefix, PerUser: -1}},
		{"per user without a prefix", store.KeyPackageLimits{PerUser: 5}},
		{"prefix of another user", store.KeyPackageLimits{UserPrefix: "mimi://a.example/d/bob/", PerUser: 5}},
		{"prefix that is the client", store.KeyPackageLimits{UserPrefix: alice, PerUser: 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, "PublishKeyPackages", s.PublishKeyPackages(ctx(), alice, kps, tc.lim), store.ErrInvalid)
			if n := len(list(t, s, alice)); n != 0 {
				t.Fatalf("an invalid publish stored %d packages", n)
			}
		})
	}
}

// PublishRace has publishers of one user race, each for a client of its
// own, through stores (of one database, as gateways of one provider
// would): the user bound holds, exactly as many batches as it has room
// for pass, and each of the others is refused whole.
func PublishRace(t *testing.T, stores []store.Store) {
	const publishers, per, bound = 24, 4, 30
	lim := store.KeyPackageLimits{UserPrefix: alicePrefix, PerUser: bound}
	exp := time.Now().Add(future)
	start := make(chan struct{})
	errs := make([]error, publishers)
	var wg sync.WaitGroup
	for i := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := fmt.Sprintf("%sd%d", alicePrefix, i)
			kps := make([]store.KeyPackage, per)
			for j := range kps {
				kps[j] = KP(client, 1, fmt.Sprintf("%d-%d", i, j), exp, false)
			}
			<-start
			errs[i] = stores[i%len(stores)].PublishKeyPackages(ctx(), client, kps, lim)
		}()
	}
	close(start)
	wg.Wait()
	passed, total := 0, 0
	for i, err := range errs {
		client := fmt.Sprintf("%sd%d", alicePrefix, i)
		n := len(list(t, stores[0], client))
		switch {
		case err == nil:
			passed++
			if n != per {
				t.Errorf("publisher %d passed with %d packages available, want %d", i, n, per)
			}
		case errors.Is(err, store.ErrTooManyUserKeyPackages):
			if n != 0 {
				t.Errorf("publisher %d was refused with %d packages stored", i, n)
			}
		default:
			t.Errorf("publisher %d: %v", i, err)
		}
		total += n
	}
	if total > bound || passed != bound/per {
		t.Fatalf("%d publishes of %d passed, %d packages available; want %d passed, at most %d", passed, per, total, bound/per, bound)
	}
}

// testKPClaimUsable claims with KeyPackageClaim.Usable, which here
// refuses the packages named "old ...": a refused single-use package is
// consumed and the client's next one handed out, in the one write that
// also records the answer built from what was handed out; a refused
// last-resort package is not handed out and stays available; by prefix,
// a client left without a usable package is not in the answer.
func testKPClaimUsable(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	exp := time.Now().Add(future)
	const (
		phone  = "mimi://a.example/d/bob/phone"
		laptop = "mimi://a.example/d/bob/laptop"
	)
	runs := 0
	usable := func(kp store.KeyPackage) bool {
		runs++
		return !bytes.HasPrefix(kp.KeyPackage, []byte("keypackage:old"))
	}
	noErr(t, "publish", s.PublishKeyPackages(ctx(), phone, []store.KeyPackage{
		KP(phone, 1, "old 1", exp, false), KP(phone, 1, "old 2", exp.Add(time.Minute), false),
		KP(phone, 1, "new 3", exp.Add(2*time.Minute), false), KP(phone, 1, "new 4", exp.Add(3*time.Minute), false),
		KP(phone, 1, "old lr", exp, true)}, store.KeyPackageLimits{}))
	noErr(t, "publish", s.PublishKeyPackages(ctx(), laptop, []store.KeyPackage{KP(laptop, 1, "old laptop lr", exp, true)}, store.KeyPackageLimits{}))

	kps, err := s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{phone, laptop}, Usable: usable, Replay: kpReplay("usable", nil)})
	noErr(t, "ClaimKeyPackages by client", err)
	if len(kps) != 2 {
		t.Fatalf("ClaimKeyPackages of 2 clients answered %d", len(kps))
	}
	sameKP(t, "the phone's", kps[0], KP(phone, 1, "new 3", exp.Add(2*time.Minute), false))
	sameKP(t, "the laptop's", kps[1], store.KeyPackage{Client: laptop})
	if runs < 4 {
		t.Fatalf("Usable ran %d times, want at least 4 (old 1, old 2, new 3, the laptop's)", runs)
	}
	wantReplay(t, s, "usable", "claimed:ref:new 3,-")
	// The refused single-use packages are gone; the refused last-resort
	// ones stay.
	wantRefs(t, "the phone's packages", list(t, s, phone), "old lr", "new 4")
	wantRefs(t, "the laptop's packages", list(t, s, laptop), "old laptop lr")

	// By prefix: the laptop, with no usable package, is left out.
	kps, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Prefix: "mimi://a.example/d/bob/", Usable: usable})
	noErr(t, "ClaimKeyPackages by prefix", err)
	wantRefs(t, "ClaimKeyPackages by prefix", kps, "new 4")
	// The phone is down to its refused last-resort package.
	kps, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Prefix: "mimi://a.example/d/bob/", Usable: usable})
	noErr(t, "ClaimKeyPackages by prefix, nothing usable left", err)
	if len(kps) != 0 {
		t.Fatalf("ClaimKeyPackages by prefix with nothing usable answered %d packages", len(kps))
	}
	wantRefs(t, "the phone's packages at the end", list(t, s, phone), "old lr")
	// Without Usable, the last-resort package is handed out.
	kps, err = s.ClaimKeyPackages(ctx(), store.KeyPackageClaim{Clients: []string{phone}})
	noErr(t, "ClaimKeyPackages without Usable", err)
	wantRefs(t, "ClaimKeyPackages without Usable", kps, "old lr")
}
