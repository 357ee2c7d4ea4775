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
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
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

// handle runs both steps of Inbound for raw, as the HTTP layer does (with
// no admission policy in between).
func handle(ctx context.Context, in *Inbound, raw []byte, process Processor) ([]byte, error) {
	v, err := in.Verify(ctx, raw, moh.ConnectionKeyPackages, VerifyOptions{})
	if err != nil {
		return nil, err
	}
	return in.Handle(ctx, v, process)
}

// newTestInbound is an Inbound for b.example that knows a.example's key k,
// on a fresh store, at the tests' fixed clock.
func newTestInbound(t *testing.T, k *PrivateKey) *Inbound {
	t.Helper()
	return &Inbound{
		Verifier: &Verifier{Domains: []string{"b.example"}, Keys: staticKeys{"a.example": {k.Public()}},
			Now: func() time.Time { return t0 }},
		Replay: openStore(t),
	}
}

// groupIDAnswer is a success answer carrying n, so tests can tell which run
// produced a recorded answer.
func groupIDAnswer(n int32) *moh.DSResponse {
	return &moh.DSResponse{Type: moh.ResponseGroupID, GroupID: []byte{byte(n)}}
}

func TestInboundReplay(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	in := newTestInbound(t, k)
	var runs atomic.Int32
	var failWith error
	process := func(context.Context, *Verified) (*moh.DSResponse, error) {
		n := runs.Add(1)
		if failWith != nil {
			return nil, failWith
		}
		return groupIDAnswer(n), nil
	}
	ctx := context.Background()
	raw := signedRequest(t, k, nil)
	first, err := handle(ctx, in, raw, process)
	if err != nil || moh.AnswerCode(first) != 0 || runs.Load() != 1 {
		t.Fatalf("first: %x %v (runs %d)", first, err, runs.Load())
	}
	// A byte-identical retry gets the first answer without running again.
	again, err := handle(ctx, in, raw, process)
	if err != nil || string(again) != string(first) || runs.Load() != 1 {
		t.Fatalf("retry: %x %v (runs %d)", again, err, runs.Load())
	}
	// The same request id with other bytes is a replay.
	other := signedRequest(t, k, func(r *moh.ProviderRequest) { r.Payload = []byte{1, 'z', 1, 'z'} })
	_, err = handle(ctx, in, other, process)
	var e *moh.Error
	if !errors.As(err, &e) || e.Code != moh.CodeReplay || runs.Load() != 1 {
		t.Fatalf("reused id: %v (runs %d)", err, runs.Load())
	}
	// A transient failure (backend_unavailable) is not recorded: a retry
	// runs again.
	failWith = &moh.Error{Code: moh.CodeBackendUnavailable, Message: "backend down"}
	fresh := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("another-id-0001") })
	for i := 0; i < 2; i++ {
		if a, err := handle(ctx, in, fresh, process); a != nil || moh.DSErrorOf(err).Code != moh.CodeBackendUnavailable {
			t.Fatalf("transient attempt %d: %x %v", i, a, err)
		}
	}
	if runs.Load() != 3 {
		t.Fatalf("a request that failed transiently was not retried: runs %d", runs.Load())
	}
	// A refusal is the request's outcome: recorded, and a retry gets it.
	failWith = moh.Errorf(moh.CodeNotFound, "no such user")
	refused := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("refused-id-0001") })
	for i := 0; i < 2; i++ {
		a, err := handle(ctx, in, refused, process)
		if moh.AnswerCode(a) != moh.CodeNotFound || (i == 0) != (err != nil) {
			t.Fatalf("refused attempt %d: %x %v", i, a, err)
		}
	}
	if runs.Load() != 4 {
		t.Fatalf("a refused request ran again on retry: runs %d", runs.Load())
	}
	failWith = nil
	// Nothing is written for a request that fails verification.
	forged := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("forged-id-000001") })
	forged[len(forged)-1] ^= 1
	if _, err := handle(ctx, in, forged, process); !errors.As(err, &e) || e.Code != moh.CodeBadSignature {
		t.Fatalf("forged: %v", err)
	}
	forged[len(forged)-1] ^= 1
	if _, err := handle(ctx, in, forged, process); err != nil {
		t.Fatalf("the genuine request was blocked by its forged copy: %v", err)
	}
}

