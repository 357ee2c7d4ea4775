package storetest

import (
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// testOutboxAdd checks the receipt of a delivered message that goes on
// through the outbox (store.OutboxAdder): its messages are listed in
// order under their destination, the reserved backend destination
// included; its dedup record refuses the same message again, also when
// the queues recorded it first, and writes nothing then; it expires; and
// invalid writes are refused.
func testOutboxAdd(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	gid := []byte("group")
	msg := func(body string, to ...string) store.OutboxMessage {
		return store.OutboxMessage{Sender: "a.example", Destination: store.BackendDestination, GroupID: gid, Recipients: to, Message: []byte(body)}
	}
	key := digestOf([]byte("one"))
	w := store.OutboxWrite{Messages: []store.OutboxMessage{msg("one", fanAlice, fanBob), msg("one'", fanAlice)},
		Dedup: key[:], DedupExpires: clock.Now().Add(time.Hour)}
	ids, err := s.OutboxAdd(ctx(), w)
	noErr(t, "OutboxAdd", err)
	if len(ids) != 2 || ids[1] <= ids[0] {
		t.Fatalf("OutboxAdd answered ids %v, want two increasing ones", ids)
	}
	_, err = s.OutboxAdd(ctx(), w)
	wantErr(t, "the same message again", err, store.ErrDuplicate)
	wantOutbox(t, s, store.BackendDestination, "one>"+fanAlice+","+fanBob, "one'>"+fanAlice)

	// The queues and the outbox share the records: a message queued
	// first is not forwarded, and one forwarded first is not queued.
	queued := digestOf([]byte("queued"))
	d := msgTo("queued", fanAlice)
	d.Dedup, d.DedupExpires = queued[:], clock.Now().Add(time.Hour)
	deliver(t, s, d)
	_, err = s.OutboxAdd(ctx(), store.OutboxWrite{Messages: []store.OutboxMessage{msg("queued", fanAlice)},
		Dedup: queued[:], DedupExpires: clock.Now().Add(time.Hour)})
	wantErr(t, "a message queued before", err, store.ErrDuplicate)
	d = msgTo("one", fanAlice)
	d.Dedup, d.DedupExpires = key[:], clock.Now().Add(time.Hour)
	_, err = s.Append(ctx(), d)
	wantErr(t, "queueing a message forwarded before", err, store.ErrDuplicate)

	// Without a key, and after the record expired, it is written again.
	_, err = s.OutboxAdd(ctx(), store.OutboxWrite{Messages: []store.OutboxMessage{msg("two", fanBob)}})
	noErr(t, "OutboxAdd without a key", err)
	clock.Advance(time.Hour)
	_, err = s.OutboxAdd(ctx(), w)
	noErr(t, "OutboxAdd after the record expired", err)
	wantOutbox(t, s, store.BackendDestination, "one>"+fanAlice+","+fanBob, "one'>"+fanAlice, "two>"+fanBob,
		"one>"+fanAlice+","+fanBob, "one'>"+fanAlice)

	// The request's answer, recorded in the same write; a second write
	// under the same request id is ErrConflict and writes nothing.
	rec := &store.ReplayRecord{Sender: "a.example", RequestID: []byte("request 1"), Digest: digestOf([]byte("r1")),
		Answer: store.Answer{Body: []byte("answer")}, Expires: clock.Now().Add(11 * time.Minute)}
	_, err = s.OutboxAdd(ctx(), store.OutboxWrite{Messages: []store.OutboxMessage{msg("three", fanBob)}, Replay: rec})
	noErr(t, "OutboxAdd with a replay record", err)
	if e, err := s.FindReplay(ctx(), "a.example", []byte("request 1")); err != nil || string(e.Answer.Body) != "answer" || e.Digest != rec.Digest {
		t.Fatalf("FindReplay = %+v, %v; want the answer recorded with the outbox rows", e, err)
	}
	_, err = s.OutboxAdd(ctx(), store.OutboxWrite{Messages: []store.OutboxMessage{msg("four", fanBob)}, Replay: rec})
	wantErr(t, "OutboxAdd under a recorded request id", err, store.ErrConflict)
	wantOutbox(t, s, store.BackendDestination, "one>"+fanAlice+","+fanBob, "one'>"+fanAlice, "two>"+fanBob,
		"one>"+fanAlice+","+fanBob, "one'>"+fanAlice, "three>"+fanBob)

	for _, tc := range []struct {
		name string
		w    store.OutboxWrite
	}{
		{"a replay record without a request id", store.OutboxWrite{Messages: []store.OutboxMessage{msg("x", fanAlice)},
			Replay: &store.ReplayRecord{Sender: "a.example"}}},
		{"no message", store.OutboxWrite{}},
		{"no recipient", store.OutboxWrite{Messages: []store.OutboxMessage{msg("x")}}},
		{"a repeated recipient", store.OutboxWrite{Messages: []store.OutboxMessage{msg("x", fanAlice, fanAlice)}}},
		{"no destination", store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example", GroupID: gid, Recipients: []string{fanAlice}, Message: []byte("x")}}}},
		{"a short key", store.OutboxWrite{Messages: []store.OutboxMessage{msg("x", fanAlice)}, Dedup: key[:31], DedupExpires: clock.Now().Add(time.Hour)}},
		{"a key without expiry", store.OutboxWrite{Messages: []store.OutboxMessage{msg("x", fanAlice)}, Dedup: key[:]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.OutboxAdd(ctx(), tc.w)
			wantErr(t, "OutboxAdd with "+tc.name, err, store.ErrInvalid)
		})
	}
}
