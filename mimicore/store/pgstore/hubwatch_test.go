package pgstore

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// hubEvents is a WatchHubForgets function that passes what it is told
// on, and the channel it passes it on.
func hubEvents(t *testing.T, s *Store) (<-chan []byte, func()) {
	t.Helper()
	ch := make(chan []byte, 16)
	stop := s.WatchHubForgets(func(gid []byte) { ch <- gid })
	t.Cleanup(stop)
	return ch, stop
}

// nextHubEvent returns what ch passes on next, failing t after
// wakeTimeout.
func nextHubEvent(t *testing.T, what string, ch <-chan []byte) []byte {
	t.Helper()
	select {
	case gid := <-ch:
		return gid
	case <-time.After(wakeTimeout):
		t.Fatalf("%s: not told within %v", what, wakeTimeout)
		return nil
	}
}

// TestHubForgetsAcrossStores checks WatchHubForgets: a hub record that
// one Store deletes is reported to the other Store's watchers with its
// group id, not to the deleting Store's own (its gateways forget it
// themselves); a deletion that finds no record reports nothing; a
// stopped watch is not called.
func TestHubForgetsAcrossStores(t *testing.T) {
	s1, s2 := openPair(t, 4)
	ctx := context.Background()
	g1, g2, g3 := []byte("group one"), []byte("group two"), []byte("group three")
	for _, g := range [][]byte{g1, g2, g3} {
		if err := s1.RecordGroupHub(ctx, g, "wrong.example"); err != nil {
			t.Fatalf("RecordGroupHub: %v", err)
		}
	}
	heard1, _ := hubEvents(t, s1)
	heard2, _ := hubEvents(t, s2)
	stopped, stop := hubEvents(t, s2)
	stop()

	if _, err := s1.ForgetGroupHub(ctx, []byte("never recorded")); err == nil {
		t.Fatal("ForgetGroupHub of an id without a record succeeded")
	}
	if _, err := s1.ForgetGroupHub(ctx, g1); err != nil {
		t.Fatalf("ForgetGroupHub: %v", err)
	}
	// Notifications arrive in commit order: store 2's next event is g1
	// (not the failed deletion), and store 1's first one is g2, which
	// store 2 deletes next (not its own g1).
	if gid := nextHubEvent(t, "store 2", heard2); !bytes.Equal(gid, g1) {
		t.Fatalf("store 2 told %q, want %q", gid, g1)
	}
	if _, err := s2.ForgetGroupHub(ctx, g2); err != nil {
		t.Fatalf("ForgetGroupHub: %v", err)
	}
	if gid := nextHubEvent(t, "store 1", heard1); !bytes.Equal(gid, g2) {
		t.Fatalf("store 1 told %q first, want %q", gid, g2)
	}
	if _, err := s1.ForgetGroupHub(ctx, g3); err != nil {
		t.Fatalf("ForgetGroupHub: %v", err)
	}
	if gid := nextHubEvent(t, "store 2", heard2); !bytes.Equal(gid, g3) {
		t.Fatalf("store 2 told %q, want %q", gid, g3)
	}
	// Each event calls every watch at once: the stopped one would have
	// been called by now.
	select {
	case gid := <-stopped:
		t.Fatalf("a stopped watch was told %q", gid)
	default:
	}
}

// TestHubForgetsAfterReconnect kills the listener's connection: once it
// listens again, the watchers are told nil (a deletion may have been
// missed meanwhile), and then hear the other Store's deletions again.
func TestHubForgetsAfterReconnect(t *testing.T) {
	s1, s2 := openPair(t, 4)
	ctx := context.Background()
	heard, _ := hubEvents(t, s1)
	pid := s1.listenPID()
	if pid == 0 {
		t.Fatal("store 1 has no listener connection after Open")
	}
	var killed bool
	if err := s2.pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, int32(pid)).Scan(&killed); err != nil || !killed {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, killed, err)
	}
	if gid := nextHubEvent(t, "after the reconnect", heard); gid != nil {
		t.Fatalf("told %q after the reconnect, want nil", gid)
	}
	g := []byte("group")
	if err := s2.RecordGroupHub(ctx, g, "wrong.example"); err != nil {
		t.Fatalf("RecordGroupHub: %v", err)
	}
	if _, err := s2.ForgetGroupHub(ctx, g); err != nil {
		t.Fatalf("ForgetGroupHub: %v", err)
	}
	if gid := nextHubEvent(t, "a deletion after the reconnect", heard); !bytes.Equal(gid, g) {
		t.Fatalf("told %q, want %q", gid, g)
	}
}
