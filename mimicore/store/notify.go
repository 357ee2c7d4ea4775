package store

import (
	"math"
	"sync"
	"time"
)

// FallbackEvery bounds how often Notifier.Fallback wakes every waiter: a
// fallback within FallbackEvery of the last wake-up of everyone is
// carried out at its end, once for all the fallbacks meanwhile, so that
// a store that keeps failing does not send every waiter to it on each
// failure.
const FallbackEvery = time.Second

// Notifier wakes the waiters of queues: a backend's Append calls Notify
// after the commit that stored a message, and WatchQueue is Watch. It is
// process-local, in memory: it knows only the appends its store reports,
// those made through the store and, for a backend shared across
// processes (pgstore), those it hears of from the others (see Queues).
// It starts no goroutine but the timer of a deferred Fallback; a waiter costs
// one entry until it is woken or stopped. The zero Notifier is not usable:
// call NewNotifier. A Notifier is safe for concurrent use.
type Notifier struct {
	mu      sync.Mutex
	waiters map[string][]*waiter // by queue; none is closed
	closed  bool
	// onFallback, when set, is told why Fallback woke every waiter.
	onFallback func(error)
	// lastAll is when Fallback last woke every waiter; allPending is set
	// while a wake-up of everyone waits for FallbackEvery after it.
	lastAll    time.Time
	allPending bool
}

// WakeErrorLogger is implemented by the stores whose wake-up of the
// waiters a write concerns can fail (the lookup of a group's members
// after a post): such a failure wakes every waiter instead
// (Notifier.Fallback), and the function set is told of it, to log it.
type WakeErrorLogger interface {
	SetWakeErrorLog(func(error))
}

// waiter is one Watch: ch is closed when its queue passes after.
type waiter struct {
	after uint64
	ch    chan struct{}
}

// NewNotifier returns a Notifier without waiters.
func NewNotifier() *Notifier {
	return &Notifier{waiters: map[string][]*waiter{}}
}

// Watch returns a channel that is closed by the first Notify of queue with
// a sequence number above after, or by Close, and a function that releases
// the watch; it is idempotent and must be called once the caller stops
// waiting, woken or not. After Close the channel is closed at once.
func (n *Notifier) Watch(queue string, after uint64) (<-chan struct{}, func()) {
	w := &waiter{after: after, ch: make(chan struct{})}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		close(w.ch)
		return w.ch, func() {}
	}
	n.waiters[queue] = append(n.waiters[queue], w)
	return w.ch, func() { n.stop(queue, w) }
}

// stop removes w from queue's waiters, if it is still there.
func (n *Notifier) stop(queue string, w *waiter) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ws := n.waiters[queue]
	for i, x := range ws {
		if x == w {
			ws[i] = ws[len(ws)-1]
			ws[len(ws)-1] = nil
			ws = ws[:len(ws)-1]
			break
		}
	}
	if len(ws) == 0 {
		delete(n.waiters, queue)
	} else {
		n.waiters[queue] = ws
	}
}

// Notify reports that queue holds a message with sequence number seq,
// committed: every waiter of queue whose after is below seq is woken and
// released.
func (n *Notifier) Notify(queue string, seq uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.notifyLocked(queue, seq)
}

// notifyLocked is Notify with n.mu held.
func (n *Notifier) notifyLocked(queue string, seq uint64) {
	ws := n.waiters[queue]
	keep := ws[:0]
	for _, w := range ws {
		if w.after < seq {
			close(w.ch)
		} else {
			keep = append(keep, w)
		}
	}
	clear(ws[len(keep):])
	if len(keep) == 0 {
		delete(n.waiters, queue)
	} else {
		n.waiters[queue] = keep
	}
}

// NotifyEach is Notify of seq for each of queues other than except, under
// one lock: the wake-up of a group's members after a post, which costs a
// map lookup per member.
func (n *Notifier) NotifyEach(queues []string, except string, seq uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, q := range queues {
		if q != except && len(n.waiters[q]) > 0 {
			n.notifyLocked(q, seq)
		}
	}
}

// NotifyAll wakes and releases every waiter.
func (n *Notifier) NotifyAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for q := range n.waiters {
		n.notifyLocked(q, math.MaxUint64)
	}
}

// SetOnFallback sets the function that Fallback tells of its cause; nil
// tells no one.
func (n *Notifier) SetOnFallback(fn func(error)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onFallback = fn
}

// Fallback wakes and releases every waiter, because err kept the store
// from knowing which waiters a committed write concerns (a failed lookup
// of a group's members): a waiter woken for nothing fetches its queue
// once and answers its client, which polls again, where a waiter not
// woken would sleep through a message until its wait ends. Within
// FallbackEvery of its last wake-up of everyone, it wakes them at the end
// of that interval instead (the waiters that start meanwhile fetch
// their queue after the write, and need no wake-up). It tells the
// function of SetOnFallback of err.
func (n *Notifier) Fallback(err error) {
	n.mu.Lock()
	fn := n.onFallback
	if wait := time.Until(n.lastAll.Add(FallbackEvery)); wait > 0 {
		if !n.allPending {
			n.allPending = true
			time.AfterFunc(wait, n.fallbackDue)
		}
	} else {
		n.wakeAllLocked()
	}
	n.mu.Unlock()
	if fn != nil {
		fn(err)
	}
}

// fallbackDue carries out a deferred Fallback.
func (n *Notifier) fallbackDue() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.allPending = false
	n.wakeAllLocked()
}

// wakeAllLocked wakes and releases every waiter for Fallback, with n.mu
// held.
func (n *Notifier) wakeAllLocked() {
	for q := range n.waiters {
		n.notifyLocked(q, math.MaxUint64)
	}
	n.lastAll = time.Now()
}

// Idle reports whether no watch is registered: a post then wakes no one
// and needs no lookup.
func (n *Notifier) Idle() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.waiters) == 0
}

// Waiters reports how many watches are registered and neither woken nor
// stopped.
func (n *Notifier) Waiters() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, ws := range n.waiters {
		c += len(ws)
	}
	return c
}

// Waiting lists the queues that have watches neither woken nor stopped,
// in no particular order.
func (n *Notifier) Waiting() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]string, 0, len(n.waiters))
	for q := range n.waiters {
		out = append(out, q)
	}
	return out
}

// Close wakes and releases every waiter; later watches are woken at once.
// A store closes its Notifier when it closes, so that no waiter outlives
// it.
func (n *Notifier) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	for q, ws := range n.waiters {
		for _, w := range ws {
			close(w.ch)
		}
		delete(n.waiters, q)
	}
}
