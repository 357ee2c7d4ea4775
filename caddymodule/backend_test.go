package caddymodule

import (
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// legacyBackend is a legacy backend on loopback, written from
// docs/protocol.md §11: it refuses a request whose signature or timestamp
// does not check (401), answers 503 to its first unavailable requests,
// drops deliveries it has seen, and keeps the messages in arrival order.
type legacyBackend struct {
	key         []byte
	mu          sync.Mutex
	unavailable int
	seen        map[string]bool
	got         []federation.BackendMessage
	refused     int
}

func (lb *legacyBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 2<<20))
	if err != nil || r.Method != http.MethodPost {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if lb.unavailable > 0 {
		lb.unavailable--
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	id, tsText := r.Header.Get("Mimi-Delivery-Id"), r.Header.Get("Mimi-Timestamp")
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil || time.Since(time.Unix(ts, 0)).Abs() > 300*time.Second ||
		!hmac.Equal([]byte(r.Header.Get("Mimi-Signature")), []byte(federation.BackendSignature(lb.key, ts, id, body))) {
		lb.refused++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if lb.seen[id] {
		w.WriteHeader(http.StatusOK)
		return
	}
	var m federation.BackendMessage
	if err := json.Unmarshal(body, &m); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	lb.seen[id] = true
	lb.got = append(lb.got, m)
	w.WriteHeader(http.StatusNoContent)
}

// messages returns what the backend kept.
func (lb *legacyBackend) messages() []federation.BackendMessage {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return slices.Clone(lb.got)
}

// TestLegacyBackendGetsPeerDeliveries runs a group hosted on a.localhost
// with a member on b.localhost, whose delivery target is a legacy backend
// (loopback HTTP, key from a file): a's deliver_message requests reach b,
// which hands each message to its backend through its outbox. The backend
// is unavailable at first; it then gets the Welcome and every message once,
// in order, signed, from sender a.localhost for bob; bob's queue at b
// stays empty, and bob joins and reads the messages from what the backend
// got; their latencies are in the fan-out histogram as @backend's.
func TestLegacyBackendGetsPeerDeliveries(t *testing.T) {
	a, b := twoProviders(t)
	key := []byte("0123456789abcdef0123456789abcdef")
	keyFile := filepath.Join(t.TempDir(), "backend.key")
	if err := os.WriteFile(keyFile, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	lb := &legacyBackend{key: key, unavailable: 2, seen: map[string]bool{}}
	backend := httptest.NewServer(lb)
	t.Cleanup(backend.Close)

	// b's config is reloaded with the backend as its delivery target.
	b.stop()
	b.g = provisioned(t, &Gateway{Providers: b.g.Providers, DSDomain: b.g.DSDomain, DataDir: b.g.DataDir, Federation: b.g.Federation,
		Delivery: &Delivery{Target: targetBackend, URL: backend.URL + "/mimi", KeyFile: keyFile, Timeout: caddy.Duration(5 * time.Second)}})
	b.start(t)
	if !b.g.ds.DeliverToBackend {
		t.Fatal("b does not deliver to its backend")
	}

	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid := []byte("a group with b's backend")
	createGroupAt(t, a, alice, gid)
	addAt(t, a, alice, false, bob)
	const n = 5
	for i := range n {
		app, err := alice.m.Protect(fmt.Appendf(nil, "message %d", i), nil)
		if err != nil {
			t.Fatal(err)
		}
		groupOp(t, a, alice, moh.RequestBody{Type: moh.SendMessage, Message: *app})
	}

	deadline := time.Now().Add(60 * time.Second)
	for len(lb.messages()) < 1+n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	waitOutboxEmpty(t, b, store.BackendDestination)
	got := lb.messages()
	if len(got) != 1+n || lb.refused != 0 {
		t.Fatalf("the backend kept %d messages and refused %d, want %d and none", len(got), lb.refused, 1+n)
	}
	for i, g := range got {
		if string(g.GroupID) != string(gid) || g.Sender != "a.localhost" || !slices.Equal(g.Recipients, []string{bob.uri}) {
			t.Fatalf("backend message %d: group %q from %q for %q, want the group from a.localhost for bob", i, g.GroupID, g.Sender, g.Recipients)
		}
	}
	welcome, err := mls.DecodeMLSMessage(got[0].Message)
	if err != nil {
		t.Fatal(err)
	}
	if bob.m, err = mls.JoinFromWelcome(welcome.Welcome, mls.WelcomeOptions{KeyPackage: bob.kp, InitKey: bob.initKey,
		LeafKey: bob.leafKey, Signer: bob.signer}); err != nil {
		t.Fatal(err)
	}
	for i, g := range got[1:] {
		msg, err := mls.DecodeMLSMessage(g.Message)
		if err != nil {
			t.Fatal(err)
		}
		if _, plain, err := bob.m.Unprotect(msg); err != nil || string(plain) != fmt.Sprintf("message %d", i) {
			t.Fatalf("backend message %d reads %q, %v: out of order or damaged", i+1, plain, err)
		}
	}
	if q := waitQueue(t, b, bob.uri, 0); len(q) != 0 {
		t.Fatalf("bob's queue at b holds %d messages with the backend target", len(q))
	}

	// The operator sees the backend as the destination @backend and may
	// end its backoff.
	rec := httptest.NewRecorder()
	err = (adminOutbox{}).retry(rec, httptest.NewRequest(http.MethodPost, "/mimi/outbox/retry?destination=@backend", nil))
	var apiErr caddy.APIError
	if errors.As(err, &apiErr) || rec.Code != http.StatusNoContent {
		t.Fatalf("retry of @backend: %d, %v", rec.Code, err)
	}
	var seen bool
	for _, st := range b.g.senderStatus() {
		if st.Destination == store.BackendDestination && !st.LastSuccess.IsZero() && st.Failures == 0 {
			seen = true
		}
	}
	if !seen {
		t.Fatalf("b's sender status has no successful @backend: %+v", b.g.senderStatus())
	}
	// Each message the backend accepted is in b's fan-out latency
	// histogram, under the destination @backend.
	reg := prometheus.NewRegistry()
	reg.MustRegister(outboxStats{})
	if h := histogramOf(t, reg, "caddy_mimi_fanout_latency_seconds", b.g.DataDir, store.BackendDestination); h.GetSampleCount() != 1+n {
		t.Fatalf("b's fan-out latency of @backend: %v, want %d samples", h, 1+n)
	}
}

// senderStatus is the status of the data directory's federation sender.
func (g *Gateway) senderStatus() []federation.DestinationStatus {
	var out []federation.DestinationStatus
	senderPool.Range(func(key, value any) bool {
		if key == g.DataDir {
			out = value.(*runningSender).sender.Status()
		}
		return true
	})
	return out
}
