package localapi

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
)

// TestFetchEndedWhileReading requires a poll that may wait, whose
// context ends while the store reads (the gateway ends its waiting polls
// when the process exits), to get the empty list of a poll ended by its
// context, not the store's cancellation as backend_unavailable. A poll
// that may not wait has no such answer: the control shows that the store
// does fail on the ended context, so the first case runs that path.
func TestFetchEndedWhileReading(t *testing.T) {
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	api, err := New(Config{Domains: []string{"a.example"}, Store: st, Keys: seedKeys{}})
	if err != nil {
		t.Fatal(err)
	}
	ended, cancel := context.WithCancel(t.Context())
	cancel()
	client := []byte("mimi://a.example/d/alice/phone")
	t.Run("may wait", func(t *testing.T) {
		msgs, err := api.Fetch(ended, "alice", client, 0, 0, time.Hour)
		if err != nil || msgs == nil || len(msgs) != 0 {
			t.Fatalf("got %v, %v; want an empty list", msgs, err)
		}
	})
	t.Run("control: may not wait", func(t *testing.T) {
		if _, err := api.Fetch(ended, "alice", client, 0, 0, 0); err == nil {
			t.Fatal("the store read with an ended context succeeded; the case above proves nothing")
		}
	})
}
