package storetest

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// RunQueueTests runs the contract tests of store.Queues as subtests of t.
// open must return a fresh, empty store whose clock is clock.Now and close
// it with t.Cleanup.
func RunQueueTests(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	plain := func(t *testing.T) store.Store { return open(t, NewClock()) }
	t.Run("AppendFetchAck", func(t *testing.T) { testQueueAppendFetchAck(t, open) })
	t.Run("FetchBounds", func(t *testing.T) { testQueueFetchBounds(t, plain) })
	t.Run("Cursors", func(t *testing.T) { testQueueCursors(t, plain) })
	t.Run("FanOut", func(t *testing.T) { testQueueFanOut(t, plain) })
	t.Run("Limits", func(t *testing.T) { testQueueLimits(t, open) })
	t.Run("Invalid", func(t *testing.T) { testQueueInvalid(t, plain) })
	t.Run("Expiry", func(t *testing.T) { testQueueExpiry(t, open) })
	t.Run("ConcurrentAppenders", func(t *testing.T) { testQueueConcurrentAppenders(t, plain) })
	t.Run("Watch", func(t *testing.T) { testQueueWatch(t, plain) })
	t.Run("Dedup", func(t *testing.T) { testQueueDedup(t, open) })
	t.Run("Replay", func(t *testing.T) { testQueueReplay(t, open) })
	t.Run("OutboxAdd", func(t *testing.T) { testOutboxAdd(t, open) })
	t.Run("OutboxBound", func(t *testing.T) { testOutboxBound(t, open) })
	t.Run("OutboxResetLarge", func(t *testing.T) { testOutboxResetLarge(t, open) })
	t.Run("OutboxPendingBytes", func(t *testing.T) { testOutboxPendingBytes(t, open) })
}

// deliver appends one message and fails unless every recipient took it.
func deliver(t *testing.T, s store.Store, d store.Delivery) []uint64 {
	t.Helper()
	out, err := s.Append(ctx(), d)
	noErr(t, "Append", err)
	if len(out) != len(d.Recipients) {
		t.Fatalf("Append answered %d outcomes for %d recipients", len(out), len(d.Recipients))
	}
	seqs := make([]uint64, len(out))
	for i, a := range out {
		if a.Err != nil || a.Seq == 0 {
			t.Fatalf("Append to %s: seq %d, %v", d.Recipients[i], a.Seq, a.Err)
		}
		seqs[i] = a.Seq
	}
	return seqs
}

func msgTo(msg string, recipients ...string) store.Delivery {
	return store.Delivery{Recipients: recipients, GroupID: []byte("group"), Sender: "b.example", Message: []byte(msg)}
}

func fetch(t *testing.T, s store.Store, client string, after uint64, limit store.FetchLimit) []store.QueuedMessage {
	t.Helper()
	msgs, err := s.Fetch(ctx(), client, after, limit)
	noErr(t, "Fetch", err)
	if msgs == nil {
		t.Fatal("Fetch returned nil, want an empty list")
	}
	return msgs
}

// wantMsgs fails unless msgs are the messages named, with the sequence
// numbers given.
func wantMsgs(t *testing.T, what string, msgs []store.QueuedMessage, want ...any) {
	t.Helper()
	var got, exp []string
	for _, m := range msgs {
		got = append(got, fmt.Sprintf("%d:%s", m.Seq, m.Message))
	}
	for i := 0; i < len(want); i += 2 {
		exp = append(exp, fmt.Sprintf("%d:%s", want[i], want[i+1]))
	}
	if strings.Join(got, " ") != strings.Join(exp, " ") {
		t.Fatalf("%s: got [%s], want [%s]", what, strings.Join(got, " "), strings.Join(exp, " "))
	}
}

func ack(t *testing.T, s store.Store, client string, upTo uint64, want int) {
	t.Helper()
	n, err := s.Ack(ctx(), client, upTo)
	noErr(t, fmt.Sprintf("Ack(%d)", upTo), err)
	if n != want {
		t.Fatalf("Ack(%d) deleted %d messages, want %d", upTo, n, want)
	}
}

