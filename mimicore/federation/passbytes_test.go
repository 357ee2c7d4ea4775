package federation

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestSenderPassBytesBounded drains four destinations with a batch of
// 16 MiB each while the process's bound on the passes' bytes leaves room
// for one such pass: the destinations' passes wait for each other, so no
// more than one batch is held at once, and everything is delivered.
func TestSenderPassBytesBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 64 MiB of messages")
	}
	saved := passBytes
	passBytes = semaphore.NewWeighted(passReserve)
	t.Cleanup(func() { passBytes = saved })
	st := openOutbox(t)
	const dests, per = 4, store.MaxOutboxListBytes / store.MaxQueuedMessageSize
	for d := range dests {
		for i := range per {
			body := make([]byte, store.MaxQueuedMessageSize)
			copy(body, fmt.Sprint(d, i))
			if _, err := st.OutboxAdd(t.Context(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example",
				Destination: fmt.Sprintf("d%d.example", d), GroupID: []byte("g"), Recipients: []string{"mimi://x.example/d/u/d"},
				Message: body}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mu sync.Mutex
	sending := map[string]int{} // messages in flight per destination
	most, delivered := 0, 0
	s := &Sender{Outbox: st, Transport: transportFunc(func(ctx context.Context, _, dest string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
		mu.Lock()
		sending[dest]++
		most = max(most, len(sending))
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		if sending[dest]--; sending[dest] == 0 {
			delete(sending, dest)
		}
		delivered++
		mu.Unlock()
		return accepted(ctx, "", "", 0, nil)
	})}
	runSender(t, s)
	waitFor(t, "every message", func() bool { mu.Lock(); defer mu.Unlock(); return delivered == dests*per })
	if most > 1 {
		t.Fatalf("%d destinations were sent batches of 16 MiB at once under a bound of one such pass", most)
	}
}
