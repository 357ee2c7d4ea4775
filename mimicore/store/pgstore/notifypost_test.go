package pgstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
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

// TestNotifyPostWakesTheGroupAlone checks that the wake-up of a post to a
// group reaches its waiting member and none of the other clients waiting
// in the process (one user's invented devices, say), whose number its cost
// does not follow (BenchmarkNotifyPost measures that).
func TestNotifyPostWakesTheGroupAlone(t *testing.T) {
	s := openTemp(t, Options{})
	ctx := context.Background()
	group := []byte("small group")
	member := "mimi://example.com/d/member/phone"
	if _, err := s.pool.Exec(ctx, `INSERT INTO group_members (client, group_id, from_seq) VALUES ($1, $2, 0)`, member, group); err != nil {
		t.Fatal(err)
	}
	others := make([]<-chan struct{}, 1000)
	for i := range others {
		var stop func()
		others[i], stop = s.WatchQueue(fmt.Sprintf("mimi://example.com/d/mallory/dev%06d", i), 0)
		t.Cleanup(stop)
	}
	ready, stop := s.WatchQueue(member, 0)
	defer stop()
	s.notifyPost(ctx, group, "", 1, nil)
	select {
	case <-ready:
	default:
		t.Error("the group's member was not woken")
	}
	for i, ch := range others {
		select {
		case <-ch:
			t.Fatalf("waiter %d, of no group, was woken by the group's post", i)
		default:
		}
	}
}

// TestNotifyPostLookupFailureWakesEveryone checks that a post whose
// members cannot be read (here the lookup's context ended, as a listener
// hearing the post does after postLookupTimeout) wakes every waiter, the
// group's member among them, and reports why: waking nobody left the
// member asleep until the end of its long poll, although its message was
// queued.
func TestNotifyPostLookupFailureWakesEveryone(t *testing.T) {
	s := openTemp(t, Options{})
	ctx := context.Background()
	group := []byte("small group")
	member := "mimi://example.com/d/member/phone"
	if _, err := s.pool.Exec(ctx, `INSERT INTO group_members (client, group_id, from_seq) VALUES ($1, $2, 0)`, member, group); err != nil {
		t.Fatal(err)
	}
	var reported []error
	s.SetWakeErrorLog(func(err error) { reported = append(reported, err) })
	ready, stop := s.WatchQueue(member, 0)
	defer stop()
	other, stopOther := s.WatchQueue("mimi://example.com/d/other/phone", 0)
	defer stopOther()
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	s.notifyPost(cctx, group, "", 1, nil)
	for name, ch := range map[string]<-chan struct{}{"the group's member": ready, "another waiter": other} {
		select {
		case <-ch:
		default:
			t.Errorf("%s was not woken after the failed lookup", name)
		}
	}
	if len(reported) != 1 || !errors.Is(reported[0], context.Canceled) {
		t.Fatalf("reported %v, want one context.Canceled", reported)
	}
}