func testQueueAppendFetchAck(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	wantMsgs(t, "a queue never appended to", fetch(t, s, alice, 0, store.FetchLimit{}))
	d := msgTo("m1", alice)
	arrived := clock.Now()
	if seqs := deliver(t, s, d); seqs[0] != 1 {
		t.Fatalf("first message got seq %d, want 1", seqs[0])
	}
	d.Message[1] = 'X' // the store must have copied it
	for i := 2; i <= 5; i++ {
		clock.Advance(time.Second)
		if seqs := deliver(t, s, msgTo(fmt.Sprint("m", i), alice)); seqs[0] != uint64(i) {
			t.Fatalf("message %d got seq %d", i, seqs[0])
		}
	}
	msgs := fetch(t, s, alice, 0, store.FetchLimit{})
	wantMsgs(t, "fetch all", msgs, 1, "m1", 2, "m2", 3, "m3", 4, "m4", 5, "m5")
	m := msgs[0]
	if !bytes.Equal(m.GroupID, []byte("group")) || m.Sender != "b.example" || !m.Arrived.Equal(arrived) ||
		!m.Expires.Equal(arrived.Add(store.DefaultQueueTTL)) {
		t.Fatalf("message read back as group %q sender %q arrived %s expires %s; want group, b.example, %s, %s",
			m.GroupID, m.Sender, m.Arrived, m.Expires, arrived, arrived.Add(store.DefaultQueueTTL))
	}
	msgs[0].Message[0] = 'Y' // nor may it hand out its own memory
	wantMsgs(t, "fetch after 2", fetch(t, s, alice, 2, store.FetchLimit{}), 3, "m3", 4, "m4", 5, "m5")
	wantMsgs(t, "another client's queue", fetch(t, s, bob, 0, store.FetchLimit{}))

	ack(t, s, alice, 2, 2)
	wantMsgs(t, "fetch after the ack", fetch(t, s, alice, 0, store.FetchLimit{}), 3, "m3", 4, "m4", 5, "m5")
	ack(t, s, alice, 2, 0) // again: nothing
	ack(t, s, alice, 1, 0) // below: nothing
	ack(t, s, alice, 0, 0)
	_, err := s.Ack(ctx(), alice, 6)
	wantErr(t, "Ack beyond the last appended", err, store.ErrInvalid)
	wantMsgs(t, "after the refused ack", fetch(t, s, alice, 2, store.FetchLimit{}), 3, "m3", 4, "m4", 5, "m5")
	ack(t, s, alice, 5, 3)
	wantMsgs(t, "empty queue", fetch(t, s, alice, 5, store.FetchLimit{}))
	// An emptied queue never reuses a sequence number.
	if seqs := deliver(t, s, msgTo("m6", alice)); seqs[0] != 6 {
		t.Fatalf("message after an emptied queue got seq %d, want 6", seqs[0])
	}
	wantMsgs(t, "fetch", fetch(t, s, alice, 0, store.FetchLimit{}), 6, "m6")
}

func testQueueFetchBounds(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	for i := 1; i <= 6; i++ {
		deliver(t, s, msgTo(strings.Repeat(fmt.Sprint(i), 10), alice))
	}
	big := randBytes(t, 100)
	deliver(t, s, store.Delivery{Recipients: []string{alice}, Message: big})
	for _, tc := range []struct {
		name  string
		after uint64
		limit store.FetchLimit
		want  []uint64
	}{
		{"default", 0, store.FetchLimit{}, []uint64{1, 2, 3, 4, 5, 6, 7}},
		{"two messages", 0, store.FetchLimit{Messages: 2}, []uint64{1, 2}},
		{"two messages after 3", 3, store.FetchLimit{Messages: 2}, []uint64{4, 5}},
		{"30 bytes", 0, store.FetchLimit{Bytes: 30}, []uint64{1, 2, 3}},
		{"29 bytes", 0, store.FetchLimit{Bytes: 29}, []uint64{1, 2}},
		{"one byte: one message anyway", 0, store.FetchLimit{Bytes: 1}, []uint64{1}},
		{"a large first message alone", 6, store.FetchLimit{Bytes: 10}, []uint64{7}},
		{"stops before a large message", 5, store.FetchLimit{Bytes: 50}, []uint64{6}},
		{"both bounds", 1, store.FetchLimit{Messages: 3, Bytes: 25}, []uint64{2, 3}},
		{"at the end", 7, store.FetchLimit{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := fetch(t, s, alice, tc.after, tc.limit)
			var got []uint64
			for _, m := range msgs {
				got = append(got, m.Seq)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("fetched %v, want %v", got, tc.want)
			}
		})
	}
	if m := fetch(t, s, alice, 6, store.FetchLimit{}); !bytes.Equal(m[0].Message, big) || m[0].GroupID == nil || len(m[0].GroupID) != 0 || m[0].Sender != "" {
		t.Fatalf("message without group or sender read back as %+v", m[0])
	}
}

// testQueueCursors checks the cursors a queue refuses: beyond its last
// sequence number, for Fetch and Ack, also of a queue never appended to.
func testQueueCursors(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	deliver(t, s, msgTo("m1", alice))
	deliver(t, s, msgTo("m2", alice))
	for _, tc := range []struct {
		name   string
		client string
		cursor uint64
	}{
		{"beyond the last", alice, 3},
		{"far beyond", alice, 1 << 62},
		{"largest", alice, ^uint64(0)},
		{"unknown queue", bob, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Fetch(ctx(), tc.client, tc.cursor, store.FetchLimit{})
			wantErr(t, "Fetch", err, store.ErrInvalid)
			_, err = s.Ack(ctx(), tc.client, tc.cursor)
			wantErr(t, "Ack", err, store.ErrInvalid)
		})
	}
	ack(t, s, bob, 0, 0)
	wantMsgs(t, "after the refusals", fetch(t, s, alice, 0, store.FetchLimit{}), 1, "m1", 2, "m2")
}