// TestInboundClientGone checks that a client which disconnects while its
// request runs still gets its answer recorded, on a context it cannot
// cancel, so its retry gets the answer; a transient failure records
// nothing.
func TestInboundClientGone(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	in := newTestInbound(t, k)
	for _, tc := range []struct {
		name     string
		fail     error
		recorded bool
	}{
		{"answered", nil, true},
		{"transient failure", &moh.Error{Code: moh.CodeBackendUnavailable, Message: "down"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("gone-" + tc.name) })
			ctx, cancel := context.WithCancel(context.Background())
			v, err := in.Verify(ctx, raw, moh.ConnectionKeyPackages, VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			in.Handle(ctx, v, func(context.Context, *Verified) (*moh.DSResponse, error) {
				cancel() // the client goes away while the request runs
				return groupIDAnswer(1), tc.fail
			})
			e, err := in.Replay.FindReplay(context.Background(), "a.example", v.Request.RequestID)
			if recorded := err == nil && !e.Pending && e.Digest == v.Digest; recorded != tc.recorded {
				t.Fatalf("entry after the client left: %+v %v, want recorded %t", e, err, tc.recorded)
			}
		})
	}
}

// TestInboundAdmitBetweenSteps checks the order the HTTP layer relies on: a
// forged request fails Verify before any admission decision, and a request
// the caller refuses after Verify leaves no reservation behind, so the same
// bytes are processed once admission passes.
func TestInboundAdmitBetweenSteps(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	in := newTestInbound(t, k)
	var runs atomic.Int32
	process := func(context.Context, *Verified) (*moh.DSResponse, error) {
		return groupIDAnswer(runs.Add(1)), nil
	}
	ctx := context.Background()

	forged := signedRequest(t, k, nil)
	forged[len(forged)-1] ^= 1
	if _, err := in.Verify(ctx, forged, moh.ConnectionKeyPackages, VerifyOptions{}); moh.DSErrorOf(err).Code != moh.CodeBadSignature {
		t.Fatalf("forged: %v", err)
	}

	raw := signedRequest(t, k, nil)
	v, err := in.Verify(ctx, raw, moh.ConnectionKeyPackages, VerifyOptions{})
	if err != nil || string(v.Request.Sender) != "a.example" {
		t.Fatalf("Verify: %v", err)
	}
	// The caller's policy refuses here, so Handle is not called. The same
	// bytes are then processed once.
	answer, err := handle(ctx, in, raw, process)
	if err != nil || moh.AnswerCode(answer) != 0 || runs.Load() != 1 {
		t.Fatalf("after admission: %x %v (runs %d)", answer, err, runs.Load())
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

// TestInboundOneWrite checks the one-write record: concurrent copies of a
// request run once, an answer that cannot be recorded is not sent, and an
// answer another process recorded first stands.
func TestInboundOneWrite(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	newInbound := func() *Inbound { return newTestInbound(t, k) }
	ctx := context.Background()

	t.Run("concurrent copies", func(t *testing.T) {
		in := newInbound()
		raw := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("concurrent-0001") })
		var runs atomic.Int32
		started := make(chan struct{})
		release := make(chan struct{})
		process := func(context.Context, *Verified) (*moh.DSResponse, error) {
			close(started)
			<-release
			return groupIDAnswer(runs.Add(1)), nil
		}
		const copies = 16
		answers := make(chan []byte, copies)
		go func() {
			a, err := handle(ctx, in, raw, process)
			if err != nil {
				t.Error(err)
			}
			answers <- a
		}()
		<-started // the first copy is being processed; the others join it
		for i := 1; i < copies; i++ {
			go func() {
				a, err := handle(ctx, in, raw, process)
				if err != nil {
					t.Error(err)
				}
				answers <- a
			}()
		}
		// Another request with the same id and other bytes is a replay
		// even while the first runs.
		other := signedRequest(t, k, func(r *moh.ProviderRequest) {
			r.RequestID = []byte("concurrent-0001")
			r.Payload = []byte{1, 'z', 1, 'z'}
		})
		if _, err := handle(ctx, in, other, process); moh.DSErrorOf(err).Code != moh.CodeReplay {
			t.Fatalf("other bytes under a running id: %v, want replay", err)
		}
		for in.claims.waiting("a.example", []byte("concurrent-0001")) < copies-1 {
			time.Sleep(time.Millisecond)
		}
		close(release)
		first := <-answers
		for i := 1; i < copies; i++ {
			if a := <-answers; string(a) != string(first) {
				t.Fatalf("copy %d got %x, the first %x", i, a, first)
			}
		}
		if runs.Load() != 1 || moh.AnswerCode(first) != 0 {
			t.Fatalf("%d runs for %d concurrent copies (answer %x)", runs.Load(), copies, first)
		}
	})

	t.Run("record fails", func(t *testing.T) {
		in := newInbound()
		raw := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("unrecorded-0001") })
		a, err := handle(ctx, in, raw, func(context.Context, *Verified) (*moh.DSResponse, error) {
			in.Replay.(interface{ Close() error }).Close() // the store goes away mid-request
			return groupIDAnswer(1), nil
		})
		if a != nil || moh.DSErrorOf(err).Code != moh.CodeBackendUnavailable {
			t.Fatalf("an answer that could not be recorded: %x %v, want no answer and backend_unavailable", a, err)
		}
	})

	// A processor whose effect is one store write records the answer in
	// it (Verified.InlineReplay): a retry gets that answer and does not
	// run the processor; the queue holds the message once.
	inlineAppend := func(in *Inbound, runs *atomic.Int32, before func(v *Verified)) Processor {
		return func(ctx context.Context, v *Verified) (*moh.DSResponse, error) {
			resp := groupIDAnswer(runs.Add(1))
			enc, err := wire.Marshal(resp)
			if err != nil {
				return nil, err
			}
			if before != nil {
				before(v)
			}
			if !v.WantsInlineReplay() {
				return nil, errors.New("WantsInlineReplay false for a request Handle handles")
			}
			d := store.Delivery{Recipients: []string{"mimi://b.example/d/bob/phone"}, Sender: "a.example",
				Message: []byte("message"), Replay: v.InlineReplay(enc)}
			if _, err := in.Replay.(store.Queues).Append(ctx, d); err != nil {
				return nil, moh.Errorf(moh.CodeBackendUnavailable, "queueing: %w", err)
			}
			v.ReplayRecorded()
			return resp, nil
		}
	}
	t.Run("recorded with the effects", func(t *testing.T) {
		in := newInbound()
		raw := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("inline-0000001") })
		var runs atomic.Int32
		process := inlineAppend(in, &runs, nil)
		first, err := handle(ctx, in, raw, process)
		if err != nil || moh.AnswerCode(first) != 0 {
			t.Fatalf("first: %x %v", first, err)
		}
		again, err := handle(ctx, in, raw, process)
		if err != nil || string(again) != string(first) || runs.Load() != 1 {
			t.Fatalf("retry: %x %v (runs %d), want the first answer and one run", again, err, runs.Load())
		}
		e, err := in.Replay.FindReplay(ctx, "a.example", []byte("inline-0000001"))
		if err != nil || string(e.Answer.Body) != string(first) {
			t.Fatalf("FindReplay = %+v, %v; want the answer sent", e, err)
		}
		msgs, err := in.Replay.(store.Queues).Fetch(ctx, "mimi://b.example/d/bob/phone", 0, store.FetchLimit{})
		if err != nil || len(msgs) != 1 {
			t.Fatalf("queue holds %d messages (%v), want 1", len(msgs), err)
		}
	})
	t.Run("inline record loses a race", func(t *testing.T) {
		in := newInbound()
		raw := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("inline-raced01") })
		theirs := moh.ErrorAnswer(moh.Errorf(moh.CodeNotFound, "no such user"))
		var runs atomic.Int32
		a, err := handle(ctx, in, raw, inlineAppend(in, &runs, func(v *Verified) {
			// Another gateway on the same store records the request first.
			if _, err := in.Replay.RecordReplay(ctx, "a.example", v.Request.RequestID, v.Digest,
				store.Answer{Body: theirs}, t0.Add(ReplayWindow)); err != nil {
				t.Fatal(err)
			}
		}))
		if err != nil || string(a) != string(theirs) {
			t.Fatalf("answer %x %v, want the one recorded first", a, err)
		}
		msgs, err := in.Replay.(store.Queues).Fetch(ctx, "mimi://b.example/d/bob/phone", 0, store.FetchLimit{})
		if err != nil || len(msgs) != 0 {
			t.Fatalf("queue holds %d messages (%v) after the losing write, want none", len(msgs), err)
		}
	})

	t.Run("recorded elsewhere first", func(t *testing.T) {
		in := newInbound()
		raw := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("raced-00000001") })
		theirs := moh.ErrorAnswer(moh.Errorf(moh.CodeNotFound, "no such user"))
		a, err := handle(ctx, in, raw, func(_ context.Context, v *Verified) (*moh.DSResponse, error) {
			// Another gateway on the same store records the request first.
			if _, err := in.Replay.RecordReplay(ctx, "a.example", v.Request.RequestID, v.Digest,
				store.Answer{Body: theirs}, t0.Add(ReplayWindow)); err != nil {
				t.Fatal(err)
			}
			return groupIDAnswer(1), nil
		})
		if err != nil || string(a) != string(theirs) {
			t.Fatalf("answer %x %v, want the one recorded first", a, err)
		}
	})
}

