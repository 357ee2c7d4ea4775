package pgstore

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestOutboxReadWithinByteCap writes a backlog of large messages, many
// times store.MaxOutboxListBytes, and checks that reading its head, as
// OutboxPending and OutboxClaim do for a limit of 256 messages, brings
// from the database about the messages it returns, not every row up to
// the limit: the allocations of the read stay within a small multiple of
// the bytes returned.
func TestOutboxReadWithinByteCap(t *testing.T) {
	const messages = 96
	s := openTemp(t, Options{MaxConns: 2})
	ctx := context.Background()
	for i := 0; i < messages; i += 8 {
		var w store.OutboxWrite
		for j := i; j < i+8; j++ {
			body := make([]byte, store.MaxQueuedMessageSize)
			copy(body, fmt.Sprint(j))
			w.Messages = append(w.Messages, store.OutboxMessage{Sender: "a.example", Destination: "b.example",
				GroupID: []byte("g"), Recipients: []string{"mimi://b.example/d/u/d"}, Message: body})
		}
		if _, err := s.OutboxAdd(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		read func() ([]store.OutboxEntry, error)
	}{
		{"OutboxPending", func() ([]store.OutboxEntry, error) { return s.OutboxPending(ctx, "b.example", 0, 256) }},
		{"OutboxClaim", func() ([]store.OutboxEntry, error) {
			entries, ok, err := s.OutboxClaim(ctx, "b.example", "holder", time.Now(), time.Minute, 256)
			if err == nil && !ok {
				err = fmt.Errorf("the claim was refused")
			}
			return entries, err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			entries, err := tc.read()
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for _, e := range entries {
				got += len(e.Message)
			}
			if got < store.MaxOutboxListBytes || got > store.MaxOutboxListBytes+store.MaxQueuedMessageSize {
				t.Fatalf("read %d entries of %d bytes, want about %d bytes", len(entries), got, store.MaxOutboxListBytes)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("read %d MiB, allocated %d MiB", got>>20, alloc>>20)
			if alloc > 3*uint64(got) {
				t.Fatalf("reading %d bytes of messages allocated %d bytes: the rows past the byte cap came from the database too", got, alloc)
			}
		})
	}
}