func testQueueFanOut(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	const n = 100
	clients := make([]string, n)
	for i := range clients {
		clients[i] = fmt.Sprintf("mimi://a.example/d/user%d/dev", i)
	}
	deliver(t, s, msgTo("solo", clients[7]))
	// One number per Append, shared by its recipients.
	seqs := deliver(t, s, msgTo("all", clients...))
	for i, seq := range seqs {
		if seq != 2 {
			t.Fatalf("recipient %d got seq %d, want 2", i, seq)
		}
	}
	// Recipients in another order, a subset.
	seqs = deliver(t, s, msgTo("some", clients[9], clients[7], clients[3]))
	if fmt.Sprint(seqs) != "[3 3 3]" {
		t.Fatalf("seqs %v, want [3 3 3]", seqs)
	}
	for i, c := range clients {
		msgs := fetch(t, s, c, 0, store.FetchLimit{})
		switch i {
		case 7:
			wantMsgs(t, c, msgs, 1, "solo", 2, "all", 3, "some")
		case 3, 9:
			wantMsgs(t, c, msgs, 2, "all", 3, "some")
		default:
			wantMsgs(t, c, msgs, 2, "all")
		}
	}
	// Acknowledged by some, the others still have it.
	for _, c := range clients[:n/2] {
		ack(t, s, c, 2, 1+int(boolInt(c == clients[7])))
	}
	for _, c := range clients[n/2:] {
		if msgs := fetch(t, s, c, 0, store.FetchLimit{}); string(msgs[0].Message) != "all" {
			t.Fatalf("%s lost the message others acknowledged", c)
		}
	}
}

func boolInt(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func testQueueLimits(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	for _, tc := range []struct {
		name   string
		limits store.QueueLimits
		sizes  []int // message sizes appended in order
		full   []bool
	}{
		{"messages", store.QueueLimits{MaxMessages: 3}, []int{1, 1, 1, 1, 1}, []bool{false, false, false, true, true}},
		{"bytes", store.QueueLimits{MaxBytes: 10}, []int{4, 4, 4, 2, 1}, []bool{false, false, true, false, true}},
		{"one message larger than the queue", store.QueueLimits{MaxBytes: 10}, []int{11, 10, 1}, []bool{true, false, true}},
		{"both", store.QueueLimits{MaxMessages: 2, MaxBytes: 100}, []int{60, 60, 30, 30}, []bool{false, true, false, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, NewClock())
			for i, size := range tc.sizes {
				// Every Append takes a number, refused or not.
				next := uint64(i + 1)
				out, err := s.Append(ctx(), store.Delivery{Recipients: []string{alice, bob},
					Message: make([]byte, size), Limits: tc.limits})
				noErr(t, "Append", err)
				if tc.full[i] {
					wantErr(t, fmt.Sprintf("append %d to a full queue", i), out[0].Err, store.ErrQueueFull)
					wantErr(t, fmt.Sprintf("append %d to a full queue", i), out[0].Err, store.ErrConflict)
					if out[0].Seq != 0 {
						t.Fatalf("refused append %d got seq %d", i, out[0].Seq)
					}
				} else {
					if out[0].Err != nil || out[0].Seq != next {
						t.Fatalf("append %d: seq %d, %v; want seq %d", i, out[0].Seq, out[0].Err, next)
					}
				}
				// bob's queue has no limit of its own here: it takes
				// whatever alice's does, so the two stay in step.
				if (out[1].Err != nil) != tc.full[i] {
					t.Fatalf("append %d: bob's outcome %v differs from alice's", i, out[1].Err)
				}
			}
		})
	}
	t.Run("one full recipient among many", func(t *testing.T) {
		s := open(t, NewClock())
		lim := store.QueueLimits{MaxMessages: 1}
		deliver(t, s, store.Delivery{Recipients: []string{alice}, Message: []byte("first"), Limits: lim})
		out, err := s.Append(ctx(), store.Delivery{Recipients: []string{bob, alice, "mimi://c"}, Message: []byte("second"), Limits: lim})
		noErr(t, "Append", err)
		if out[0].Seq != 2 || out[0].Err != nil || out[2].Seq != 2 || out[2].Err != nil {
			t.Fatalf("recipients with room: %+v", out)
		}
		wantErr(t, "the full recipient", out[1].Err, store.ErrQueueFull)
		wantMsgs(t, "full queue", fetch(t, s, alice, 0, store.FetchLimit{}), 1, "first")
		wantMsgs(t, "other queue", fetch(t, s, bob, 0, store.FetchLimit{}), 2, "second")
		ack(t, s, alice, 1, 1)
		// The number the full queue refused is a gap in alice's stream.
		if seqs := deliver(t, s, store.Delivery{Recipients: []string{alice}, Message: []byte("third"), Limits: lim}); seqs[0] != 3 {
			t.Fatalf("append after the ack got seq %d, want 3", seqs[0])
		}
		wantMsgs(t, "full queue after the ack", fetch(t, s, alice, 0, store.FetchLimit{}), 3, "third")
	})
	t.Run("every recipient full", func(t *testing.T) {
		s := open(t, NewClock())
		out, err := s.Append(ctx(), store.Delivery{Recipients: []string{alice, bob}, Message: make([]byte, 11),
			Limits: store.QueueLimits{MaxBytes: 10}})
		noErr(t, "Append", err)
		wantErr(t, "alice", out[0].Err, store.ErrQueueFull)
		wantErr(t, "bob", out[1].Err, store.ErrQueueFull)
		wantMsgs(t, "alice", fetch(t, s, alice, 0, store.FetchLimit{}))
	})
	t.Run("expired messages do not count", func(t *testing.T) {
		clock := NewClock()
		s := open(t, clock)
		lim := store.QueueLimits{MaxMessages: 2}
		for _, exp := range []time.Duration{time.Minute, time.Hour} {
			deliver(t, s, store.Delivery{Recipients: []string{alice}, Message: []byte("m"),
				Expires: clock.Now().Add(exp), Limits: lim})
		}
		out, err := s.Append(ctx(), store.Delivery{Recipients: []string{alice}, Message: []byte("m"), Limits: lim})
		noErr(t, "Append", err)
		wantErr(t, "full", out[0].Err, store.ErrQueueFull)
		clock.Advance(time.Minute)
		if seqs := deliver(t, s, store.Delivery{Recipients: []string{alice}, Message: []byte("m3"), Limits: lim}); seqs[0] != 4 {
			t.Fatalf("append once a message expired got seq %d, want 4", seqs[0])
		}
		out, err = s.Append(ctx(), store.Delivery{Recipients: []string{alice}, Message: []byte("m"), Limits: lim})
		noErr(t, "Append", err)
		wantErr(t, "full again", out[0].Err, store.ErrQueueFull)
	})
}

