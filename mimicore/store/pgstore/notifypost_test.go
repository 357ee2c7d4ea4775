package pgstore

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkNotifyPost measures the wake-up that follows a post to a group
// of members local members, none waiting, while waiters other clients
// wait: its cost must follow the group, not the waiters of the process.
func BenchmarkNotifyPost(b *testing.B) {
	for _, members := range []int{10, 1000} {
		for _, waiters := range []int{0, 1000, 100_000} {
			b.Run(fmt.Sprintf("members=%d/waiters=%d", members, waiters), func(b *testing.B) {
				s := openTemp(b, Options{})
				ctx := context.Background()
				group := []byte("bench group")
				if _, err := s.pool.Exec(ctx, `INSERT INTO group_members (client, group_id, from_seq)
					SELECT 'mimi://example.com/d/member' || i || '/phone', $1, 0 FROM generate_series(1, $2) AS i`, group, members); err != nil {
					b.Fatal(err)
				}
				for i := range waiters {
					_, stop := s.WatchQueue(fmt.Sprintf("mimi://example.com/d/waiter%06d/phone", i), 0)
					b.Cleanup(stop)
				}
				for b.Loop() {
					s.notifyPost(ctx, group, "", 1, nil)
				}
			})
		}
	}
}

// TestNotifyPostCostFollowsGroup requires the wake-up of a post to a small
// group not to pay for the waiters of other clients: with 50,000 of them
// a post's notifyPost stays far below the tens of milliseconds a query
// over them costs.
func TestNotifyPostCostFollowsGroup(t *testing.T) {
	s := openTemp(t, Options{})
	ctx := context.Background()
	group := []byte("small group")
	member := "mimi://example.com/d/member/phone"
	if _, err := s.pool.Exec(ctx, `INSERT INTO group_members (client, group_id, from_seq) VALUES ($1, $2, 0)`, member, group); err != nil {
		t.Fatal(err)
	}
	for i := range 50_000 {
		_, stop := s.WatchQueue(fmt.Sprintf("mimi://example.com/d/mallory/dev%06d", i), 0)
		t.Cleanup(stop)
	}
	const posts = 20
	start := time.Now()
	for seq := range uint64(posts) {
		s.notifyPost(ctx, group, "", seq+1, nil)
	}
	if per := time.Since(start) / posts; per > 10*time.Millisecond {
		t.Errorf("notifyPost took %v per post of a one-member group with 50,000 other waiters", per)
	}
	ready, stop := s.WatchQueue(member, 0)
	defer stop()
	s.notifyPost(ctx, group, "", posts+1, nil)
	select {
	case <-ready:
	default:
		t.Error("the group's member was not woken")
	}
}
