package sqlitestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/caddy-mimi/caddy-mimi/internal/cputime"
	"math"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// benchLimits lifts the queue limits, so a long benchmark never fills a
// queue.
var benchLimits = store.QueueLimits{MaxMessages: math.MaxInt32, MaxBytes: math.MaxInt64}

func benchRecipients(prefix string, n int) []string {
	r := make([]string, n)
	for i := range r {
		r[i] = fmt.Sprintf("mimi://a.example/d/%s/u%d/dev", prefix, i)
	}
	return r
}

// BenchmarkAppend measures one durable Append of a 1 KiB message, one
// caller at a time (every op waits for its own fsync), to 1 and to 100
// recipients; ops/s counts Appends, msgs/s queue entries.
func BenchmarkAppend(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprint("recipients=", n), func(b *testing.B) {
			s := openTemp(b)
			d := store.Delivery{Recipients: benchRecipients("serial", n), GroupID: []byte("group"),
				Sender: "b.example", Message: make([]byte, 1024), Limits: benchLimits}
			st0 := s.Stats()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Append(context.Background(), d); err != nil {
					b.Fatal(err)
				}
			}
			reportThroughput(b, s, st0)
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkAppendParallel64 is BenchmarkAppend with 64 callers per core,
// each fanning out to its own recipients: the load group commit is for.
func BenchmarkAppendParallel64(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprint("recipients=", n), func(b *testing.B) {
			s := openTemp(b)
			var worker atomic.Uint64
			st0 := s.Stats()
			b.ReportAllocs()
			b.SetParallelism(benchWriters)
			b.RunParallel(func(pb *testing.PB) {
				d := store.Delivery{Recipients: benchRecipients(fmt.Sprint("w", worker.Add(1)), n), GroupID: []byte("group"),
					Sender: "b.example", Message: make([]byte, 1024), Limits: benchLimits}
				for pb.Next() {
					if _, err := s.Append(context.Background(), d); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportThroughput(b, s, st0)
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkFetch measures a Fetch of up to 100 messages of 1 KiB from a
// queue of 10,000, at a cursor that moves through it (a read on the
// reader pool, no write).
func BenchmarkFetch(b *testing.B) {
	s := openTemp(b)
	const queued = 10000
	client := "mimi://a.example/d/reader/dev"
	ctx := context.Background()
	// Filled in batches of concurrent Appends, so that setup is quick.
	done := make(chan error, 100)
	for range 100 {
		go func() {
			var err error
			for range queued / 100 {
				if _, err = s.Append(ctx, store.Delivery{Recipients: []string{client}, Message: make([]byte, 1024),
					Limits: benchLimits}); err != nil {
					break
				}
			}
			done <- err
		}()
	}
	for range 100 {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	var cursor uint64
	for b.Loop() {
		msgs, err := s.Fetch(ctx, client, cursor, store.FetchLimit{Messages: 100})
		if err != nil || len(msgs) == 0 {
			b.Fatalf("Fetch after %d: %d messages, %v", cursor, len(msgs), err)
		}
		cursor = (cursor + 100) % (queued - 100)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkClaimKeyPackageParallel64 measures claims with 64 callers per
// core, spread over 128 clients whose packages were published before the
// timer started (a client that runs out gets 256 more, inside the timing).
func BenchmarkClaimKeyPackageParallel64(b *testing.B) {
	s := openTemp(b)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	const clients = 128
	var serial atomic.Uint64
	publish := func(client string) error {
		kps := make([]store.KeyPackage, store.MaxKeyPackagesPerClient)
		for j := range kps {
			ref := make([]byte, 16)
			binary.BigEndian.PutUint64(ref, serial.Add(1))
			kps[j] = store.KeyPackage{Suite: 1, Ref: ref, KeyPackage: make([]byte, 512), NotAfter: exp}
		}
		return s.PublishKeyPackages(ctx, client, kps, store.KeyPackageLimits{})
	}
	name := func(i uint64) string { return fmt.Sprint("mimi://a.example/d/c", i%clients, "/dev") }
	for i := range uint64(clients) {
		if err := publish(name(i)); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	st0 := s.Stats()
	b.SetParallelism(benchWriters)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		client := name(next.Add(1))
		for pb.Next() {
			kp, err := s.ClaimKeyPackage(ctx, client, 1)
			if err == nil && kp.LastResort {
				err = fmt.Errorf("got a last-resort package")
			}
			if errors.Is(err, store.ErrNotFound) {
				err = publish(client)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportThroughput(b, s, st0)
}

// BenchmarkDeliverParallel64 is the store's share of a deliver_message
// from a peer: 64 callers per core, each Append a distinct 466-byte
// message to 4 recipients with its Dedup digest, as mimicore/ds writes it
// (deliver_message keeps no replay entry, docs/protocol.md §4 step 8).
// Digests are spread over the key space as real ones are (a hash of the
// counter), so that their inserts land on random B-tree pages. In
// "shared-queues" every message goes to the same 4 clients, as in
// examples/loadtest's deliver mode; in "spread-queues" each caller has 4
// clients of its own, so a batch touches many queues' pages. syscw/op and
// wchar/op are the process's write system calls and bytes written
// (/proc/self/io, Linux), the checkpointer's included.
//
// Each shape runs with the log synced by the syncer, overlapping the next
// batch (sync=syncer, the default), and by each COMMIT (sync=commit,
// WithSyncAtCommit).
func BenchmarkDeliverParallel64(b *testing.B) {
	for _, shape := range []string{"shared-queues", "spread-queues"} {
		for _, sync := range []string{"syncer", "commit"} {
			var opts []Option
			if sync == "commit" {
				opts = append(opts, WithSyncAtCommit())
			}
			b.Run(shape+"/sync="+sync, func(b *testing.B) { benchDeliver(b, shape == "shared-queues", true, opts...) })
		}
	}
}

// BenchmarkDeliverDedup measures what the duplicate record of each
// delivered message (store.Delivery.Dedup, keyed by a digest: a random
// place in its table's B-tree) costs: shared queues, the syncer, with the
// record and without it. Without it is not a way the gateway runs, since
// deliver_message's duplicate suppression needs the record
// (docs/protocol.md §9).
func BenchmarkDeliverDedup(b *testing.B) {
	for _, dedup := range []bool{true, false} {
		b.Run(fmt.Sprintf("dedup=%v", dedup), func(b *testing.B) { benchDeliver(b, true, dedup) })
	}
}

// benchDeliver runs Appends of distinct 466-byte messages for 4 recipients
// from benchWriters goroutines: the recipients the same for all (shared)
// or per goroutine; with a duplicate record each (dedup) or without.
func benchDeliver(b *testing.B, shared, dedup bool, opts ...Option) {
	s := openTemp(b, opts...)
	var worker, seq atomic.Uint64
	st0 := s.Stats()
	b.ReportAllocs()
	b.SetParallelism(benchWriters)
	now := time.Now()
	c0, cok := cputime.Process()
	io0, _ := readProcIO()
	b.RunParallel(func(pb *testing.PB) {
		prefix := "common"
		if !shared {
			prefix = fmt.Sprint("w", worker.Add(1))
		}
		d := store.Delivery{Recipients: benchRecipients(prefix, 4), GroupID: []byte("a group id of 32 bytes, say....."),
			Sender: "a.example", Message: make([]byte, 466), Limits: benchLimits, DedupExpires: now.Add(7 * 24 * time.Hour)}
		for pb.Next() {
			n := seq.Add(1)
			binary.BigEndian.PutUint64(d.Message, n)
			key := digestOfUint(n * 0x9E3779B97F4A7C15) // a bijection: distinct, scattered
			if dedup {
				d.Dedup = key[:]
			}
			if _, err := s.Append(context.Background(), d); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if c1, ok := cputime.Process(); ok && cok {
		b.ReportMetric(float64((c1-c0).Microseconds())/float64(b.N), "cpu-µs/op")
	}
	if io1, ok := readProcIO(); ok && io0.ok {
		b.ReportMetric(float64(io1.syscw-io0.syscw)/float64(b.N), "syscw/op")
		b.ReportMetric(float64(io1.wchar-io0.wchar)/float64(b.N), "wchar/op")
	}
	reportThroughput(b, s, st0)
}

// procIO is the write counters of /proc/self/io.
type procIO struct {
	syscw, wchar int64
	ok           bool
}

// readProcIO reads this process's write counters, where the system has
// them.
func readProcIO() (procIO, bool) {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return procIO{}, false
	}
	var io procIO
	for line := range strings.SplitSeq(string(data), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		n, err := strconv.ParseInt(v, 10, 64)
		switch {
		case err != nil:
		case k == "syscw":
			io.syscw = n
		case k == "wchar":
			io.wchar = n
		}
	}
	io.ok = true
	return io, true
}

// digestOfUint is a distinct 32-byte key per n.
func digestOfUint(n uint64) [32]byte {
	var k [32]byte
	binary.BigEndian.PutUint64(k[:], n)
	k[31] = 0xd
	return k
}

// BenchmarkGroupDeliverDedup measures the Deliver of an application
// message of a group hosted here (the group post for its local members,
// and an outbox message for one other provider) from benchWriters
// goroutines, with the record that suppresses its copies
// (store.Fanout.Dedup, one row with the seen signatures, written by
// send_message) and without it.
func BenchmarkGroupDeliverDedup(b *testing.B) {
	for _, dedup := range []bool{true, false} {
		b.Run(fmt.Sprintf("dedup=%v", dedup), func(b *testing.B) {
			s := openTemp(b)
			g := storetest.NewGroup(b, []byte("a group id of 32 bytes, say....."), 2)
			gid := g.State.GroupID()
			if err := s.CreateGroup(context.Background(), store.GroupCreation{Hub: "a.example", State: g.State,
				Members: benchRecipients("member", 4)}); err != nil {
				b.Fatal(err)
			}
			var seq atomic.Uint64
			now := time.Now()
			st0 := s.Stats()
			b.ReportAllocs()
			b.SetParallelism(benchWriters)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				msg := make([]byte, 466)
				for pb.Next() {
					n := seq.Add(1)
					binary.BigEndian.PutUint64(msg, n)
					f := store.Fanout{Group: &store.GroupPost{GroupID: gid, Sender: "mimi://a.example/d/member/u0/dev", Message: msg,
						Except: "mimi://a.example/d/member/u0/dev"},
						Remote: []store.OutboxMessage{{Sender: "a.example", Destination: "c.example", GroupID: gid,
							Recipients: []string{"mimi://c.example/d/carol/phone"}, Message: msg}}}
					if dedup {
						key := digestOfUint(n * 0x9E3779B97F4A7C15)
						f.Dedup, f.DedupExpires = key[:], now.Add(7*24*time.Hour)
					}
					if _, err := s.Deliver(context.Background(), gid, g.State.Epoch(), f); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportThroughput(b, s, st0)
		})
	}
}