func testQueueInvalid(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	ok := msgTo("m", alice)
	with := func(f func(*store.Delivery)) store.Delivery {
		d := ok
		d.Recipients = []string{alice}
		f(&d)
		return d
	}
	many := make([]string, store.MaxAppendRecipients+1)
	for i := range many {
		many[i] = fmt.Sprint("mimi://c/", i)
	}
	for _, tc := range []struct {
		name string
		d    store.Delivery
	}{
		{"no recipients", with(func(d *store.Delivery) { d.Recipients = nil })},
		{"too many recipients", with(func(d *store.Delivery) { d.Recipients = many })},
		{"repeated recipient", with(func(d *store.Delivery) { d.Recipients = []string{alice, bob, alice} })},
		{"empty recipient", with(func(d *store.Delivery) { d.Recipients = []string{alice, ""} })},
		{"oversized recipient", with(func(d *store.Delivery) { d.Recipients = []string{strings.Repeat("c", store.MaxClientURISize+1)} })},
		{"recipient not UTF-8", with(func(d *store.Delivery) { d.Recipients = []string{"mimi://a.example/\xff"} })},
		{"empty message", with(func(d *store.Delivery) { d.Message = nil })},
		{"oversized message", with(func(d *store.Delivery) { d.Message = make([]byte, store.MaxQueuedMessageSize+1) })},
		{"oversized group id", with(func(d *store.Delivery) { d.GroupID = make([]byte, store.MaxIDSize+1) })},
		{"oversized sender", with(func(d *store.Delivery) { d.Sender = strings.Repeat("s", store.MaxClientURISize+1) })},
		{"negative message limit", with(func(d *store.Delivery) { d.Limits.MaxMessages = -1 })},
		{"negative byte limit", with(func(d *store.Delivery) { d.Limits.MaxBytes = -1 })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Append(ctx(), tc.d)
			wantErr(t, "Append", err, store.ErrInvalid)
		})
	}
	wantMsgs(t, "after the refused appends", fetch(t, s, alice, 0, store.FetchLimit{}))
	for _, l := range []store.FetchLimit{{Messages: -1}, {Bytes: -1}, {Messages: store.MaxFetchMessages + 1}} {
		_, err := s.Fetch(ctx(), alice, 0, l)
		wantErr(t, fmt.Sprintf("Fetch with %+v", l), err, store.ErrInvalid)
	}
	_, err := s.Fetch(ctx(), "", 0, store.FetchLimit{})
	wantErr(t, "Fetch of no client", err, store.ErrInvalid)
	_, err = s.Ack(ctx(), "", 1)
	wantErr(t, "Ack of no client", err, store.ErrInvalid)
	big := with(func(d *store.Delivery) { d.Message = randBytes(t, store.MaxQueuedMessageSize) })
	deliver(t, s, big)
	if m := fetch(t, s, alice, 0, store.FetchLimit{}); !bytes.Equal(m[0].Message, big.Message) {
		t.Fatal("largest message did not read back intact")
	}
	fetch(t, s, alice, 0, store.FetchLimit{Messages: store.MaxFetchMessages})
}

