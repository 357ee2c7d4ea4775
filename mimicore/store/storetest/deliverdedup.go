package storetest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// testGroupDeliverDedup checks Fanout.Dedup on Deliver: the first Deliver
// of a key writes the group post, the personal copies and the outbox
// messages; another Deliver of the key, while its record is alive, is
// ErrDuplicate and writes none of them; a Deliver refused for its epoch
// records nothing; after the record expired the key delivers again; of
// concurrent Delivers of one key exactly one delivers; a bad key, or a
// key in CommitEpoch or AddProposal, is ErrInvalid. DedupRecorded reports
// a key while its record is alive, also once the group left the epoch
// the key was delivered in, and no key that was never recorded or whose
// record expired.
func testGroupDeliverDedup(t *testing.T, open func(t *testing.T, clock *Clock) store.Store) {
	clock := NewClock()
	s := open(t, clock)
	g := NewGroup(t, randBytes(t, 16), 2)
	gid, e0 := g.State.GroupID(), g.State.Epoch()
	noErr(t, "CreateGroup", s.CreateGroup(ctx(), store.GroupCreation{Hub: hub, State: g.State,
		Members: []string{fanAlice, fanBob}}))
	remote := map[string][]string{"c.example": {fanCarol}}
	key := digestOf([]byte("message one"))
	// msg is a fan-out of body to the group's log (bob; alice sent it),
	// to carl's queue and to c.example, named by k.
	msg := func(body string, k [32]byte) store.Fanout {
		f := fanoutOf(gid, body, []string{logCarl}, remote, "c.example")
		f.Group = post(gid, body, fanAlice, nil, nil).Group
		f.Dedup, f.DedupExpires = k[:], clock.Now().Add(time.Hour)
		return f
	}

	// Refused for its epoch before its first delivery: nothing recorded.
	_, err := s.Deliver(ctx(), gid, e0+1, msg("one", key))
	wantErr(t, "Deliver for another epoch", err, store.ErrEpochConflict)
	wantRecorded(t, s, "a key refused for its epoch", key, false)
	d, err := s.Deliver(ctx(), gid, e0, msg("one", key))
	noErr(t, "Deliver", err)
	if d.Group == 0 || len(d.Local) != 1 || len(d.Outbox) != 1 {
		t.Fatalf("Delivered = %+v", d)
	}
	for _, body := range []string{"one", "one, with other bytes"} {
		d, err = s.Deliver(ctx(), gid, e0, msg(body, key))
		wantErr(t, "Deliver of a key delivered already", err, store.ErrDuplicate)
		if d.Group != 0 || d.Local != nil || d.Outbox != nil {
			t.Fatalf("a duplicate answered Delivered = %+v", d)
		}
	}
	other := digestOf([]byte("message two"))
	_, err = s.Deliver(ctx(), gid, e0, msg("two", other))
	noErr(t, "Deliver of another key", err)
	noKey := msg("three", key)
	noKey.Dedup, noKey.DedupExpires = nil, time.Time{}
	_, err = s.Deliver(ctx(), gid, e0, noKey)
	noErr(t, "Deliver without a key", err)
	// The epoch is checked first.
	_, err = s.Deliver(ctx(), gid, e0+1, msg("one", key))
	wantErr(t, "Deliver of a delivered key for another epoch", err, store.ErrEpochConflict)
	wantRecorded(t, s, "a delivered key", key, true)
	wantRecorded(t, s, "another delivered key", other, true)
	wantRecorded(t, s, "a key never delivered", digestOf([]byte("never")), false)
	_, err = s.DedupRecorded(ctx(), key[:31])
	wantErr(t, "DedupRecorded of a short key", err, store.ErrInvalid)

	wantMsgs(t, "bob's stream", fetch(t, s, fanBob, 0, store.FetchLimit{}), 1, "one", 3, "two", 5, "three")
	wantMsgs(t, "carl's queue", fetch(t, s, logCarl, 0, store.FetchLimit{}), 2, "one", 4, "two", 6, "three")
	wantOutbox(t, s, "c.example", "one>"+fanCarol, "two>"+fanCarol, "three>"+fanCarol)

	// Once the record expired, the key delivers again.
	clock.Advance(time.Hour)
	wantRecorded(t, s, "a key whose record expired", key, false)
	_, err = s.Deliver(ctx(), gid, e0, msg("one", key))
	noErr(t, "Deliver after the record expired", err)
	wantMsgs(t, "carl's queue after expiry", fetch(t, s, logCarl, 6, store.FetchLimit{}), 8, "one")

	// Concurrent Delivers of one key: exactly one delivers.
	race := digestOf([]byte("raced"))
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { _, errs[i] = s.Deliver(ctx(), gid, e0, msg("raced", race)) })
	}
	wg.Wait()
	delivered := 0
	for i, err := range errs {
		switch {
		case err == nil:
			delivered++
		case !errors.Is(err, store.ErrDuplicate):
			t.Fatalf("concurrent Deliver %d: %v", i, err)
		}
	}
	if delivered != 1 {
		t.Fatalf("%d of %d concurrent Delivers of one key delivered, want 1", delivered, n)
	}
	wantMsgs(t, "carl's queue after the race", fetch(t, s, logCarl, 8, store.FetchLimit{}), 10, "raced")
	wantOutbox(t, s, "c.example", "one>"+fanCarol, "two>"+fanCarol, "three>"+fanCarol, "one>"+fanCarol, "raced>"+fanCarol)

	// Bad keys, and keys where only Deliver takes one.
	bad := digestOf([]byte("bad"))
	short := msg("bad", bad)
	short.Dedup = short.Dedup[:31]
	_, err = s.Deliver(ctx(), gid, e0, short)
	wantErr(t, "Deliver with a short key", err, store.ErrInvalid)
	noExpiry := msg("bad", bad)
	noExpiry.DedupExpires = time.Time{}
	_, err = s.Deliver(ctx(), gid, e0, noExpiry)
	wantErr(t, "Deliver with a key without expiry", err, store.ErrInvalid)
	_, c1 := g.Commit(t)
	c1.Fanout = msg("commit", bad)
	_, err = s.CommitEpoch(ctx(), c1)
	wantErr(t, "CommitEpoch with a key", err, store.ErrInvalid)
	err = s.AddProposal(ctx(), gid, e0, store.PendingProposal{Ref: []byte("ref"), Message: []byte("proposal"), Fanout: msg("proposal", bad)})
	wantErr(t, "AddProposal with a key", err, store.ErrInvalid)
	_, err = s.Deliver(ctx(), gid, e0, msg("bad", bad))
	noErr(t, "Deliver of the key the refused writes carried", err)

	// The group leaves the epoch: the keys delivered in it stay
	// recorded.
	c1.Fanout = store.Fanout{}
	_, err = s.CommitEpoch(ctx(), c1)
	noErr(t, "CommitEpoch", err)
	wantRecorded(t, s, "a key delivered in the epoch the group left", race, true)
}

// wantRecorded checks what DedupRecorded reports for key.
func wantRecorded(t *testing.T, s store.Store, what string, key [32]byte, want bool) {
	t.Helper()
	got, err := s.DedupRecorded(ctx(), key[:])
	noErr(t, "DedupRecorded of "+what, err)
	if got != want {
		t.Fatalf("DedupRecorded of %s = %v, want %v", what, got, want)
	}
}
