package storetest

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

func record(t *testing.T, s store.Store, sender string, id []byte, d [32]byte, body string, exp time.Time) (store.ReplayEntry, error) {
	t.Helper()
	return s.RecordReplay(ctx(), sender, id, d, store.Answer{Body: []byte(body)}, exp)
}

func testReplayLog(t *testing.T, open func(t *testing.T) store.Store) {
	const sender = "a.example"

	t.Run("RecordFind", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		_, err := s.FindReplay(ctx(), sender, id)
		wantErr(t, "FindReplay before any record", err, store.ErrNotFound)
		e, err := record(t, s, sender, id, d, "first answer", time.Now().Add(future))
		noErr(t, "RecordReplay", err)
		if e.Digest != d || e.Pending || string(e.Answer.Body) != "first answer" {
			t.Fatalf("RecordReplay returned %+v", e)
		}
		for i := 0; i < 2; i++ {
			e, err := s.FindReplay(ctx(), sender, id)
			noErr(t, "FindReplay", err)
			if e.Digest != d || e.Pending || string(e.Answer.Body) != "first answer" {
				t.Fatalf("FindReplay = %+v", e)
			}
			e.Answer.Body[0] = 'X' // the store must not hand out its memory
		}
		// A second record of the key, same or other bytes, stores nothing
		// and reports the entry that holds it.
		for _, other := range []string{"request", "other"} {
			e, err = record(t, s, sender, id, digestOf([]byte(other)), "second answer", time.Now().Add(future))
			wantErr(t, "second RecordReplay", err, store.ErrConflict)
			if e.Digest != d || string(e.Answer.Body) != "first answer" {
				t.Fatalf("conflicting RecordReplay reported %+v", e)
			}
		}
		// The ReplayCache sees the same entry: a retry is a duplicate.
		r := reserve(t, s, sender, id, d, time.Now().Add(future))
		if r.Status != store.ReplayDuplicate || string(r.Answer.Body) != "first answer" {
			t.Fatalf("Reserve after RecordReplay = %s %q", r.Status, r.Answer.Body)
		}
	})

	t.Run("PendingReservation", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		reserve(t, s, sender, id, d, time.Now().Add(future))
		e, err := s.FindReplay(ctx(), sender, id)
		noErr(t, "FindReplay", err)
		if !e.Pending || e.Digest != d || e.Answer.Body != nil {
			t.Fatalf("pending reservation found as %+v", e)
		}
		e, err = record(t, s, sender, id, d, "answer", time.Now().Add(future))
		wantErr(t, "RecordReplay over a pending reservation", err, store.ErrConflict)
		if !e.Pending {
			t.Fatalf("conflict reported %+v, want the pending entry", e)
		}
	})

	t.Run("Expiry", func(t *testing.T) {
		s := open(t)
		id, d := randBytes(t, 16), digestOf([]byte("request"))
		_, err := record(t, s, sender, id, d, "old", time.Now().Add(past))
		noErr(t, "RecordReplay", err)
		_, err = s.FindReplay(ctx(), sender, id)
		wantErr(t, "FindReplay of an expired entry", err, store.ErrNotFound)
		e, err := record(t, s, sender, id, digestOf([]byte("new")), "new", time.Now().Add(future))
		noErr(t, "RecordReplay over an expired entry", err)
		if string(e.Answer.Body) != "new" {
			t.Fatalf("entry %+v", e)
		}
	})

	t.Run("InvalidArguments", func(t *testing.T) {
		s := open(t)
		d := digestOf(nil)
		exp := time.Now().Add(future)
		_, err := s.RecordReplay(ctx(), sender, randBytes(t, 16), d, store.Answer{Body: make([]byte, store.MaxAnswerSize+1)}, exp)
		wantErr(t, "RecordReplay with an oversized answer", err, store.ErrInvalid)
		_, err = s.RecordReplay(ctx(), "", randBytes(t, 16), d, store.Answer{}, exp)
		wantErr(t, "RecordReplay without sender", err, store.ErrInvalid)
		_, err = s.RecordReplay(ctx(), sender, nil, d, store.Answer{}, exp)
		wantErr(t, "RecordReplay without request id", err, store.ErrInvalid)
		_, err = s.FindReplay(ctx(), sender, make([]byte, store.MaxIDSize+1))
		wantErr(t, "FindReplay with an oversized id", err, store.ErrInvalid)
	})

	t.Run("ConcurrentSameKey", func(t *testing.T) {
		s := open(t)
		id := randBytes(t, 16)
		const workers = 16
		var wg sync.WaitGroup
		stored := make(chan []byte, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := []byte{byte(w)}
				_, err := s.RecordReplay(ctx(), sender, id, digestOf(body), store.Answer{Body: body}, time.Now().Add(future))
				if err == nil {
					stored <- body
				}
			}()
		}
		wg.Wait()
		close(stored)
		var winners [][]byte
		for b := range stored {
			winners = append(winners, b)
		}
		if len(winners) != 1 {
			t.Fatalf("%d concurrent RecordReplay calls stored their answer, want exactly 1", len(winners))
		}
		e, err := s.FindReplay(ctx(), sender, id)
		noErr(t, "FindReplay", err)
		if !bytes.Equal(e.Answer.Body, winners[0]) || e.Digest != digestOf(winners[0]) {
			t.Fatalf("stored entry %+v is not the winner's %v", e, winners[0])
		}
	})
}
