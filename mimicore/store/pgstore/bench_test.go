package pgstore

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
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