func testQueueExpiry(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	start := clock.Now()
	deliver(t, s, store.Delivery{Recipients: []string{alice, bob}, Message: []byte("short"), Expires: start.Add(time.Hour)})
	deliver(t, s, store.Delivery{Recipients: []string{alice}, Message: []byte("default")})
	deliver(t, s, store.Delivery{Recipients: []string{alice}, Message: []byte("shorter"), Expires: start.Add(time.Minute)})
	clock.Advance(time.Minute)
	wantMsgs(t, "a minute later", fetch(t, s, alice, 0, store.FetchLimit{}), 1, "short", 2, "default")
	clock.Advance(time.Hour)
	wantMsgs(t, "an hour later", fetch(t, s, alice, 0, store.FetchLimit{}), 2, "default")
	wantMsgs(t, "bob an hour later", fetch(t, s, bob, 0, store.FetchLimit{}))
	// Acknowledging expired messages is fine; they do not count.
	ack(t, s, bob, 1, 0)
	n, err := s.DeleteExpired(ctx(), clock.Now())
	noErr(t, "DeleteExpired", err)
	if n != 2 {
		t.Fatalf("DeleteExpired removed %d records, want 2 (alice's short and shorter)", n)
	}
	wantMsgs(t, "after the sweep", fetch(t, s, alice, 0, store.FetchLimit{}), 2, "default")
	clock.ms.Store(start.Add(store.DefaultQueueTTL).UnixMilli())
	wantMsgs(t, "after the default TTL", fetch(t, s, alice, 0, store.FetchLimit{}))
	n, err = s.DeleteExpired(ctx(), clock.Now())
	noErr(t, "DeleteExpired", err)
	if n != 1 {
		t.Fatalf("DeleteExpired removed %d records, want 1", n)
	}
	// Sequence numbers go on; expired numbers are skipped, not reused.
	if seqs := deliver(t, s, msgTo("after", alice)); seqs[0] != 4 {
		t.Fatalf("append after the sweep got seq %d, want 4", seqs[0])
	}
	ack(t, s, alice, 4, 1)
}

// testQueueConcurrentAppenders appends from many goroutines at once, some
// to one queue, some to it and another: the sequence numbers of a queue
// are 1..n without gaps or repeats, each message is stored under the
// number its Append answered, and none is lost.
func testQueueConcurrentAppenders(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	const writers, each = 16, 40
	var mu sync.Mutex
	bySeq := map[string]map[uint64]string{alice: {}, bob: {}}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				msg := fmt.Sprintf("w%d/%d", w, i)
				recipients := []string{alice}
				if w%2 == 1 {
					recipients = []string{bob, alice}
				}
				out, err := s.Append(ctx(), store.Delivery{Recipients: recipients, Message: []byte(msg)})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for j, r := range recipients {
					if prev, dup := bySeq[r][out[j].Seq]; dup || out[j].Err != nil {
						errs <- fmt.Errorf("%s: seq %d given to %q and %q (%v)", r, out[j].Seq, prev, msg, out[j].Err)
					}
					bySeq[r][out[j].Seq] = msg
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for client, want := range map[string]int{alice: writers * each, bob: writers / 2 * each} {
		var got []store.QueuedMessage
		for after := uint64(0); ; {
			page := fetch(t, s, client, after, store.FetchLimit{Messages: 37})
			if len(page) == 0 {
				break
			}
			got = append(got, page...)
			after = page[len(page)-1].Seq
		}
		if len(got) != want {
			t.Fatalf("%s: %d messages stored, want %d", client, len(got), want)
		}
		for i, m := range got {
			if i > 0 && m.Seq <= got[i-1].Seq {
				t.Fatalf("%s: message %d has seq %d after %d: disorder", client, i, m.Seq, got[i-1].Seq)
			}
			if bySeq[client][m.Seq] != string(m.Message) {
				t.Fatalf("%s: seq %d holds %q, Append answered it for %q", client, m.Seq, m.Message, bySeq[client][m.Seq])
			}
		}
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// testQueueWatch checks WatchQueue: woken by a committed append above its
// cursor to its queue only, the message fetchable once woken, stop
// idempotent, and a waiter that gives up leaves nothing running.
func testQueueWatch(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	t.Run("wakes", func(t *testing.T) {
		ready, stop := s.WatchQueue(alice, 0)
		defer stop()
		if closed(ready) {
			t.Fatal("woken before any append")
		}
		deliver(t, s, msgTo("to bob", bob))
		if closed(ready) {
			t.Fatal("woken by an append to another queue")
		}
		deliver(t, s, msgTo("to alice", alice))
		if !closed(ready) {
			t.Fatal("not woken by an append to its queue")
		}
		stop()
		stop()
	})
	t.Run("cursor", func(t *testing.T) {
		deliver(t, s, msgTo("m2", alice))     // bob: 1, alice: 2, 3
		ready, stop := s.WatchQueue(alice, 4) // waits for 5
		defer stop()
		deliver(t, s, msgTo("m3", alice))
		if closed(ready) {
			t.Fatal("woken by seq 4 with cursor 4")
		}
		deliver(t, s, msgTo("m4", alice))
		if !closed(ready) {
			t.Fatal("not woken by seq 5 with cursor 4")
		}
	})
	t.Run("after commit", func(t *testing.T) {
		// Each wake-up must find its message already readable.
		for i := range 50 {
			after := uint64(4 + i)
			ready, stop := s.WatchQueue(alice, after)
			done := make(chan error, 1)
			go func() {
				_, err := s.Append(ctx(), msgTo(fmt.Sprint("w", i), alice))
				done <- err
			}()
			select {
			case <-ready:
			case <-time.After(10 * time.Second):
				t.Fatal("not woken within 10 s")
			}
			msgs := fetch(t, s, alice, after, store.FetchLimit{})
			if len(msgs) == 0 {
				t.Fatalf("woken for seq > %d, but Fetch finds nothing: woken before the commit", after)
			}
			stop()
			noErr(t, "Append", <-done)
		}
	})
	t.Run("waiters give up", func(t *testing.T) {
		before := runtime.NumGoroutine()
		var wg sync.WaitGroup
		for range 100 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ready, stop := s.WatchQueue("mimi://a.example/d/idle/dev", 0)
				defer stop()
				select {
				case <-ready:
					t.Error("woken without an append")
				case <-time.After(time.Millisecond):
				}
			}()
		}
		wg.Wait()
		// Nothing the watches started may outlive them.
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Fatalf("%d goroutines after the waiters gave up, %d before", n, before)
		}
	})
	t.Run("close wakes", func(t *testing.T) {
		ready, stop := s.WatchQueue(bob, 100)
		defer stop()
		noErr(t, "Close", s.Close())
		select {
		case <-ready:
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not wake a waiter")
		}
	})
}

