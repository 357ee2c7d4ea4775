package storetest

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// outboxBenchDrainEvery is how many fan-outs BenchOutboxFanout writes
// before it delivers (deletes) everything pending, a page per
// destination, as the federation sender does.
const outboxBenchDrainEvery = 50

// BenchOutboxFanout measures, per op, the Deliver of a message of size
// bytes to the remote members of a hosted group on destinations
// providers (one outbox row each) and its share of their delivery: every
// outboxBenchDrainEvery ops, each destination's pending rows are read and
// removed with OutboxDelivered, timed too. s must be a fresh store; its
// outbox bound is lifted so that nothing is dropped.
func BenchOutboxFanout(b *testing.B, s store.Store, destinations, size int) {
	g := NewGroup(b, []byte("a group id of 32 bytes, say....."), 2)
	gid := g.State.GroupID()
	if err := s.CreateGroup(ctx(), store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		b.Fatal(err)
	}
	s.SetOutboxLimits(store.OutboxLimits{MaxMessages: 1 << 40, MaxBytes: 1 << 60})
	dests := make([]string, destinations)
	remote := make([]store.OutboxMessage, destinations)
	msg := make([]byte, size)
	for i := range dests {
		dests[i] = fmt.Sprintf("p%d.example", i)
		remote[i] = store.OutboxMessage{Sender: "a.example", Destination: dests[i], GroupID: gid,
			Recipients: []string{fmt.Sprintf("mimi://%s/d/carol/phone", dests[i])}, Message: msg}
	}
	drain := func() {
		for _, d := range dests {
			for {
				page, err := s.OutboxPending(ctx(), d, 0, store.MaxOutboxList)
				if err != nil {
					b.Fatal(err)
				}
				if len(page) == 0 {
					break
				}
				ids := make([]uint64, len(page))
				for i, e := range page {
					ids[i] = e.ID
				}
				if _, err := s.OutboxDelivered(ctx(), d, ids); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.SetBytes(int64(size))
	for i := uint64(0); b.Loop(); i++ {
		binary.BigEndian.PutUint64(msg, i) // each op's message its own
		if _, err := s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Remote: remote}); err != nil {
			b.Fatal(err)
		}
		if (i+1)%outboxBenchDrainEvery == 0 {
			drain()
		}
	}
	drain()
}