// TestInboundIdempotent checks a Processor that declares its request
// idempotent (Verified.Idempotent): its answer and its refusals are sent
// without a replay log entry, InlineReplay offers none, a byte-identical
// copy runs again, and the same request id with other bytes is a request
// of its own, not a replay; a transient failure is still not an answer.
func TestInboundIdempotent(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		failWith error
		wantCode moh.Code
	}{
		{"answer", nil, 0},
		{"refusal", moh.Errorf(moh.CodeNotFound, "no such group"), moh.CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := newTestInbound(t, k)
			var runs atomic.Int32
			process := func(_ context.Context, v *Verified) (*moh.DSResponse, error) {
				if !v.WantsInlineReplay() {
					t.Error("WantsInlineReplay false before Idempotent")
				}
				v.Idempotent()
				if v.WantsInlineReplay() {
					t.Error("WantsInlineReplay true for an idempotent request")
				}
				if r := v.InlineReplay([]byte("answer")); r != nil {
					t.Errorf("InlineReplay offered %+v for an idempotent request", r)
				}
				runs.Add(1)
				if tc.failWith != nil {
					return nil, tc.failWith
				}
				return groupIDAnswer(1), nil
			}
			id := []byte("idempotent-0001")
			raw := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = id })
			other := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID, r.Payload = id, []byte{1, 'z', 1, 'z'} })
			var first []byte
			for i, req := range [][]byte{raw, raw, other} {
				a, err := handle(ctx, in, req, process)
				if moh.AnswerCode(a) != tc.wantCode || (err != nil) != (tc.failWith != nil) {
					t.Fatalf("copy %d: %x %v, want code %d", i, a, err, tc.wantCode)
				}
				if i == 0 {
					first = a
				} else if string(a) != string(first) {
					t.Fatalf("copy %d answered %x, the first %x", i, a, first)
				}
				if int(runs.Load()) != i+1 {
					t.Fatalf("copy %d: %d runs, want %d", i, runs.Load(), i+1)
				}
			}
			if _, err := in.Replay.FindReplay(ctx, "a.example", id); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("an idempotent request left a replay entry: %v", err)
			}
		})
	}
	t.Run("transient failure", func(t *testing.T) {
		in := newTestInbound(t, k)
		raw := signedRequest(t, k, func(r *moh.ProviderRequest) { r.RequestID = []byte("idempotent-0002") })
		a, err := handle(ctx, in, raw, func(_ context.Context, v *Verified) (*moh.DSResponse, error) {
			v.Idempotent()
			return nil, moh.Errorf(moh.CodeBackendUnavailable, "store down")
		})
		if a != nil || moh.DSErrorOf(err).Code != moh.CodeBackendUnavailable {
			t.Fatalf("transient failure: %x %v, want no answer and backend_unavailable", a, err)
		}
	})
}