// testReopenQueues checks that KeyPackages (available, claimed, last
// resort) and queues (messages, sequence numbers, acknowledgements)
// survive closing and reopening the store.
func testReopenQueues(t *testing.T, open func() (store.Store, error)) {
	s, err := open()
	noErr(t, "opening store", err)
	exp := time.Now().Add(future)
	noErr(t, "PublishKeyPackages", s.PublishKeyPackages(ctx(), alice, []store.KeyPackage{
		KP(alice, 1, "a", exp, false), KP(alice, 1, "b", exp.Add(time.Minute), false), KP(alice, 1, "lr", exp, true)}, store.KeyPackageLimits{}))
	claimed := claim(t, s, alice, 1)
	for i := 1; i <= 3; i++ {
		deliver(t, s, msgTo(fmt.Sprint("m", i), alice, bob))
	}
	ack(t, s, alice, 1, 1)
	noErr(t, "Close", s.Close())

	for round := range 2 {
		s, err := open()
		noErr(t, "reopening store", err)
		what := fmt.Sprintf("round %d", round)
		if round == 0 {
			wantRefs(t, what, list(t, s, alice), "lr", "b") // by NotAfter
			wantMsgs(t, what+": alice", fetch(t, s, alice, 0, store.FetchLimit{}), 2, "m2", 3, "m3")
			wantMsgs(t, what+": bob", fetch(t, s, bob, 0, store.FetchLimit{}), 1, "m1", 2, "m2", 3, "m3")
			kp, err := s.KeyPackageByRef(ctx(), claimed.Ref)
			noErr(t, "KeyPackageByRef", err)
			if !kp.Claimed {
				t.Fatalf("%s: claimed package reads back as available", what)
			}
			wantRefs(t, what+": claims", []store.KeyPackage{claim(t, s, alice, 1), claim(t, s, alice, 1)}, "b", "lr")
			if seqs := deliver(t, s, msgTo("m4", alice)); seqs[0] != 4 {
				t.Fatalf("%s: append after reopen got seq %d, want 4", what, seqs[0])
			}
			ack(t, s, alice, 3, 2)
		} else {
			wantRefs(t, what, list(t, s, alice), "lr")
			wantMsgs(t, what+": alice", fetch(t, s, alice, 0, store.FetchLimit{}), 4, "m4")
			ack(t, s, bob, 3, 3)
		}
		noErr(t, "Close", s.Close())
	}
}

