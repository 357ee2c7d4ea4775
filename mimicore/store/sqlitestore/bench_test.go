package sqlitestore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// The write benchmarks include the fsync of every commit: they measure the
// latency of a durable write on the disk under t.TempDir().

func BenchmarkReserveComplete(b *testing.B) {
	s := openTemp(b)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	id := make([]byte, 16)
	body := make([]byte, 256)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		binary.BigEndian.PutUint64(id, uint64(i))
		d := sha256.Sum256(id)
		r, err := s.Reserve(ctx, "bench.example", id, d, exp)
		if err != nil || r.Status != store.ReplayNew {
			b.Fatalf("Reserve: %s %v", r.Status, err)
		}
		if err := s.Complete(ctx, "bench.example", id, d, store.Answer{Body: body}); err != nil {
			b.Fatalf("Complete: %v", err)
		}
	}
}

// BenchmarkReserveDuplicate measures the answer to a retry: a read in a
// write transaction that commits nothing.
func BenchmarkReserveDuplicate(b *testing.B) {
	s := openTemp(b)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	id := []byte("0123456789abcdef")
	d := sha256.Sum256(id)
	if _, err := s.Reserve(ctx, "bench.example", id, d, exp); err != nil {
		b.Fatal(err)
	}
	if err := s.Complete(ctx, "bench.example", id, d, store.Answer{Body: make([]byte, 256)}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r, err := s.Reserve(ctx, "bench.example", id, d, exp)
		if err != nil || r.Status != store.ReplayDuplicate {
			b.Fatalf("Reserve: %s %v", r.Status, err)
		}
	}
}

func BenchmarkMarkSpent(b *testing.B) {
	s := openTemp(b)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	key := make([]byte, 32)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		binary.BigEndian.PutUint64(key, uint64(i))
		first, err := s.MarkSpent(ctx, key, exp)
		if err != nil || !first {
			b.Fatalf("MarkSpent: %t %v", first, err)
		}
	}
}

// BenchmarkMarkSpentParallel shows the throughput of concurrent writers,
// which the single writer connection serialises.
func BenchmarkMarkSpentParallel(b *testing.B) {
	s := openTemp(b)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	b.ReportAllocs()
	var worker atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		key := make([]byte, 32)
		binary.BigEndian.PutUint64(key[8:], worker.Add(1))
		for i := uint64(0); pb.Next(); i++ {
			binary.BigEndian.PutUint64(key, i)
			if _, err := s.MarkSpent(ctx, key, exp); err != nil {
				b.Errorf("MarkSpent: %v", err)
				return
			}
		}
	})
}

func BenchmarkLookupPeerKey(b *testing.B) {
	s := openTemp(b)
	ctx := context.Background()
	now := time.Now()
	const peers = 100
	domains := make([]string, peers)
	for p := range domains {
		domain := fmt.Sprintf("peer%d.example", p)
		domains[p] = domain
		keys := make([]store.PeerKey, 3)
		for k := range keys {
			keys[k] = store.PeerKey{
				KeyID: []byte{byte(k)}, Scheme: 0x0807, PublicKey: make([]byte, 32),
				NotBefore: now, NotAfter: now.Add(24 * time.Hour), FetchedAt: now, CacheUntil: now.Add(time.Hour),
			}
		}
		if err := s.ReplacePeerKeys(ctx, domain, keys); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.LookupPeerKey(ctx, domains[i%peers], []byte{byte(i % 3)}); err != nil {
			b.Fatalf("LookupPeerKey: %v", err)
		}
	}
}

// BenchmarkLookupPeerKeyParallel shows lookups from the read-only pool
// running beside each other and beside a writer.
func BenchmarkLookupPeerKeyParallel(b *testing.B) {
	for _, readers := range []int{1, DefaultReaders} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			s := openTemp(b, WithReaders(readers))
			ctx := context.Background()
			now := time.Now()
			keys := []store.PeerKey{{
				KeyID: []byte{1}, Scheme: 0x0807, PublicKey: make([]byte, 32),
				NotBefore: now, NotAfter: now.Add(24 * time.Hour), FetchedAt: now, CacheUntil: now.Add(time.Hour),
			}}
			if err := s.ReplacePeerKeys(ctx, "peer.example", keys); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.LookupPeerKey(ctx, "peer.example", []byte{1}); err != nil {
						b.Errorf("LookupPeerKey: %v", err)
						return
					}
				}
			})
		})
	}
}

