package sqlitestore

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// benchChain is a group built with the mls client and the commits of
// benchChainLen epochs that follow its base state.
type benchChain struct {
	base    *storetest.Group
	commits []store.EpochCommit
}

// benchChainLen is how many epochs a benchmark commits before it starts
// the group again from its base (with the timer stopped). Each commit of a
// freshly built group encrypts to O(n) members (its parent nodes are
// blank), so building the chain dominates the set-up at 10,000 members.
const benchChainLen = 8

var benchChains = map[int]*benchChain{}

func chainOf(b *testing.B, members int) *benchChain {
	b.Helper()
	if c, ok := benchChains[members]; ok {
		return c
	}
	g := storetest.NewGroup(b, fmt.Appendf(nil, "bench group %d", members), members)
	c := &benchChain{base: g}
	for range benchChainLen {
		var ec store.EpochCommit
		g, ec = g.Commit(b) // a path-only update by the creator
		c.commits = append(c.commits, ec)
	}
	benchChains[members] = c
	return c
}

var benchSizes = []int{100, 1000, 10000}

// BenchmarkGroupCommit measures CommitEpoch of a path-only commit (the
// diff of the states, the conditional UPDATE, the changed positions, the
// fsync) in groups of growing size, and the bytes of the rows it writes.
// The cost must not grow with the group beyond its O(log n) path. Every
// benchChainLen commits the group is created again from its base, with the
// timer stopped.
func BenchmarkGroupCommit(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprint("members=", n), func(b *testing.B) {
			c := chainOf(b, n)
			s := openTemp(b)
			ctx := context.Background()
			id := c.base.State.GroupID()
			var bytes, commits uint64
			var walBytes int64
			wal := dbPath(b, s) + "-wal"
			for i := 0; b.Loop(); i++ {
				k := i % len(c.commits)
				if k == 0 {
					b.StopTimer()
					if i > 0 {
						if err := s.DeleteGroup(ctx, id); err != nil {
							b.Fatal(err)
						}
					}
					if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: c.base.State}); err != nil {
						b.Fatal(err)
					}
					// Move the bulk write of the set-up out of the WAL,
					// so that the commits measured do not pay for its
					// checkpoint.
					if _, err := s.w.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				before, walBefore := s.Stats().GroupBytes, walSize(b, wal)
				if err := commitErr(s.CommitEpoch(ctx, c.commits[k])); err != nil {
					b.Fatal(err)
				}
				bytes += s.Stats().GroupBytes - before
				walBytes += walSize(b, wal) - walBefore
				commits++
			}
			b.ReportMetric(float64(bytes)/float64(commits), "bytes-written/commit")
			b.ReportMetric(float64(walBytes)/float64(commits), "wal-bytes/commit")
		})
	}
}

// BenchmarkGroupLoad measures LoadGroup after a restart (no cached state:
// the head and every tree position read from the file and the state
// restored without rehashing) and with the state cached (the head read and
// compared).
func BenchmarkGroupLoad(b *testing.B) {
	for _, n := range benchSizes {
		c := chainOf(b, n)
		for _, mode := range []struct {
			name  string
			cache int
		}{{"restart", 0}, {"cached", DefaultGroupCacheNodes}} {
			b.Run(fmt.Sprintf("%s/members=%d", mode.name, n), func(b *testing.B) {
				s := openTemp(b, WithGroupCache(mode.cache))
				ctx := context.Background()
				if err := s.CreateGroup(ctx, store.GroupCreation{Hub: "hub.example", State: c.base.State}); err != nil {
					b.Fatal(err)
				}
				for _, ec := range c.commits {
					if err := commitErr(s.CommitEpoch(ctx, ec)); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				for b.Loop() {
					g, err := s.LoadGroup(ctx, c.base.State.GroupID())
					if err != nil {
						b.Fatal(err)
					}
					if g.Epoch() != c.commits[len(c.commits)-1].Next.Epoch() {
						b.Fatalf("loaded epoch %d", g.Epoch())
					}
				}
			})
		}
	}
}

// walSize returns the size of the WAL file: its growth over a commit is
// what SQLite wrote for it (whole 4 KiB pages, before the fsync).
func walSize(tb testing.TB, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}
