package sqlitestore

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// TestOutboxBacklog checks the per-destination backlog the operator sees:
// counts and the oldest message's time, shrinking as messages are
// delivered, and gone with the last one.
func TestOutboxBacklog(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	g := storetest.NewGroup(t, []byte("backlog group"), 1)
	if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Second)
	msg := func(dest string) store.OutboxMessage {
		return store.OutboxMessage{Sender: "a.example", Destination: dest, GroupID: g.State.GroupID(),
			Recipients: []string{"mimi://" + dest + "/d/u/d"}, Message: []byte("m")}
	}
	for range 2 {
		if _, err := s.Deliver(ctx, g.State.GroupID(), g.State.Epoch(), store.Fanout{Remote: []store.OutboxMessage{
			msg("c.example"), msg("b.example")}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Deliver(ctx, g.State.GroupID(), g.State.Epoch(), store.Fanout{Remote: []store.OutboxMessage{msg("c.example")}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.OutboxBacklog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Destination != "b.example" || got[0].Messages != 2 || got[1].Destination != "c.example" ||
		got[1].Messages != 3 || got[0].Oldest.Before(before) || got[0].Oldest.After(time.Now()) {
		t.Fatalf("backlog %+v, want b.example 2 and c.example 3, with their oldest times", got)
	}
	pending, err := s.OutboxPending(ctx, "b.example", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.OutboxDelivered(ctx, "b.example", []uint64{pending[0].ID, pending[1].ID}); err != nil {
		t.Fatal(err)
	}
	got, err = s.OutboxBacklog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Destination != "c.example" || got[0].Messages != 3 {
		t.Fatalf("backlog %+v after b.example's delivery, want c.example 3 alone", got)
	}
}
