package pgstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// wakeTimeout is how long a test waits for a wake-up that must come: long
// enough for a loaded machine, so that it measures nothing.
const wakeTimeout = 30 * time.Second

// Clients of the wake-up tests.
const (
	wakeAlice = "mimi://a.example/d/alice/phone"
	wakeBob   = "mimi://a.example/d/bob/phone"
	wakeCarl  = "mimi://a.example/d/carl/phone"
)

// openPair opens two Stores of maxConns connections each on one new
// database, as two gateways would, and closes them when t ends.
func openPair(t *testing.T, maxConns int32) (*Store, *Store) {
	t.Helper()
	dsn := pgtest.NewDB(t)
	var stores [2]*Store
	for i := range stores {
		s, err := Open(context.Background(), dsn, Options{MaxConns: maxConns})
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}
	return stores[0], stores[1]
}

// delivery is a message for recipients.
func delivery(msg string, recipients ...string) store.Delivery {
	return store.Delivery{Recipients: recipients, GroupID: []byte("group"), Sender: "b.example", Message: []byte(msg)}
}

// watch registers a waiter of client on s above after, then fetches, as
// WatchQueue's contract asks, and wants nothing there yet.
func watch(t *testing.T, s *Store, client string, after uint64) (<-chan struct{}, func()) {
	t.Helper()
	ready, stop := s.WatchQueue(client, after)
	t.Cleanup(stop)
	msgs, err := s.Fetch(context.Background(), client, after, store.FetchLimit{})
	if err != nil {
		t.Fatalf("Fetch %s: %v", client, err)
	}
	if len(msgs) != 0 {
		t.Fatalf("Fetch %s: %d messages before the write, want none", client, len(msgs))
	}
	return ready, stop
}

// waitWoken fails t unless ready is closed within wakeTimeout.
func waitWoken(t *testing.T, what string, ready <-chan struct{}) {
	t.Helper()
	select {
	case <-ready:
	case <-time.After(wakeTimeout):
		t.Fatalf("%s: not woken within %v", what, wakeTimeout)
	}
}

// isClosed reports whether ready is closed now.
func isClosed(ready <-chan struct{}) bool {
	select {
	case <-ready:
		return true
	default:
		return false
	}
}

// wantFetched fails t unless client's stream on s holds exactly msgs.
func wantFetched(t *testing.T, s *Store, client string, msgs ...string) {
	t.Helper()
	got, err := s.Fetch(context.Background(), client, 0, store.FetchLimit{})
	if err != nil {
		t.Fatalf("Fetch %s: %v", client, err)
	}
	var have []string
	for _, m := range got {
		have = append(have, string(m.Message))
	}
	if strings.Join(have, "|") != strings.Join(msgs, "|") {
		t.Fatalf("Fetch %s = %q, want %q", client, have, msgs)
	}
}

