package pgstore

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestServerCrash crashes the database server (an immediate shutdown: no
// checkpoint, recovery from the WAL on restart) in the middle of a burst of
// writes from many goroutines: every write that was acknowledged, a spent
// token, a completed replay answer or a queued message, is there after the
// restart.
func TestServerCrash(t *testing.T) {
	srv := pgtest.NewServer(t)
	dsn := srv.NewDB(t)
	ctx := context.Background()
	s, err := Open(ctx, dsn, Options{MaxConns: 8})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	exp := time.Now().Add(time.Hour)
	const workers, sender, client = 16, "a.example", "mimi://a.example/d/alice/phone"
	var (
		mu     sync.Mutex
		tokens [][]byte
		ids    [][]byte
		seqs   = map[uint64]string{}
		wg     sync.WaitGroup
	)
	crashed := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-crashed:
					return
				default:
				}
				key := fmt.Appendf(nil, "%d/%d", w, i)
				switch i % 3 {
				case 0:
					if first, err := s.MarkSpent(ctx, key, exp); err == nil && first {
						mu.Lock()
						tokens = append(tokens, key)
						mu.Unlock()
					}
				case 1:
					d := sha256.Sum256(key)
					if r, err := s.Reserve(ctx, sender, key, d, exp); err != nil || r.Status != store.ReplayNew {
						continue
					}
					if err := s.Complete(ctx, sender, key, d, store.Answer{Body: key}); err == nil {
						mu.Lock()
						ids = append(ids, key)
						mu.Unlock()
					}
				case 2:
					out, err := s.Append(ctx, store.Delivery{Recipients: []string{client}, Message: key})
					if err == nil && out[0].Err == nil {
						mu.Lock()
						seqs[out[0].Seq] = string(key)
						mu.Unlock()
					}
				}
			}
		}()
	}
	// The crash comes amid a stream of writes, once each kind has had
	// one acknowledged, however slowly a loaded machine gets there (30 s
	// only against a hang; the check below then fails).
	time.Sleep(500 * time.Millisecond)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		some := len(tokens) > 0 && len(ids) > 0 && len(seqs) > 0
		mu.Unlock()
		if some {
			break
		}
	}
	srv.Crash(t)
	close(crashed)
	wg.Wait()
	s.Close()
	if len(tokens) == 0 || len(ids) == 0 || len(seqs) == 0 {
		t.Fatalf("only %d tokens, %d answers and %d messages acknowledged before the crash", len(tokens), len(ids), len(seqs))
	}
	t.Logf("acknowledged before the crash: %d spent tokens, %d answers, %d queued messages", len(tokens), len(ids), len(seqs))

	srv.Restart(t)
	s, err = Open(ctx, dsn, Options{})
	if err != nil {
		t.Fatalf("reopening after the crash: %v", err)
	}
	defer s.Close()
	for _, k := range tokens {
		if first, err := s.MarkSpent(ctx, k, exp); err != nil || first {
			t.Fatalf("acknowledged spent token %s after the crash: first use %t, %v", k, first, err)
		}
	}
	for _, k := range ids {
		e, err := s.FindReplay(ctx, sender, k)
		if err != nil || e.Pending || string(e.Answer.Body) != string(k) {
			t.Fatalf("acknowledged answer %s after the crash: %+v, %v", k, e, err)
		}
	}
	got := map[uint64]string{}
	for after := uint64(0); ; {
		msgs, err := s.Fetch(ctx, client, after, store.FetchLimit{Messages: store.MaxFetchMessages})
		if err != nil {
			t.Fatalf("Fetch after the crash: %v", err)
		}
		if len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			got[m.Seq] = string(m.Message)
			after = m.Seq
		}
	}
	for seq, msg := range seqs {
		if got[seq] != msg {
			t.Fatalf("acknowledged message %d (%s) after the crash: %q", seq, msg, got[seq])
		}
	}
}
