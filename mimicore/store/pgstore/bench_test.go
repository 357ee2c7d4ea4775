package pgstore

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// BenchmarkAppendParallel appends one message to one of 64 queues from
// many goroutines at once: the throughput of the global sequence row,
// which every numbered write locks until its commit (one WAL flush each,
// shared by concurrent commits).
func BenchmarkAppendParallel(b *testing.B) {
	s := openTemp(b, Options{})
	msg := make([]byte, 512)
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			d := store.Delivery{Recipients: []string{fmt.Sprintf("mimi://a.example/d/u%d/c", i%64)}, Message: msg}
			if _, err := s.Append(context.Background(), d); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkMarkSpentParallel is the one-statement check-and-set of the
// replay cache, seen signatures and spent tokens, from many goroutines.
func BenchmarkMarkSpentParallel(b *testing.B) {
	s := openTemp(b, Options{})
	exp := time.Now().Add(time.Hour)
	var n atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.MarkSpent(context.Background(), fmt.Appendf(nil, "token %d", n.Add(1)), exp); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGroupDeliverDedup is the Deliver of an application message of
// a group hosted here (the group post, an outbox message for one other
// provider) from many goroutines, with the record that suppresses its
// copies (store.Fanout.Dedup, sent in the round trip that locks the
// group's row) and without it.
func BenchmarkGroupDeliverDedup(b *testing.B) {
	for _, dedup := range []bool{true, false} {
		b.Run(fmt.Sprintf("dedup=%v", dedup), func(b *testing.B) {
			s := openTemp(b, Options{})
			g := storetest.NewGroup(b, []byte("a group id of 32 bytes, say....."), 2)
			gid := g.State.GroupID()
			if err := s.CreateGroup(context.Background(), store.GroupCreation{Hub: "a.example", State: g.State,
				Members: []string{"mimi://a.example/d/alice/phone", "mimi://a.example/d/bob/phone"}}); err != nil {
				b.Fatal(err)
			}
			var n atomic.Uint64
			now := time.Now()
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					msg := fmt.Appendf(make([]byte, 0, 466), "message %d", i)
					msg = msg[:466]
					f := store.Fanout{Group: &store.GroupPost{GroupID: gid, Sender: "mimi://a.example/d/alice/phone", Message: msg,
						Except: "mimi://a.example/d/alice/phone"},
						Remote: []store.OutboxMessage{{Sender: "a.example", Destination: "c.example", GroupID: gid,
							Recipients: []string{"mimi://c.example/d/carol/phone"}, Message: msg}}}
					if dedup {
						key := sha256.Sum256(msg)
						f.Dedup, f.DedupExpires = key[:], now.Add(7*24*time.Hour)
					}
					if _, err := s.Deliver(context.Background(), gid, g.State.Epoch(), f); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkOutboxFanout measures a hosted group's message to members on
// 1 and 20 other providers, written to the outbox and delivered from it
// (storetest.BenchOutboxFanout).
func BenchmarkOutboxFanout(b *testing.B) {
	for _, dests := range []int{1, 20} {
		for _, size := range []int{1 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("destinations=%d/size=%d", dests, size), func(b *testing.B) {
				storetest.BenchOutboxFanout(b, openTemp(b, Options{}), dests, size)
			})
		}
	}
}