// TestWakeAcrossStores has a client wait on one Store while the write
// that stores its message goes through another on the same database: each
// kind of write wakes it, and the message is fetchable through the
// waiter's Store once woken.
func TestWakeAcrossStores(t *testing.T) {
	longURI := func(i int) string {
		return fmt.Sprintf("mimi://a.example/d/%s/%04d", strings.Repeat("x", 480), i)
	}
	many := make([]string, 200) // ~100 KB of events: a dozen payloads
	for i := range many {
		many[i] = longURI(i)
	}
	for _, tc := range []struct {
		name   string
		client string
		write  func(t *testing.T, s *Store) error
	}{
		{"append", wakeAlice, func(t *testing.T, s *Store) error {
			_, err := s.Append(context.Background(), delivery("hello", wakeBob, wakeAlice))
			return err
		}},
		{"append to many recipients", many[len(many)-1], func(t *testing.T, s *Store) error {
			_, err := s.Append(context.Background(), delivery("hello", many...))
			return err
		}},
		{"group post", wakeAlice, func(t *testing.T, s *Store) error {
			g := storetest.NewGroup(t, []byte("woken group"), 2)
			gid := g.State.GroupID()
			if err := s.CreateGroup(context.Background(), store.GroupCreation{Hub: "a.example", State: g.State,
				Members: []string{wakeAlice, wakeBob}}); err != nil {
				return err
			}
			_, err := s.Deliver(context.Background(), gid, g.State.Epoch(), store.Fanout{Group: &store.GroupPost{
				GroupID: gid, Sender: wakeBob, Except: wakeBob, Message: []byte("hello")}})
			return err
		}},
		{"group post removing the member", wakeAlice, func(t *testing.T, s *Store) error {
			g := storetest.NewGroup(t, []byte("leaving group"), 2)
			gid := g.State.GroupID()
			if err := s.CreateGroup(context.Background(), store.GroupCreation{Hub: "a.example", State: g.State,
				Members: []string{wakeAlice, wakeBob}}); err != nil {
				return err
			}
			_, err := s.Deliver(context.Background(), gid, g.State.Epoch(), store.Fanout{Group: &store.GroupPost{
				GroupID: gid, Sender: wakeBob, Except: wakeBob, Message: []byte("hello"), Leave: []string{wakeAlice}}})
			return err
		}},
		{"personal message of a commit", wakeAlice, func(t *testing.T, s *Store) error {
			g := storetest.NewGroup(t, []byte("committed group"), 2)
			if err := s.CreateGroup(context.Background(), store.GroupCreation{Hub: "a.example", State: g.State,
				Members: []string{wakeBob}}); err != nil {
				return err
			}
			_, c := g.Commit(t)
			c.Fanout = store.Fanout{Local: []store.Delivery{delivery("hello", wakeAlice)}}
			_, err := s.CommitEpoch(context.Background(), c)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s1, s2 := openPair(t, 4)
			ready, _ := watch(t, s1, tc.client, 0)
			if err := tc.write(t, s2); err != nil {
				t.Fatalf("write through store 2: %v", err)
			}
			waitWoken(t, "waiter on store 1", ready)
			wantFetched(t, s1, tc.client, "hello")
		})
	}
}

// TestWakeOnlyOnCommit checks that a write that rolls back notifies no
// one: notifications reach the listener in commit order, so once a later
// write's wake-up has arrived, the refused write's would have too.
func TestWakeOnlyOnCommit(t *testing.T) {
	s1, s2 := openPair(t, 4)
	ctx := context.Background()
	d := delivery("first", wakeCarl)
	d.Dedup, d.DedupExpires = bytes.Repeat([]byte{7}, 32), time.Now().Add(time.Hour)
	if _, err := s2.Append(ctx, d); err != nil {
		t.Fatalf("Append: %v", err)
	}
	readyA, _ := watch(t, s1, wakeAlice, 0)
	readyB, _ := watch(t, s1, wakeBob, 0)
	d.Recipients = []string{wakeAlice}
	if _, err := s2.Append(ctx, d); !errors.Is(err, store.ErrDuplicate) {
		t.Fatalf("Append of a duplicate: %v, want store.ErrDuplicate", err)
	}
	if _, err := s2.Append(ctx, delivery("second", wakeBob)); err != nil {
		t.Fatalf("Append: %v", err)
	}
	waitWoken(t, "bob on store 1", readyB)
	if isClosed(readyA) {
		t.Fatal("alice woken by a refused Append")
	}
}

