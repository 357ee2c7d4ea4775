package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

func openStore(t *testing.T) *sqlitestore.Store {
	t.Helper()
	// The store's clock is the tests' fixed clock, so entries written with
	// expiries relative to t0 are alive.
	s, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"),
		sqlitestore.WithClock(func() time.Time { return t0 }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestInboundReplay(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	in := &Inbound{
		Verifier: &Verifier{Domains: []string{"b.example"}, Keys: staticKeys{"a.example": {k.Public()}},
			Now: func() time.Time { return t0 }},
		Replay: openStore(t),
	}
	var runs atomic.Int32
	status := http.StatusOK
	process := func(context.Context, *Verified) store.Answer {
		runs.Add(1)
		return store.Answer{Status: status, Body: []byte{byte(runs.Load())}}
	}
	ctx := context.Background()
	raw := signedRequest(t, k, nil)
	first, err := in.Handle(ctx, raw, moh.ConnectionKeyPackages, process)
	if err != nil || first.Status != 200 || runs.Load() != 1 {
		t.Fatalf("first: %v %v (runs %d)", first, err, runs.Load())
	}
	// A byte-identical retry gets the first answer without running again.
	again, err := in.Handle(ctx, raw, moh.ConnectionKeyPackages, process)
	if err != nil || again.Status != 200 || again.Body[0] != 1 || runs.Load() != 1 {
		t.Fatalf("retry: %v %v (runs %d)", again, err, runs.Load())
	}
	// The same request id with other bytes is a replay.
	other := signedRequest(t, k, func(r *moh.ProviderRequest) { r.Payload = []byte{1, 'z', 1, 'z'} })
	_, err = in.Handle(ctx, other, moh.ConnectionKeyPackages, process)
	var e *moh.Error
	if !errors.As(err, &e) || e.Code != moh.CodeReplay || runs.Load() != 1 {
		t.Fatalf("reused id: %v (runs %d)", err, runs.Load())
	}
	// A 5xx answer is not recorded: a retry runs again.
	status = http.StatusServiceUnavailable
	fresh := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("another-id-0001") })
	for i := 0; i < 2; i++ {
		if a, err := in.Handle(ctx, fresh, moh.ConnectionKeyPackages, process); err != nil || a.Status != 503 {
			t.Fatalf("5xx attempt %d: %v %v", i, a, err)
		}
	}
	if runs.Load() != 3 {
		t.Fatalf("a request answered 503 was not retried: runs %d", runs.Load())
	}
	// Nothing is written for a request that fails verification.
	forged := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("forged-id-000001") })
	forged[len(forged)-1] ^= 1
	if _, err := in.Handle(ctx, forged, moh.ConnectionKeyPackages, process); !errors.As(err, &e) || e.Code != moh.CodeBadSignature {
		t.Fatalf("forged: %v", err)
	}
	forged[len(forged)-1] ^= 1
	if _, err := in.Handle(ctx, forged, moh.ConnectionKeyPackages, process); err != nil {
		t.Fatalf("the genuine request was blocked by its forged copy: %v", err)
	}
}

