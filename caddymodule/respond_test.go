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
}
