package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/internal/metricstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestRefusalsHideInternalErrors checks that what a peer reads never holds
// an internal cause, while the log an operator reads does.
func TestRefusalsHideInternalErrors(t *testing.T) {
	const secret = "open /var/lib/mimi/keys/k1.pem: permission denied"
	cause := errors.New(secret)
	for _, tc := range []struct {
		name   string
		err    error
		code   moh.Code
		status int
	}{
		{"uncoded", fmt.Errorf("reading store: %w", cause), moh.CodeBackendUnavailable, http.StatusServiceUnavailable},
		{"coded with a cause", moh.Errorf(moh.CodeMalformed, "decoding: %w", cause), moh.CodeMalformed, http.StatusBadRequest},
		{"coded, cause beside", &moh.Error{Code: moh.CodeBackendUnavailable, Message: "store unavailable", Err: cause},
			moh.CodeBackendUnavailable, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.DebugLevel)
			g := &Gateway{logger: zap.New(core)}
			g.sampled = g.logger
			w := httptest.NewRecorder()
			x := &exchange{w: w, r: httptest.NewRequest(http.MethodPost, "/group_operation", nil), rt: &route{endpoint: &endpointTable[3]}}
			g.refuse(x, tc.err)
			var r moh.DSResponse
			if err := wire.Unmarshal(w.Body.Bytes(), &r, "DSResponse"); err != nil {
				t.Fatal(err)
			}
			if w.Code != tc.status || r.Error.Code != tc.code {
				t.Fatalf("answer %d %s, want %d %s", w.Code, r.Error.Code, tc.status, tc.code)
			}
			if strings.Contains(string(r.Error.Message), "permission denied") || strings.Contains(string(r.Error.Message), "/var/lib") {
				t.Fatalf("the peer reads the internal cause: %q", r.Error.Message)
			}
			logged := false
			for _, e := range logs.All() {
				m := e.ContextMap()
				if strings.Contains(fmt.Sprint(m["error"])+fmt.Sprint(m["cause"]), secret) {
					logged = true
				}
			}
			if !logged {
				t.Fatal("the internal cause was not logged")
			}
		})
	}
}

// TestFailureLogsAreSampled checks that a flood of requests that each end
// in a failure (such as forged senders spending the key-fetch budget)
// cannot flood the log: error-level refusal lines go through a sampler.
func TestFailureLogsAreSampled(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"})
	g.logger = zap.New(core)
	g.sampled = sampled(g.logger)
	start := time.Now()
	for i := 0; i < 1000; i++ {
		x := &exchange{w: httptest.NewRecorder(), r: httptest.NewRequest(http.MethodPost, "/deliver_message", nil),
			rt: g.routes["/deliver_message"]}
		g.refuse(x, &moh.Error{Code: moh.CodeBackendUnavailable, Message: "sender keys cannot be fetched now; retry later"})
	}
	// 10 a second, then one in 100: at most 10 + 10 per second elapsed.
	limit := 10 + 10*(int(time.Since(start)/time.Second)+1)
	if n := logs.Len(); n == 0 || n > limit {
		t.Fatalf("%d log lines for 1000 failures, want at most %d", n, limit)
	}
}

// TestStoreMetrics checks that the group-commit counters of a gateway's
// store are exported, so operators see fsyncs and the mean batch size.
func TestStoreMetrics(t *testing.T) {
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"})
	if _, err := g.svc.Store().MarkSpent(context.Background(), []byte("token"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	got := metricstest.Of(t, storeStats{})
	labels := "{data_dir=" + g.DataDir + ",}"
	if got["caddy_mimi_store_commits_total"+labels] < 1 || got["caddy_mimi_store_writes_total"+labels] < 1 ||
		got["caddy_mimi_store_syncs_total"+labels] < 1 {
		t.Fatalf("store metrics for %s: %v", g.DataDir, got)
	}
	if stopped, ok := got["caddy_mimi_store_stopped"+labels]; !ok || stopped != 0 {
		t.Fatalf("caddy_mimi_store_stopped for %s: %v, %v; want 0 for a sound store", g.DataDir, stopped, ok)
	}
}

// TestAnswerHeadersSurviveHeaderReplace puts Caddy's header handler with a
// deferred replace (`header Cache-Control no-store "private, no-store"`)
// in front of the gateway. It rewrites the answer's header values in
// place, so every answer needs slices of its own: a rewrite must change
// that answer only, never the next ones.
func TestAnswerHeadersSurviveHeaderReplace(t *testing.T) {
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"})
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &headers.Handler{Response: &headers.RespHeaderOps{Deferred: true, HeaderOps: &headers.HeaderOps{
		Replace: map[string][]headers.Replacement{
			"Cache-Control": {{Search: "no-store", Replace: "private, no-store"}},
			"Content-Type":  {{Search: contentType, Replace: contentType + "; x=1"}},
		}}}}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	mimi := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { return g.ServeHTTP(w, r, next) })
	for i := range 3 {
		r := tls13(httptest.NewRequest(http.MethodPost, "/healthz", nil)) // 405, a DSResponse
		caddyhttp.NewTestReplacer(r)
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, mimi); err != nil {
			t.Fatal(err)
		}
		if w.Code != http.StatusMethodNotAllowed {
			t.Fatalf("answer %d: status %d, want 405", i, w.Code)
		}
		if got := w.Header().Values("Cache-Control"); len(got) != 1 || got[0] != "private, no-store" {
			t.Errorf("answer %d: Cache-Control %q, want one value \"private, no-store\"", i, got)
		}
		if got := w.Header().Values("Content-Type"); len(got) != 1 || got[0] != contentType+"; x=1" {
			t.Errorf("answer %d: Content-Type %q", i, got)
		}
	}
	// What writeAnswer sets when no handler rewrites it.
	w := httptest.NewRecorder()
	writeAnswer(w, http.StatusOK, nil)
	if got := w.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("a later plain answer has Cache-Control %q, want no-store", got)
	}
	if got := w.Header().Get("Content-Type"); got != contentType {
		t.Errorf("a later plain answer has Content-Type %q, want %s", got, contentType)
	}
}

// TestAnswerHeadersRace rewrites one answer's header values in place, as
// Caddy's header handler does, while another answer is written: run with
// -race.
func TestAnswerHeadersRace(t *testing.T) {
	w1 := httptest.NewRecorder()
	writeAnswer(w1, http.StatusMethodNotAllowed, []byte{0, 1, 0})
	done := make(chan string)
	go func() {
		w := httptest.NewRecorder()
		writeAnswer(w, http.StatusMethodNotAllowed, []byte{0, 1, 0})
		done <- w.Header().Get("Cache-Control")
	}()
	w1.Header()["Cache-Control"][0] = "private"
	if got := <-done; got != "no-store" {
		t.Errorf("the concurrent answer has Cache-Control %q", got)
	}
}