func TestKeyRingMetadata(t *testing.T) {
	ctx := t.Context()
	db := openStore(t)
	dir := filepath.Join(t.TempDir(), "keys")
	opts := KeyRingOptions{RotateEvery: 10 * 24 * time.Hour, Overlap: 48 * time.Hour, Metadata: db}
	r, err := OpenKeyRing(ctx, dir, opts, t0)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := r.Current(t0)
	later := t0.Add(10*24*time.Hour + time.Minute)
	if _, err := r.Rotate(ctx, later); err != nil {
		t.Fatal(err)
	}
	meta, err := db.ListSigningKeys(ctx)
	if err != nil || len(meta) != 2 {
		t.Fatalf("metadata: %d keys, %v", len(meta), err)
	}
	if string(meta[0].KeyID) != string(first.ID) || !meta[0].RetiredAt.Equal(later.Truncate(time.Second)) && !meta[0].RetiredAt.Equal(later) {
		t.Fatalf("first key metadata %+v, want retired at %v", meta[0], later)
	}
	if !meta[1].RetiredAt.IsZero() || meta[1].File != keyFileName(r.keys[1]) {
		t.Fatalf("current key metadata %+v", meta[1])
	}
	if _, err := r.Rotate(ctx, first.NotAfter.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if meta, _ := db.ListSigningKeys(ctx); len(meta) != 1 {
		t.Fatalf("expired key still in metadata: %d keys", len(meta))
	}
	// A key file written but never recorded (a crash in between) is
	// recorded on the next open.
	if err := db.DeleteSigningKey(ctx, r.keys[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyRing(ctx, dir, opts, first.NotAfter.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if meta, _ := db.ListSigningKeys(ctx); len(meta) != 1 {
		t.Fatalf("reconcile: %d keys recorded, want 1", len(meta))
	}
}

// TestKeyFetcherPersistentCache checks that fetched keys and failures
// survive a restart through the store, and that the global fetch budget and
// the peer bound hold.
func TestKeyFetcherPersistentCache(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	var fetches atomic.Int32
	srv := peerServer(t, []moh.VerificationKey{k.Public()}, &fetches)
	addr := srv.Listener.Addr().String()
	pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	db := openStore(t)
	policy := FetchPolicy{AllowPrivate: true, AllowedPorts: []int{port}, RootCAs: pool, Cache: db,
		Resolve: map[string]string{"peer.example.com": addr, "ds.example.com": addr, "down.example.com": "127.0.0.1:1"}}
	newFetcher := func() *KeyFetcher {
		f := NewKeyFetcher(policy)
		f.now = func() time.Time { return t0 }
		return f
	}
	ctx := t.Context()
	if _, err := newFetcher().VerificationKey(ctx, "peer.example.com", k.ID, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := newFetcher().VerificationKey(ctx, "down.example.com", k.ID, t0); !errors.Is(err, ErrFetchFailed) {
		t.Fatalf("unreachable peer: %v", err)
	}
	// A restarted fetcher answers from the store: no new fetch, and the
	// failing peer is not retried before its retry time.
	restarted := newFetcher()
	if _, err := restarted.VerificationKey(ctx, "peer.example.com", k.ID, t0); err != nil || fetches.Load() != 1 {
		t.Fatalf("after restart: %v (%d fetches)", err, fetches.Load())
	}
	if _, err := restarted.VerificationKey(ctx, "down.example.com", k.ID, t0); !errors.Is(err, ErrFetchFailed) || !strings.Contains(err.Error(), "cached") {
		t.Fatalf("failure not remembered across a restart: %v", err)
	}

	// The global budget stops a flood of unknown senders from becoming a
	// flood of outbound fetches.
	flood := NewKeyFetcher(FetchPolicy{AllowPrivate: true, FetchRate: 0.001, MaxPeers: 8,
		Resolve: map[string]string{}})
	budgetHit := false
	for i := 0; i < 40; i++ {
		_, err := flood.VerificationKey(ctx, fmt.Sprintf("p%d.invalid", i), k.ID, t0)
		if errors.Is(err, ErrFetchBudget) {
			budgetHit = true
		}
	}
	if !budgetHit {
		t.Fatal("40 unknown senders never hit the fetch budget")
	}
	if n := len(flood.peers); n > 8 {
		t.Fatalf("%d peers in memory, bound is 8", n)
	}
}

func TestInboundAdmit(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	refuse := true
	var admitted []string
	in := &Inbound{
		Verifier: &Verifier{Domains: []string{"b.example"}, Keys: staticKeys{"a.example": {k.Public()}},
			Now: func() time.Time { return t0 }},
		Replay: openStore(t),
		Admit: func(_ context.Context, v *Verified) error {
			admitted = append(admitted, string(v.Request.Sender))
			if refuse {
				return moh.Errorf(moh.CodeRateLimited, "slow down")
			}
			return nil
		},
	}
	var runs atomic.Int32
	process := func(context.Context, *Verified) store.Answer {
		runs.Add(1)
		return store.Answer{Status: http.StatusOK, Body: []byte{1}}
	}
	ctx := context.Background()

	// A forged request never reaches the admission policy.
	forged := signedRequest(t, k, nil)
	forged[len(forged)-1] ^= 1
	if _, err := in.Handle(ctx, forged, moh.ConnectionKeyPackages, process); moh.DSErrorOf(err).Code != moh.CodeBadSignature {
		t.Fatalf("forged: %v", err)
	}
	if len(admitted) != 0 {
		t.Fatalf("admission ran for a forged request: %v", admitted)
	}

	raw := signedRequest(t, k, nil)
	_, err := in.Handle(ctx, raw, moh.ConnectionKeyPackages, process)
	if moh.DSErrorOf(err).Code != moh.CodeRateLimited || runs.Load() != 0 {
		t.Fatalf("refused: err %v, runs %d", err, runs.Load())
	}
	if len(admitted) != 1 || admitted[0] != "a.example" {
		t.Fatalf("admission saw %v", admitted)
	}
	// The refusal left no reservation: the same bytes are processed once
	// admission passes.
	refuse = false
	answer, err := in.Handle(ctx, raw, moh.ConnectionKeyPackages, process)
	if err != nil || answer.Status != http.StatusOK || runs.Load() != 1 {
		t.Fatalf("after admission: %v %v (runs %d)", answer, err, runs.Load())
	}
}
