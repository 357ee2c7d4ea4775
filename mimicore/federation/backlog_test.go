package federation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/storetest"
)

// transportFunc is a Transport.
type transportFunc func(ctx context.Context, sender, recipient string, typ moh.ProviderRequestType, payload []byte) (*provider.Answer, error)

// Send implements Transport.
func (f transportFunc) Send(ctx context.Context, sender, recipient string, typ moh.ProviderRequestType, payload []byte) (*provider.Answer, error) {
	return f(ctx, sender, recipient, typ, payload)
}

// accepted answers every request with queueing(9).
func accepted(context.Context, string, string, moh.ProviderRequestType, []byte) (*provider.Answer, error) {
	return &provider.Answer{Status: http.StatusOK, Response: moh.DSResponse{Type: moh.ResponseQueueing}}, nil
}

// heapPeak samples the live heap (after a GC) every so many calls of
// sample and keeps the largest.
type heapPeak struct {
	mu    sync.Mutex
	calls int
	peak  uint64
}

func (h *heapPeak) sample(every int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.calls%every != 0 {
		return
	}
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	h.peak = max(h.peak, m.HeapAlloc)
}

// TestSenderMemoryFlat drains a backlog of 40 MiB for one destination,
// delivered or given up, and one of 64 large messages, and checks that the
// sender's live heap never grows by more than a part of it: it reads the
// outbox in batches bounded in messages (DefaultBatch) and in bytes
// (store.MaxOutboxListBytes), and keeps state per destination, not per
// message.
func TestSenderMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("writes backlogs of 40 and 64 MiB")
	}
	for _, tc := range []struct {
		name           string
		messages, size int
		offset         time.Duration // of the sender's clock
		want           func(Stats) uint64
	}{
		{"delivered", 10_000, 4 << 10, 0, func(s Stats) uint64 { return s.Delivered }},
		{"given up", 10_000, 4 << 10, DefaultGiveUpAfter + time.Hour, func(s Stats) uint64 { return s.GivenUp }},
		{"large messages", 64, store.MaxQueuedMessageSize, 0, func(s Stats) uint64 { return s.Delivered }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			messages, size := tc.messages, tc.size
			backlog := int64(messages * size)
			st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			var w store.OutboxWrite
			for i := range messages {
				body := make([]byte, size)
				copy(body, fmt.Sprint(i))
				w.Messages = append(w.Messages, store.OutboxMessage{Sender: "a.example", Destination: "b.example",
					GroupID: fmt.Appendf(nil, "group %d", i%16), Recipients: []string{"mimi://b.example/d/bob/phone"}, Message: body})
				if len(w.Messages) == store.MaxFanoutMessages || i == messages-1 {
					if _, err := st.OutboxAdd(t.Context(), w); err != nil {
						t.Fatal(err)
					}
					w.Messages = nil
				}
			}
			runtime.GC()
			var base runtime.MemStats
			runtime.ReadMemStats(&base)

			var peak heapPeak
			s := &Sender{Outbox: st, Transport: transportFunc(accepted), Now: func() time.Time {
				peak.sample(max(1, min(500, messages/20)))
				return time.Now().Add(tc.offset)
			}}
			runSender(t, s)
			waitFor(t, "the backlog drained", func() bool {
				b, err := st.OutboxDestinationBacklog(t.Context(), "b.example")
				return err == nil && b.Messages == 0
			})
			// The counters the bound is checked against are back to
			// zero: delivered and given-up messages are taken off them.
			if b, err := st.OutboxDestinationBacklog(t.Context(), "b.example"); err != nil || b.Bytes != 0 || b.Dropped != (store.Dropped{}) {
				t.Fatalf("drained backlog %+v, %v; want 0 bytes and no drop", b, err)
			}
			if got := tc.want(s.Stats()); got != uint64(messages) {
				t.Fatalf("%s %d messages, want %d", tc.name, got, messages)
			}
			if n := len(s.Status()); n > 1 {
				t.Fatalf("the sender keeps %d destination statuses, want at most 1", n)
			}
			growth := int64(peak.peak) - int64(base.HeapAlloc)
			t.Logf("live heap %d MiB before, peak %d MiB while draining %d MiB", base.HeapAlloc>>20, peak.peak>>20, backlog>>20)
			if peak.peak == 0 || growth > backlog/2 {
				t.Fatalf("the live heap grew by %d bytes while draining a backlog of %d: it grows with the backlog", growth, backlog)
			}
		})
	}
}

// TestReportDrops checks the warning about messages dropped at a
// destination's bound: the counters are read at most once per
// DropLogInterval, the first drops are logged with their count at the
// first read after them, more drops within DropLogInterval are not, and
// after it one line carries the count since the last.
func TestReportDrops(t *testing.T) {
	st, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "mimi.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.SetOutboxLimits(store.OutboxLimits{MaxMessages: 2})
	g := storetest.NewGroup(t, []byte("drops"), 1)
	if err := st.CreateGroup(t.Context(), store.GroupCreation{Hub: "a.example", State: g.State}); err != nil {
		t.Fatal(err)
	}
	send := func(n int) {
		for range n {
			m := store.OutboxMessage{Sender: "a.example", Destination: "dead.example", GroupID: g.State.GroupID(),
				Recipients: []string{"mimi://dead.example/d/u/d"}, Message: []byte("m")}
			if _, err := st.Deliver(t.Context(), g.State.GroupID(), g.State.Epoch(), store.Fanout{Remote: []store.OutboxMessage{m}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	core, logs := observer.New(zapcore.WarnLevel)
	s := &Sender{Outbox: st, Transport: transportFunc(func(context.Context, string, string, moh.ProviderRequestType, []byte) (*provider.Answer, error) {
		return nil, errors.New("down")
	}), Now: func() time.Time { return time.Unix(0, now.Load()) }}
	log := zap.New(core)
	var r dropReport
	drops := func() []uint64 {
		var out []uint64
		for _, e := range logs.FilterMessageSnippet("outbox backlog is full").All() {
			n, _ := e.ContextMap()["dropped"].(uint64)
			out = append(out, n)
		}
		return out
	}
	for _, step := range []struct {
		name    string
		send    int
		advance time.Duration
		want    []uint64
	}{
		{"within the bound", 2, 0, nil},
		{"first drops, within the interval", 3, DropLogInterval / 2, nil},
		{"first drops, after the interval", 0, DropLogInterval / 2, []uint64{3}},
		{"more within the interval", 4, DropLogInterval / 2, []uint64{3}},
		{"after the interval", 1, DropLogInterval / 2, []uint64{3, 5}},
		{"nothing new", 0, 2 * DropLogInterval, []uint64{3, 5}},
	} {
		t.Run(step.name, func(t *testing.T) {
			send(step.send)
			now.Add(int64(step.advance))
			s.reportDrops(t.Context(), "dead.example", log, &r)
			if got := drops(); fmt.Sprint(got) != fmt.Sprint(step.want) {
				t.Fatalf("drop warnings %v, want %v", got, step.want)
			}
		})
	}
}
