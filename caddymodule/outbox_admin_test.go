package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/mimicore/federation"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// poolSender puts a sender over a fresh store into senderPool under a new
// data directory, as a gateway would, and takes it out when t ends. The
// sender is not run: the admin routes need only its outbox and status.
func poolSender(t *testing.T) (string, *sqlitestore.Store, *observer.ObservedLogs) {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlitestore.Open(t.Context(), filepath.Join(dir, "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	s := &federation.Sender{Outbox: st, Logger: zap.New(core)}
	done := make(chan struct{})
	close(done)
	if _, _, err := senderPool.LoadOrNew(dir, func() (caddy.Destructor, error) {
		return &runningSender{sender: s, cancel: func() {}, done: done}, nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = senderPool.Delete(dir)
		st.Close()
	})
	return dir, st, logs
}

// adminCall runs one admin route and returns its status and body.
func adminCall(t *testing.T, h func(http.ResponseWriter, *http.Request) error, method, target string) (int, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	err := h(rec, httptest.NewRequest(method, target, nil))
	var apiErr caddy.APIError
	switch {
	case errors.As(err, &apiErr):
		return apiErr.HTTPStatus, nil
	case err != nil:
		t.Fatalf("%s %s: %v", method, target, err)
	}
	return rec.Code, rec.Body.Bytes()
}

// adminView reads GET /mimi/outbox's view of dir's destination.
func adminView(t *testing.T, dir, destination string) outboxView {
	t.Helper()
	code, body := adminCall(t, adminOutbox{}.list, http.MethodGet, "/mimi/outbox")
	if code != http.StatusOK {
		t.Fatalf("GET /mimi/outbox: %d", code)
	}
	var view map[string][]outboxView
	if err := json.Unmarshal(body, &view); err != nil {
		t.Fatal(err)
	}
	for _, v := range view[dir] {
		if v.Destination == destination {
			return v
		}
	}
	return outboxView{Destination: destination}
}

// droppedOf reads caddy_mimi_outbox_dropped_total of dir's destination
// for reason, or -1.
func droppedOf(t *testing.T, dir, destination, reason string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(outboxStats{})
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "caddy_mimi_outbox_dropped_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["data_dir"] == dir && labels["destination"] == destination && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// TestAdminOutboxBoundAndReset checks the operator's side of the outbox's
// bound: messages dropped at a destination's bound are counted in the
// admin view and in caddy_mimi_outbox_dropped_total{reason="backlog_full"};
// POST /mimi/outbox/reset drops the destination's backlog, answers and
// logs the count, which the view and the metric (reason "admin_reset")
// show; retry still answers; wrong methods and destinations are refused.
func TestAdminOutboxBoundAndReset(t *testing.T) {
	dir, st, logs := poolSender(t)
	st.SetOutboxLimits(store.OutboxLimits{MaxMessages: 3})
	g := storetest.NewGroup(t, []byte("admin group"), 1)
	if err := st.CreateGroup(t.Context(), store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		m := store.OutboxMessage{Sender: "a.example", Destination: "dead.example", GroupID: g.State.GroupID(),
			Recipients: []string{"mimi://dead.example/d/u/d"}, Message: fmt.Appendf(nil, "m%d", i)}
		if _, err := st.Deliver(t.Context(), g.State.GroupID(), g.State.Epoch(), store.Fanout{Remote: []store.OutboxMessage{m}}); err != nil {
			t.Fatal(err)
		}
	}
	v := adminView(t, dir, "dead.example")
	if v.Messages != 3 || v.Bytes <= 0 || v.Oldest.IsZero() || v.Dropped != (droppedView{BacklogFull: 2}) {
		t.Fatalf("view at the bound: %+v, want 3 messages and 2 dropped for backlog_full", v)
	}
	if n := droppedOf(t, dir, "dead.example", "backlog_full"); n != 2 {
		t.Fatalf("caddy_mimi_outbox_dropped_total{reason=backlog_full} = %v, want 2", n)
	}

	for _, tc := range []struct {
		name, method, target string
		h                    func(http.ResponseWriter, *http.Request) error
		want                 int
	}{
		{"retry", http.MethodPost, "/mimi/outbox/retry?destination=dead.example", adminOutbox{}.retry, http.StatusNoContent},
		{"retry of no domain", http.MethodPost, "/mimi/outbox/retry?destination=" + url.QueryEscape("not a domain"), adminOutbox{}.retry, http.StatusBadRequest},
		{"reset by GET", http.MethodGet, "/mimi/outbox/reset?destination=dead.example", adminOutbox{}.reset, http.StatusMethodNotAllowed},
		{"reset of no domain", http.MethodPost, "/mimi/outbox/reset?destination=" + url.QueryEscape("not a domain"), adminOutbox{}.reset, http.StatusBadRequest},
		{"reset without destination", http.MethodPost, "/mimi/outbox/reset", adminOutbox{}.reset, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, _ := adminCall(t, tc.h, tc.method, tc.target); code != tc.want {
				t.Fatalf("%s %s: %d, want %d", tc.method, tc.target, code, tc.want)
			}
		})
	}
	if v := adminView(t, dir, "dead.example"); v.Messages != 3 {
		t.Fatalf("refused resets changed the backlog: %+v", v)
	}

	code, body := adminCall(t, adminOutbox{}.reset, http.MethodPost, "/mimi/outbox/reset?destination=dead.example")
	if code != http.StatusOK {
		t.Fatalf("reset: %d", code)
	}
	var answer map[string]resetView
	if err := json.Unmarshal(body, &answer); err != nil {
		t.Fatal(err)
	}
	if answer[dir] != (resetView{Destination: "dead.example", Dropped: 3}) {
		t.Fatalf("reset answered %s, want 3 dropped for %s", body, dir)
	}
	if n := logs.FilterMessageSnippet("reset a destination's outbox").FilterField(zap.Int("dropped", 3)).Len(); n != 1 {
		t.Fatalf("%d reset logs with the count 3, want 1: %v", n, logs.All())
	}
	v = adminView(t, dir, "dead.example")
	if v.Messages != 0 || v.Bytes != 0 || !v.Oldest.IsZero() || v.Dropped != (droppedView{BacklogFull: 2, AdminReset: 3}) {
		t.Fatalf("view after the reset: %+v, want an empty backlog, 2 dropped for backlog_full and 3 by the reset", v)
	}
	if n := droppedOf(t, dir, "dead.example", "admin_reset"); n != 3 {
		t.Fatalf("caddy_mimi_outbox_dropped_total{reason=admin_reset} = %v, want 3", n)
	}
	// The bound has room again.
	m := store.OutboxMessage{Sender: "a.example", Destination: "dead.example", GroupID: g.State.GroupID(),
		Recipients: []string{"mimi://dead.example/d/u/d"}, Message: []byte("after")}
	d, err := st.Deliver(t.Context(), g.State.GroupID(), g.State.Epoch(), store.Fanout{Remote: []store.OutboxMessage{m}})
	if err != nil || d.Outbox[0] == 0 {
		t.Fatalf("a message after the reset: %+v, %v", d, err)
	}
}

// TestAdminOutboxResetPartialFailure: a reset across two data
// directories whose second store fails still drops the first one's
// backlog, and the 503 answer says so, per data directory: what was
// dropped in one, why the other failed. It used to answer a bare 503,
// the drops already done in other data directories only in the log, so
// the operator could not tell what had been reset.
func TestAdminOutboxResetPartialFailure(t *testing.T) {
	backlog := func(st *sqlitestore.Store, n int) {
		g := storetest.NewGroup(t, []byte("partial reset group"), 1)
		if err := st.CreateGroup(t.Context(), store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
			t.Fatal(err)
		}
		for i := range n {
			m := store.OutboxMessage{Sender: "a.example", Destination: "dead.example", GroupID: g.State.GroupID(),
				Recipients: []string{"mimi://dead.example/d/u/d"}, Message: fmt.Appendf(nil, "m%d", i)}
			if _, err := st.Deliver(t.Context(), g.State.GroupID(), g.State.Epoch(), store.Fanout{Remote: []store.OutboxMessage{m}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	good, goodStore, _ := poolSender(t)
	bad, badStore, _ := poolSender(t)
	backlog(goodStore, 2)
	backlog(badStore, 3)
	badStore.Close() // its reset fails

	code, body := adminCall(t, adminOutbox{}.reset, http.MethodPost, "/mimi/outbox/reset?destination=dead.example")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("reset with a failing store: %d %s, want 503", code, body)
	}
	var answer map[string]resetView
	if err := json.Unmarshal(body, &answer); err != nil {
		t.Fatalf("reset answered %q: %v", body, err)
	}
	if answer[good] != (resetView{Destination: "dead.example", Dropped: 2}) {
		t.Fatalf("reset answered %s, want 2 dropped for %s", body, good)
	}
	if v, ok := answer[bad]; !ok || v.Error == "" || v.Dropped != 0 || v.Destination != "dead.example" {
		t.Fatalf("reset answered %s, want the failure of %s", body, bad)
	}
	if p, err := goodStore.OutboxPending(t.Context(), "dead.example", 0, store.MaxOutboxList); err != nil || len(p) != 0 {
		t.Fatalf("the good data directory's backlog after the reset: %d messages, %v; want none", len(p), err)
	}
}

// blockingResetOutbox is an outbox whose OutboxReset lasts until release
// is closed, as the reset of a backlog of millions of rows does.
type blockingResetOutbox struct {
	store.Outbox
	store.OutboxBound
	started chan struct{}
	release chan struct{}
}

func (o blockingResetOutbox) OutboxReset(context.Context, string) (int, error) {
	close(o.started)
	<-o.release
	return 1, nil
}

// nopDestructor is a pool value with nothing to release.
type nopDestructor struct{}

func (nopDestructor) Destruct() error { return nil }

// TestAdminOutboxResetDoesNotHoldSenderPool requires POST
// /mimi/outbox/reset to do its (slow) work outside senderPool's lock:
// while a reset runs, a config load can start the sender of another data
// directory (LoadOrNew).
func TestAdminOutboxResetDoesNotHoldSenderPool(t *testing.T) {
	ob := blockingResetOutbox{started: make(chan struct{}), release: make(chan struct{})}
	done := make(chan struct{})
	close(done)
	dir := t.TempDir()
	senderPool.LoadOrStore(dir, &runningSender{sender: &federation.Sender{Outbox: ob}, cancel: func() {}, done: done})
	defer senderPool.Delete(dir) //nolint:errcheck // nothing to release

	resetDone := make(chan error, 1)
	go func() {
		req := httptest.NewRequest(http.MethodPost, "/mimi/outbox/reset?destination=b.example", nil)
		resetDone <- adminOutbox{}.reset(httptest.NewRecorder(), req)
	}()
	<-ob.started
	other := filepath.Join(t.TempDir(), "other")
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		senderPool.LoadOrNew(other, func() (caddy.Destructor, error) { return nopDestructor{}, nil }) //nolint:errcheck // cannot fail
	}()
	select {
	case <-loaded:
	case <-time.After(30 * time.Second): // a sender that waited would wait for ever
		t.Errorf("starting another data directory's sender waited for an outbox reset")
	}
	close(ob.release)
	if err := <-resetDone; err != nil {
		t.Errorf("reset: %v", err)
	}
	<-loaded
	senderPool.Delete(other) //nolint:errcheck // nothing to release
}
