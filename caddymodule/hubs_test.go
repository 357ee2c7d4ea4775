package caddymodule

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestHubConflictAdminRemedy runs the remedy for a wrong hub on two
// gateways over TLS 1.3: b holds m.localhost as the hub of a group that a
// hosts, as a Welcome for it that m.localhost sent first records it
// (mimicore/ds TestHubConflict runs that Welcome); a's Welcome for bob at
// b is refused 403 and counted in caddy_mimi_hub_conflicts_total; GET
// /mimi/hubs shows the wrong hub; DELETE /mimi/hubs forgets it (and
// refuses to touch a group hosted here), after which a's Welcome is
// accepted, queued for bob, and records a as the hub.
func TestHubConflictAdminRemedy(t *testing.T) {
	a, b := twoProviders(t)
	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid := []byte("a group of a whose hub b got wrong")
	arg := "/mimi/hubs?group_id=" + hex.EncodeToString(gid)
	if err := b.g.svc.Store().RecordGroupHub(t.Context(), gid, "m.localhost"); err != nil {
		t.Fatal(err)
	}
	conflicts := hubConflicts.WithLabelValues(b.g.DataDir, "deliver_message")
	before := counterValue(t, conflicts)

	createGroupAt(t, a, alice, gid)
	res := addAt(t, a, alice, false, bob)
	// a's sender delivers the Welcome to b, which refuses it for good
	// (403): a drops it.
	waitOutboxEmpty(t, a, "b.localhost")
	welcome := func() (int, moh.Code) {
		rid := make([]byte, 16)
		rand.Read(rid)
		st, raw := postProvider(t, b, "/deliver_message", signedDelivery(t, a, b, rid, gid, res.Welcome, bob.uri))
		var r moh.DSResponse
		if err := wire.Unmarshal(raw, &r, "DSResponse"); err != nil {
			t.Fatalf("answer %d %x: %v", st, raw, err)
		}
		return st, r.Error.Code
	}
	if st, code := welcome(); st != http.StatusForbidden || code != moh.CodeForbidden {
		t.Fatalf("a's Welcome at b: %d %s, want 403 forbidden", st, code)
	}
	if n := counterValue(t, conflicts) - before; n != 2 {
		t.Fatalf("caddy_mimi_hub_conflicts_total rose by %v, want 2 (a's sender's Welcome, then this one)", n)
	}
	if q := waitQueue(t, b, bob.uri, 0); len(q) != 0 {
		t.Fatalf("bob's queue holds %d messages after the refusal", len(q))
	}

	hubsAt := func(method string, wantStatus int) hubView {
		t.Helper()
		code, body := adminCall(t, adminOutbox{}.hubs, method, arg)
		var view map[string]hubView
		if code != wantStatus || json.Unmarshal(body, &view) != nil {
			t.Fatalf("%s %s: %d %s, want %d", method, arg, code, body, wantStatus)
		}
		return view[b.g.DataDir]
	}
	if v := hubsAt(http.MethodGet, http.StatusOK); v.Hub != "m.localhost" {
		t.Fatalf("GET /mimi/hubs at b: %+v, want m.localhost", v)
	}
	if v := hubsAt(http.MethodDelete, http.StatusOK); v.Forgotten != "m.localhost" {
		t.Fatalf("DELETE /mimi/hubs at b: %+v, want m.localhost forgotten", v)
	}
	if v, _ := json.Marshal(hubsAt(http.MethodGet, http.StatusOK)); !bytes.Contains(v, []byte("no hub recorded")) {
		t.Fatalf("GET /mimi/hubs at b after the delete: %s", v)
	}
	// Again: b has no record left, and a hosts the group, whose record
	// stays.
	if v := hubsAt(http.MethodDelete, http.StatusConflict); v.Forgotten != "" {
		t.Fatalf("DELETE /mimi/hubs again at b: %+v, want nothing forgotten", v)
	}
	if hub, err := a.g.svc.Store().GroupHub(t.Context(), gid); err != nil || hub != "a.localhost" {
		t.Fatalf("a's hub of its own group after the delete: %q, %v", hub, err)
	}

	if st, code := welcome(); st != http.StatusOK {
		t.Fatalf("a's Welcome at b after the delete: %d %s, want 200", st, code)
	}
	if q := waitQueue(t, b, bob.uri, 1); len(q) != 1 {
		t.Fatalf("bob's queue holds %d messages, want a's Welcome", len(q))
	}
	if hub, err := b.g.svc.Store().GroupHub(t.Context(), gid); err != nil || hub != "a.localhost" {
		t.Fatalf("b's hub of the group: %q, %v; want a.localhost", hub, err)
	}

	for _, tc := range []struct {
		name   string
		method string
		target string
		want   int
	}{
		{"no group id", http.MethodGet, "/mimi/hubs", http.StatusBadRequest},
		{"a group id that is not hex", http.MethodDelete, "/mimi/hubs?group_id=xyz", http.StatusBadRequest},
		{"an unknown group", http.MethodDelete, "/mimi/hubs?group_id=00ff", http.StatusNotFound},
		{"another method", http.MethodPost, arg, http.StatusMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := adminCall(t, adminOutbox{}.hubs, tc.method, tc.target); code != tc.want {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.target, code, body, tc.want)
			}
		})
	}
}

// counterValue reads c's value.
func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