// testQueueDedup checks duplicate suppression: a message appended again
// with the same Dedup key writes nothing and is ErrDuplicate, to every
// recipient alike, until the key expires; other keys and Appends without
// one are not affected; a bad key is ErrInvalid.
func testQueueDedup(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	const a, b = "mimi://a.example/d/alice/phone", "mimi://a.example/d/bob/phone"
	key := digestOf([]byte("message one"))
	d := msgTo("one", a, b)
	d.Dedup, d.DedupExpires = key[:], clock.Now().Add(time.Hour)
	deliver(t, s, d)
	_, err := s.Append(ctx(), d)
	wantErr(t, "the same message again", err, store.ErrDuplicate)
	again := msgTo("one, resent to bob alone", b)
	again.Dedup, again.DedupExpires = key[:], clock.Now().Add(time.Hour)
	_, err = s.Append(ctx(), again)
	wantErr(t, "the same key to another recipient", err, store.ErrDuplicate)
	other := digestOf([]byte("message two"))
	d2 := msgTo("two", a)
	d2.Dedup, d2.DedupExpires = other[:], clock.Now().Add(time.Hour)
	deliver(t, s, d2)
	deliver(t, s, msgTo("no key", a))
	deliver(t, s, msgTo("no key", a))
	wantMsgs(t, "alice's queue", fetch(t, s, a, 0, store.FetchLimit{}), 1, "one", 2, "two", 3, "no key", 4, "no key")
	wantMsgs(t, "bob's queue", fetch(t, s, b, 0, store.FetchLimit{}), 1, "one")

	clock.Advance(time.Hour)
	deliver(t, s, d) // the record expired
	// The refused duplicates took no number.
	wantMsgs(t, "bob's queue after expiry", fetch(t, s, b, 0, store.FetchLimit{}), 1, "one", 5, "one")

	for _, tc := range []struct {
		name string
		key  []byte
		exp  time.Time
	}{{"a short key", key[:31], clock.Now().Add(time.Hour)}, {"no expiry", key[:], time.Time{}}} {
		bad := msgTo("bad", a)
		bad.Dedup, bad.DedupExpires = tc.key, tc.exp
		_, err := s.Append(ctx(), bad)
		wantErr(t, "Append with "+tc.name, err, store.ErrInvalid)
	}
}

// testQueueReplay checks Delivery.Replay: the request's answer is recorded
// with the delivery (FindReplay finds it); an Append whose key holds an
// alive entry is ErrConflict and writes nothing; a Dedup hit writes
// neither the entries nor the answer; after expiry the key is free again;
// a bad record is ErrInvalid.
func testQueueReplay(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	const a, b = "mimi://a.example/d/alice/phone", "mimi://a.example/d/bob/phone"
	const sender = "hub.example"
	record := func(id, answer string) *store.ReplayRecord {
		return &store.ReplayRecord{Sender: sender, RequestID: []byte(id), Digest: digestOf([]byte(id + answer)),
			Answer: store.Answer{Body: []byte(answer)}, Expires: clock.Now().Add(11 * time.Minute)}
	}
	d := msgTo("one", a, b)
	d.Replay = record("request 1", "answer 1")
	deliver(t, s, d)
	e, err := s.FindReplay(ctx(), sender, []byte("request 1"))
	noErr(t, "FindReplay of the recorded request", err)
	if e.Pending || e.Digest != d.Replay.Digest || string(e.Answer.Body) != "answer 1" {
		t.Fatalf("FindReplay = %+v, want the answer recorded with the delivery", e)
	}

	// The same request id again: nothing is written.
	again := msgTo("two", a)
	again.Replay = record("request 1", "another answer")
	_, err = s.Append(ctx(), again)
	wantErr(t, "Append under a recorded request id", err, store.ErrConflict)
	if e, err := s.FindReplay(ctx(), sender, []byte("request 1")); err != nil || string(e.Answer.Body) != "answer 1" {
		t.Fatalf("FindReplay after the conflict = %+v, %v; want the first answer", e, err)
	}
	// A single recipient takes the other path of the store; still nothing.
	_, err = s.Append(ctx(), again)
	wantErr(t, "Append under a recorded request id, again", err, store.ErrConflict)

	// A duplicate message (Dedup) under a new request id writes nothing.
	key := digestOf([]byte("three"))
	d3 := msgTo("three", b)
	d3.Dedup, d3.DedupExpires = key[:], clock.Now().Add(time.Hour)
	d3.Replay = record("request 3", "answer 3")
	deliver(t, s, d3)
	dup := msgTo("three", b)
	dup.Dedup, dup.DedupExpires = key[:], clock.Now().Add(time.Hour)
	dup.Replay = record("request 4", "answer 4")
	_, err = s.Append(ctx(), dup)
	wantErr(t, "a duplicate message under a new request id", err, store.ErrDuplicate)
	_, err = s.FindReplay(ctx(), sender, []byte("request 4"))
	wantErr(t, "FindReplay of the duplicate's request", err, store.ErrNotFound)
	wantMsgs(t, "alice's queue", fetch(t, s, a, 0, store.FetchLimit{}), 1, "one")
	wantMsgs(t, "bob's queue", fetch(t, s, b, 0, store.FetchLimit{}), 1, "one", 2, "three")

	// Once the entry expired, the request id may be recorded again.
	clock.Advance(12 * time.Minute)
	fresh := msgTo("four", a)
	fresh.Replay = record("request 1", "answer 5")
	deliver(t, s, fresh)
	if e, err := s.FindReplay(ctx(), sender, []byte("request 1")); err != nil || string(e.Answer.Body) != "answer 5" {
		t.Fatalf("FindReplay after expiry = %+v, %v; want the new answer", e, err)
	}

	for _, tc := range []struct {
		name string
		r    store.ReplayRecord
	}{
		{"no sender", store.ReplayRecord{RequestID: []byte("x")}},
		{"no request id", store.ReplayRecord{Sender: sender}},
		{"an oversized answer", store.ReplayRecord{Sender: sender, RequestID: []byte("x"),
			Answer: store.Answer{Body: make([]byte, store.MaxAnswerSize+1)}}},
	} {
		bad := msgTo("bad", a)
		bad.Replay = &tc.r
		_, err := s.Append(ctx(), bad)
		wantErr(t, "Append with "+tc.name, err, store.ErrInvalid)
	}
}

