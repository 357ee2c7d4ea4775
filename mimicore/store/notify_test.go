package store

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestNotifier(t *testing.T) {
	for _, tc := range []struct {
		name   string
		after  uint64
		notify []uint64 // Notify of the watched queue, in order
		other  bool     // a Notify of another queue first
		woken  bool
	}{
		{name: "above cursor", after: 3, notify: []uint64{4}, woken: true},
		{name: "far above cursor", after: 3, notify: []uint64{90}, woken: true},
		{name: "at cursor", after: 3, notify: []uint64{3}},
		{name: "below cursor", after: 3, notify: []uint64{1, 2}},
		{name: "below then above", after: 3, notify: []uint64{2, 4}, woken: true},
		{name: "from zero", after: 0, notify: []uint64{1}, woken: true},
		{name: "other queue", after: 0, other: true},
		{name: "nothing", after: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := NewNotifier()
			ch, stop := n.Watch("q", tc.after)
			if tc.other {
				n.Notify("q2", 100)
			}
			for _, s := range tc.notify {
				n.Notify("q", s)
			}
			if got := isClosed(ch); got != tc.woken {
				t.Fatalf("woken = %t, want %t", got, tc.woken)
			}
			wantWaiters := 1
			if tc.woken {
				wantWaiters = 0 // a woken waiter is released by Notify
			}
			if got := n.Waiters(); got != wantWaiters {
				t.Fatalf("%d waiters registered, want %d", got, wantWaiters)
			}
			stop()
			stop() // idempotent
			if got := n.Waiters(); got != 0 {
				t.Fatalf("%d waiters after stop, want 0", got)
			}
			n.Notify("q", 1000) // no waiter left: must not panic on a closed channel
		})
	}
}

// TestNotifierManyWaiters wakes exactly the waiters whose cursor is below
// the notified sequence number, and stopping some leaves the others.
func TestNotifierManyWaiters(t *testing.T) {
	n := NewNotifier()
	chans := make([]<-chan struct{}, 10)
	stops := make([]func(), 10)
	for i := range chans {
		chans[i], stops[i] = n.Watch("q", uint64(i))
	}
	stops[0]()
	stops[1]()
	n.Notify("q", 5)
	for i, ch := range chans {
		if want := i >= 2 && i < 5; isClosed(ch) != want {
			t.Errorf("waiter after %d: woken %t, want %t", i, !want, want)
		}
	}
	if got := n.Waiters(); got != 5 {
		t.Fatalf("%d waiters left, want 5", got)
	}
	for _, stop := range stops {
		stop()
	}
	if got := n.Waiters(); got != 0 {
		t.Fatalf("%d waiters after stopping all, want 0", got)
	}
}

func TestNotifierClose(t *testing.T) {
	n := NewNotifier()
	ch, stop := n.Watch("q", 0)
	n.Close()
	if !isClosed(ch) {
		t.Fatal("Close did not wake a waiter")
	}
	stop()
	ch2, stop2 := n.Watch("q", 0)
	defer stop2()
	if !isClosed(ch2) {
		t.Fatal("a watch after Close is not woken at once")
	}
	if got := n.Waiters(); got != 0 {
		t.Fatalf("%d waiters after Close, want 0", got)
	}
}

// TestNotifierConcurrent runs waiters that give up and notifiers at once
// (run with -race): every waiter is woken or stopped, none is left.
func TestNotifierConcurrent(t *testing.T) {
	n := NewNotifier()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := fmt.Sprint("q", i%5)
			for j := range 100 {
				ch, stop := n.Watch(q, uint64(j))
				select {
				case <-ch:
				case <-time.After(time.Duration(j%3) * time.Microsecond):
				}
				stop()
			}
		}()
	}
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range uint64(200) {
				n.Notify(fmt.Sprint("q", i), s)
			}
		}()
	}
	wg.Wait()
	if got := n.Waiters(); got != 0 {
		t.Fatalf("%d waiters left", got)
	}
}

// TestNotifierNotifyEach requires NotifyEach to wake the waiters of each
// queue listed, above their cursor, except the queue it excepts, and Idle
// to report whether any watch is left.
func TestNotifierNotifyEach(t *testing.T) {
	for _, tc := range []struct {
		name   string
		queues []string
		except string
		woken  map[string]bool // by queue watched: a, b, c
	}{
		{"listed", []string{"a", "b"}, "", map[string]bool{"a": true, "b": true}},
		{"excepted", []string{"a", "b"}, "b", map[string]bool{"a": true}},
		{"not waiting", []string{"x", "c"}, "", map[string]bool{"c": true}},
		{"none", nil, "", map[string]bool{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := NewNotifier()
			if !n.Idle() {
				t.Fatal("a new Notifier is not idle")
			}
			chs := map[string]<-chan struct{}{}
			for _, q := range []string{"a", "b", "c"} {
				ch, stop := n.Watch(q, 4)
				defer stop()
				chs[q] = ch
			}
			n.NotifyEach(tc.queues, tc.except, 4) // at the cursor: no one
			n.NotifyEach(tc.queues, tc.except, 5)
			for q, ch := range chs {
				if isClosed(ch) != tc.woken[q] {
					t.Errorf("queue %s woken %v, want %v", q, isClosed(ch), tc.woken[q])
				}
			}
			if n.Idle() != (len(tc.woken) == 3) {
				t.Errorf("Idle %v with %d of 3 watches woken", n.Idle(), len(tc.woken))
			}
		})
	}
}

// TestNotifierFallback checks that a Fallback wakes every waiter and
// reports its cause, and that a Fallback soon after one, which waits for
// FallbackEvery to pass, still wakes the waiters it finds, once.
func TestNotifierFallback(t *testing.T) {
	n := NewNotifier()
	var mu sync.Mutex
	var reported []error
	n.SetOnFallback(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		reported = append(reported, err)
	})
	a, stopA := n.Watch("a", 0)
	defer stopA()
	b, stopB := n.Watch("b", 7)
	defer stopB()
	n.Fallback(fmt.Errorf("first"))
	if !isClosed(a) || !isClosed(b) {
		t.Fatal("the first fallback did not wake every waiter at once")
	}
	c, stopC := n.Watch("c", 0)
	defer stopC()
	for i := range 100 {
		n.Fallback(fmt.Errorf("again %d", i))
	}
	select {
	case <-c:
	case <-time.After(30 * time.Second):
		t.Fatal("a waiter of the fallbacks soon after the first was not woken")
	}
	if w := n.Waiters(); w != 0 {
		t.Fatalf("%d waiters left after the fallbacks", w)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 101 {
		t.Fatalf("reported %d fallbacks, want 101", len(reported))
	}
}
