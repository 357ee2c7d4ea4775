package ds

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// BenchmarkUpdateClient measures the Delivery Service's handling of one
// update_client commit (authentication, RFC 9420 validation, rules,
// GroupInfo, bindings of the committer's new leaf, and the conditional
// write to a real sqlitestore) in groups of 100, 1,000 and 10,000
// members. The client side's commit is not timed. The GroupInfo the
// committer signs omits the ratchet tree, as MIMI clients do.
func BenchmarkUpdateClient(b *testing.B) {
	// Not 10,000: right after the Adds the tree is blank, and a commit
	// then carries a path secret for every member, about 1 MB at 10,000,
	// more than a message the DS delivers (MaxDeliveredMessage: 413
	// too_large). BenchmarkPopulatedCommit measures a long-lived group
	// of 10,000.
	for _, n := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			if n > 1000 && testing.Short() {
				b.Skip("10,000 members in -short mode")
			}
			h := newHarness(b)
			alice := h.newTClient(b, "alice", "phone", false)
			gid := []byte(fmt.Sprint("bench ", n))
			h.mustDo(b, "create_group", createBody(b, alice, gid))
			others := make([]*tclient, n-1)
			for i := range others {
				others[i] = h.newTClient(b, fmt.Sprint("user", i), "phone", false)
			}
			// In commits of at most 1,000 Adds, whose Welcomes leave the
			// tree to welcome_info: one commit of 9,999 Adds would be
			// larger than a message the DS delivers (MaxDeliveredMessage).
			for len(others) > 0 {
				n := min(len(others), 1000)
				res, err := alice.m.CommitWith(mls.CommitOptions{ByValue: addProps(others[:n]...), OmitRatchetTree: true})
				if err != nil {
					b.Fatal(err)
				}
				resignGroupInfo(b, res, alice, withoutTree)
				h.mustDo(b, "add_users", commitBody(b, moh.AddUsers, alice, alice.m, res))
				alice.m = res.Next
				others = others[n:]
			}
			var took []time.Duration
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				res := commit(b, alice.m, nil, nil, nil)
				resignGroupInfo(b, res, alice, withoutTree)
				body := commitBody(b, moh.UpdateClient, alice, alice.m, res)
				b.StartTimer()
				start := time.Now()
				h.mustDo(b, "update_client", body)
				took = append(took, time.Since(start))
				alice.m = res.Next
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds()), "p99-µs")
		})
	}
}
