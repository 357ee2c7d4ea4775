package caddymodule

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// BenchmarkFanOut1000 measures end-to-end fan-out latency in a group of
// 1,000 members spread over two providers: 500 clients of a.localhost, the
// hub, and 500 of b.localhost, each gateway served over TLS 1.3 on its own
// loopback port. alice, a member at a, sends one application message per
// iteration through /group_operation (send_message, on a reused HTTP/2
// connection); a's DS accepts it, writes it once to the group's log for
// the 499 other local members, and its outbox delivers it to b in signed
// deliver_message requests of at most 64 recipients. An iteration ends
// when the message is in the queue of every one of the 500 members at b
// (watched with WatchQueue, no polling). Reported: the latency from the
// send to the last remote queue, p50 and p99 (and the mean as ns/op).
//
//	go test ./caddymodule -run '^$' -bench FanOut1000 -benchtime 200x
func BenchmarkFanOut1000(b *testing.B) {
	const perProvider = 500
	a, bsite := twoProviders(b)
	alice := newPeerMember(b, a, "alice")
	gid := []byte("a group of 1000 members over two providers")
	createGroupAt(b, a, alice, gid)

	// 999 more members, added 111 per commit, alternating providers.
	var members []*peerMember
	for i := 1; i < 2*perProvider; i++ {
		site, name := a, fmt.Sprintf("a%03d", i)
		if i%2 == 1 {
			site, name = bsite, fmt.Sprintf("b%03d", i)
		}
		members = append(members, newPeerMember(b, site, name))
	}
	for batch := range slices.Chunk(members, 111) {
		addAt(b, a, alice, true, batch...)
	}
	var remote []string
	for _, c := range members {
		if c.uri[len("mimi://"):][0] == 'b' {
			remote = append(remote, c.uri)
		}
	}
	if len(remote) != perProvider {
		b.Fatalf("%d members at b, want %d", len(remote), perProvider)
	}
	// Every remote member has its Welcome and the commits after it
	// before the measurement starts.
	waitOutboxEmpty(b, a, "b.localhost")
	bq := bsite.g.svc.Store()
	last := make(map[string]uint64, len(remote))
	for _, c := range remote {
		msgs := waitQueue(b, bsite, c, 1)
		if len(msgs) == 0 {
			b.Fatalf("%s has no message, want its Welcome", c)
		}
		last[c] = msgs[len(msgs)-1].Seq
	}

	var lat []time.Duration
	i := 0
	for b.Loop() {
		app, err := alice.m.Protect(fmt.Appendf(nil, "message %d", i), nil)
		if err != nil {
			b.Fatal(err)
		}
		i++
		type watch struct {
			ready <-chan struct{}
			stop  func()
		}
		watches := make([]watch, len(remote))
		for j, c := range remote {
			watches[j].ready, watches[j].stop = bq.WatchQueue(c, last[c])
		}
		start := time.Now()
		groupOp(b, a, alice, moh.RequestBody{Type: moh.SendMessage, Message: *app})
		for j := range watches {
			select {
			case <-watches[j].ready:
			case <-time.After(time.Minute):
				b.Fatalf("message %d did not reach %s within a minute", i, remote[j])
			}
			watches[j].stop()
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		for _, c := range remote {
			msgs, err := bq.Fetch(b.Context(), c, last[c], store.FetchLimit{Messages: store.MaxFetchMessages})
			if err != nil || len(msgs) != 1 {
				b.Fatalf("fetching %s: %d messages, %v; want the one sent", c, len(msgs), err)
			}
			last[c] = msgs[len(msgs)-1].Seq
		}
		b.StartTimer()
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(len(remote)), "remote-members")
}