// TestListenerReconnect kills the listener's connection from another
// session: the listener connects again, wakes the waiters it had (it may
// have missed their notifications), and a later write through the other
// Store wakes a new waiter.
func TestListenerReconnect(t *testing.T) {
	s1, s2 := openPair(t, 4)
	ctx := context.Background()
	pid := s1.listenPID()
	if pid == 0 {
		t.Fatal("store 1 has no listener connection after Open")
	}
	before, _ := watch(t, s1, wakeBob, 0)
	var killed bool
	if err := s2.pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, int32(pid)).Scan(&killed); err != nil || !killed {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, killed, err)
	}
	waitWoken(t, "waiter from before the reconnect", before)
	deadline := time.Now().Add(wakeTimeout)
	for p := s1.listenPID(); p == 0 || p == pid; p = s1.listenPID() {
		if time.Now().After(deadline) {
			t.Fatalf("listener not connected again within %v", wakeTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ready, _ := watch(t, s1, wakeAlice, 0)
	if _, err := s2.Append(ctx, delivery("after", wakeAlice)); err != nil {
		t.Fatalf("Append: %v", err)
	}
	waitWoken(t, "waiter after the reconnect", ready)
	wantFetched(t, s1, wakeAlice, "after")
}

// TestCloseWithWaiters closes a Store whose clients wait: they are woken,
// its listener stops, a later watch is woken at once, and the other
// Store's writes go on.
func TestCloseWithWaiters(t *testing.T) {
	s1, s2 := openPair(t, 4)
	readyA, _ := watch(t, s1, wakeAlice, 0)
	readyB, _ := watch(t, s1, wakeBob, 0)
	if err := s1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !isClosed(readyA) || !isClosed(readyB) {
		t.Fatal("waiters not woken by Close")
	}
	if !isClosed(s1.listen.done) || s1.listenPID() != 0 {
		t.Fatal("listener still running after Close")
	}
	if ready, stop := s1.WatchQueue(wakeAlice, 0); !isClosed(ready) {
		stop()
		t.Fatal("watch after Close not woken at once")
	}
	if _, err := s2.Append(context.Background(), delivery("after", wakeAlice)); err != nil {
		t.Fatalf("Append through the other store: %v", err)
	}
}

// TestPayloads checks the encoding of wake-up events: every payload is
// under NOTIFY's limit, and the lines decode to the events in order.
func TestPayloads(t *testing.T) {
	long := strings.Repeat("é\"", 250) // 1000 bytes, escaped and multi-byte
	for _, tc := range []struct {
		name string
		evs  []wakeEvent
		want int // payloads
	}{
		{"none", nil, 0},
		{"one queue", []wakeEvent{{Q: wakeAlice, S: 1}}, 1},
		{"a group post", []wakeEvent{{G: bytes.Repeat([]byte{0xff}, store.MaxIDSize), X: long, S: 9}}, 1},
		{"many queues", func() []wakeEvent {
			evs := make([]wakeEvent, 100)
			for i := range evs {
				evs[i] = wakeEvent{Q: long + fmt.Sprint(i), S: uint64(i + 1)}
			}
			return evs
		}(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := payloads(tc.evs)
			if tc.want != 0 && len(ps) != tc.want {
				t.Errorf("%d payloads, want %d", len(ps), tc.want)
			}
			var got []wakeEvent
			for i, p := range ps {
				if len(p) > maxPayload {
					t.Fatalf("payload %d is %d bytes, over %d", i, len(p), maxPayload)
				}
				for line := range strings.SplitSeq(p, "\n") {
					var ev wakeEvent
					if err := json.Unmarshal([]byte(line), &ev); err != nil {
						t.Fatalf("payload %d: %v", i, err)
					}
					got = append(got, ev)
				}
			}
			if len(got) != len(tc.evs) {
				t.Fatalf("%d events decoded, want %d", len(got), len(tc.evs))
			}
			for i := range got {
				if got[i].Q != tc.evs[i].Q || !bytes.Equal(got[i].G, tc.evs[i].G) || got[i].X != tc.evs[i].X || got[i].S != tc.evs[i].S {
					t.Fatalf("event %d = %+v, want %+v", i, got[i], tc.evs[i])
				}
			}
		})
	}
}

// TestWakeEventsOfLeavers requires the events of a post to name, as queue
// events, the members it removes other than the one it excepts: they see
// the post but are no longer current members, whom another Store looks
// up when it hears of the post.
func TestWakeEventsOfLeavers(t *testing.T) {
	gid := []byte("g")
	for _, tc := range []struct {
		name   string
		leave  []string
		except string
		want   []wakeEvent
	}{
		{"none", nil, "", []wakeEvent{{G: gid, S: 7}}},
		{"one", []string{wakeBob}, wakeAlice, []wakeEvent{{G: gid, X: wakeAlice, S: 7}, {Q: wakeBob, S: 7}}},
		{"the excepted one", []string{wakeBob, wakeCarl}, wakeCarl, []wakeEvent{{G: gid, X: wakeCarl, S: 7}, {Q: wakeBob, S: 7}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := store.Fanout{Group: &store.GroupPost{GroupID: gid, Except: tc.except, Leave: tc.leave}}
			got, _ := json.Marshal(wakeEvents(f, store.Delivered{Group: 7}))
			want, _ := json.Marshal(tc.want)
			if !bytes.Equal(got, want) {
				t.Fatalf("events %s, want %s", got, want)
			}
		})
	}
}
