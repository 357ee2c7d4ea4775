package pgstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestReplacePeerKeysAcrossStores has two stores on one database replace
// a peer's keys at once, round after round (two gateways that missed the
// cache): every replacement succeeds, and the peer has the keys of one of
// them.
func TestReplacePeerKeysAcrossStores(t *testing.T) {
	a, b := openPair(t, 4)
	ctx := context.Background()
	now := time.Now()
	const rounds = 100
	for round := range rounds {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start := make(chan struct{})
		for i, s := range []*Store{a, b} {
			keys := []store.PeerKey{{KeyID: []byte(fmt.Sprint("k", round)), Scheme: 0x0807, PublicKey: []byte(fmt.Sprint("pub", i)),
				NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), FetchedAt: now, CacheUntil: now.Add(time.Hour)}}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = s.ReplacePeerKeys(ctx, "peer.example", keys)
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: ReplacePeerKeys %d: %v", round, i, err)
			}
		}
		var n int
		if err := a.pool.QueryRow(ctx, `SELECT count(*) FROM peer_keys WHERE domain = 'peer.example'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Fatalf("round %d: %d keys cached, want 1", round, n)
		}
	}
}