// benchWriters is the number of concurrent writers of the Parallel64
// benchmarks: as many callers as a loaded gateway has requests in flight.
const benchWriters = 64

// BenchmarkMarkSpentParallel64 measures spent-token throughput with 64
// concurrent callers per core, the case group commit is for.
func BenchmarkMarkSpentParallel64(b *testing.B) {
	benchParallel(b, 32, func(s *Store, key []byte, exp time.Time) error {
		if first, err := s.MarkSpent(context.Background(), key, exp); err != nil || !first {
			return fmt.Errorf("MarkSpent: %t %v", first, err)
		}
		return nil
	})
}

// BenchmarkReserveCompleteParallel64 measures the two durable writes of a
// provider request (Reserve, then Complete) with 64 concurrent callers per
// core; one op is one request.
func BenchmarkReserveCompleteParallel64(b *testing.B) {
	body := make([]byte, 256)
	benchParallel(b, 16, func(s *Store, id []byte, exp time.Time) error {
		ctx := context.Background()
		d := sha256.Sum256(id)
		r, err := s.Reserve(ctx, "bench.example", id, d, exp)
		if err != nil || r.Status != store.ReplayNew {
			return fmt.Errorf("Reserve: %s %v", r.Status, err)
		}
		if err := s.Complete(ctx, "bench.example", id, d, store.Answer{Body: body}); err != nil {
			return fmt.Errorf("Complete: %w", err)
		}
		return nil
	})
}

// BenchmarkFindRecordParallel64 is the one-write path of a provider
// request (store.ReplayLog) under the same load: a lookup on the reader
// pool, then the answer recorded in one write.
func BenchmarkFindRecordParallel64(b *testing.B) {
	body := make([]byte, 256)
	benchParallel(b, 16, func(s *Store, id []byte, exp time.Time) error {
		ctx := context.Background()
		if _, err := s.FindReplay(ctx, "bench.example", id); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("FindReplay: %w", err)
		}
		if _, err := s.RecordReplay(ctx, "bench.example", id, sha256.Sum256(id), store.Answer{Body: body}, exp); err != nil {
			return fmt.Errorf("RecordReplay: %w", err)
		}
		return nil
	})
}

// benchParallel runs step with benchWriters callers per core, each on
// distinct keys of keySize bytes, and reports the throughput.
func benchParallel(b *testing.B, keySize int, step func(s *Store, key []byte, exp time.Time) error) {
	s := openTemp(b)
	exp := time.Now().Add(time.Hour)
	b.ReportAllocs()
	b.SetParallelism(benchWriters)
	st0 := s.Stats()
	var worker atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		key := make([]byte, keySize)
		binary.BigEndian.PutUint64(key[8:], worker.Add(1))
		for i := uint64(0); pb.Next(); i++ {
			binary.BigEndian.PutUint64(key, i)
			if err := step(s, key, exp); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportThroughput(b, s, st0)
}

// reportThroughput adds operations per second of wall time, which for a
// parallel benchmark is what a load generator would see, and the commits
// (fsyncs) of the write path per operation since st0.
func reportThroughput(b *testing.B, s *Store, st0 Stats) {
	if sec := b.Elapsed().Seconds(); sec > 0 {
		b.ReportMetric(float64(b.N)/sec, "ops/s")
	}
	st := s.Stats()
	fsyncs := st.Commits - st0.Commits
	if st.Syncs > st0.Syncs || st.Commits > st0.Commits && st.Syncs > 0 {
		fsyncs = st.Syncs - st0.Syncs // the syncer's, each for one or more commits
	}
	b.ReportMetric(float64(fsyncs)/float64(b.N), "fsyncs/op")
	if st.Retried > st0.Retried {
		b.ReportMetric(float64(st.Retried-st0.Retried)/float64(st.Commits-st0.Commits), "retries/commit")
	}
}

// BenchmarkOutboxFanout measures a hosted group's message to members on
// 1 and 20 other providers, written to the outbox and delivered from it
// (storetest.BenchOutboxFanout).
func BenchmarkOutboxFanout(b *testing.B) {
	for _, dests := range []int{1, 20} {
		for _, size := range []int{1 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("destinations=%d/size=%d", dests, size), func(b *testing.B) {
				storetest.BenchOutboxFanout(b, openTemp(b), dests, size)
			})
		}
	}
}