// CheckAckOfUnknownClient checks that s, a fresh store, writes nothing
// for an Ack of a client that has neither a queue nor a group membership:
// the local API lets a user acknowledge for any device name of their own,
// and a cursor row per made-up client URI would be kept for ever (nothing
// deletes cursors). A client with a queue still gets its cursor.
// cursorRows counts the store's cursor rows, in its own SQL.
func CheckAckOfUnknownClient(t *testing.T, s store.Store, cursorRows func() (int, error)) {
	t.Helper()
	const known = "mimi://a.example/d/alice/phone"
	deliver(t, s, msgTo("m", known))
	for _, tc := range []struct {
		name        string
		clients     []string
		wantAcked   int
		wantCursors int
	}{
		{"made-up clients", []string{"mimi://a.example/d/mallory/x0", "mimi://a.example/d/mallory/x1",
			"mimi://a.example/d/mallory/x2"}, 0, 0},
		{"a client with a queue", []string{known}, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range tc.clients {
				ack(t, s, c, 1, tc.wantAcked)
			}
			if n, err := cursorRows(); err != nil || n != tc.wantCursors {
				t.Fatalf("%d cursor rows (%v), want %d", n, err, tc.wantCursors)
			}
		})
	}
	wantMsgs(t, "Fetch after the ack", fetch(t, s, known, 0, store.FetchLimit{}))
}

// CheckFetchCost appends n messages of about 1 MiB for one client of s, a
// fresh store, and fetches them with three byte bounds (the default 4
// MiB, 1 byte, 8 MiB): each Fetch must answer the messages its bound
// allows, and cost, as cost measures it in the store's own terms (bytes
// read, bytes allocated) around the Fetch it is given, at most what
// limit allows for the bytes answered. A store that read every message up
// to the count bound (100 by default) to find where the byte bound cut
// spent 100 MiB to answer 4.
func CheckFetchCost(t *testing.T, s store.Store, n int, cost func(fetch func()) int64, limit func(answered int64) int64) {
	t.Helper()
	checkFetchCost(t, s, n, func(client string, msg []byte) {
		deliver(t, s, store.Delivery{Recipients: []string{client}, Message: msg})
	}, cost, limit)
}

// CheckGroupFetchCost is CheckFetchCost with the messages posted to the
// log of a group hosted in s (store.GroupPost) of which the client is
// the one local member: the posts are read through the group's log,
// not a queue of the client's own.
func CheckGroupFetchCost(t *testing.T, s store.Store, n int, cost func(fetch func()) int64, limit func(answered int64) int64) {
	t.Helper()
	var g *Group
	checkFetchCost(t, s, n, func(client string, msg []byte) {
		if g == nil {
			g = NewGroup(t, randBytes(t, 16), 2)
			noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State,
				Members: []string{client}}))
		}
		gid := g.State.GroupID()
		_, err := s.Deliver(ctx(), gid, g.State.Epoch(), store.Fanout{Group: &store.GroupPost{GroupID: gid,
			Sender: fanBob, Message: msg}})
		noErr(t, "Deliver a post", err)
	}, cost, limit)
}

// checkFetchCost is CheckFetchCost with the messages appended by add.
func checkFetchCost(t *testing.T, s store.Store, n int, add func(client string, msg []byte), cost func(fetch func()) int64, limit func(answered int64) int64) {
	t.Helper()
	const client = "mimi://a.example/d/alice/phone"
	const size = 1<<20 - 100
	for range n {
		add(client, make([]byte, size))
	}
	for _, tc := range []struct {
		name      string
		limit     store.FetchLimit
		wantCount int
	}{
		{"default bounds", store.FetchLimit{}, store.DefaultFetchBytes / size},
		{"one byte", store.FetchLimit{Messages: n, Bytes: 1}, 1},
		{"8 MiB", store.FetchLimit{Messages: n, Bytes: 8 << 20}, 8 << 20 / size},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var msgs []store.QueuedMessage
			var err error
			spent := cost(func() { msgs, err = s.Fetch(ctx(), client, 0, tc.limit) })
			if err != nil || len(msgs) != tc.wantCount {
				t.Fatalf("Fetch = %d messages, %v; want %d", len(msgs), err, tc.wantCount)
			}
			for _, m := range msgs {
				if len(m.Message) != size {
					t.Fatalf("Fetch answered a message of %d bytes, want %d", len(m.Message), size)
				}
			}
			answered := int64(len(msgs) * size)
			if spent > limit(answered) {
				t.Fatalf("Fetch cost %d MiB of a %d MiB backlog to answer %d MiB", spent>>20, n*size>>20, answered>>20)
			}
		})
	}
}
