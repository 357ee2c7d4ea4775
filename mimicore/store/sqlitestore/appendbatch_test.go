package sqlitestore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// appendCase is one Append queued in a batch and its expected outcome.
type appendCase struct {
	d       store.Delivery
	wantErr error // of Append itself
	// either: this Append and the batch's other either-Append carry one
	// dedup key, so whichever runs first is appended and the other is
	// a duplicate (the order of a batch is the order its calls queued).
	either bool
	out    []store.Appended
}

func (a *appendCase) call(s *Store) *call {
	return &call{name: fmt.Sprintf("Append to %v", a.d.Recipients), run: func(ctx context.Context) error {
		var err error
		a.out, err = s.Append(ctx, a.d)
		return err
	}}
}

// delivery is a Delivery of msg to recipients with a dedup key and a
// replay record of its own, as a deliver_message writes it.
func delivery(msg string, limits store.QueueLimits, recipients ...string) store.Delivery {
	key := digestOf(msg)
	now := time.Now()
	return store.Delivery{Recipients: recipients, GroupID: []byte("group"), Sender: "a.example",
		Message: []byte(msg), Limits: limits, Dedup: key[:], DedupExpires: now.Add(time.Hour),
		Replay: &store.ReplayRecord{Sender: "a.example", RequestID: []byte("request " + msg), Digest: key,
			Answer: store.Answer{Body: []byte("answer " + msg)}, Expires: now.Add(10 * time.Minute)}}
}

func client(name string) string { return "mimi://b.example/d/" + name + "/dev" }

// TestCoalescedAppends queues Appends behind a blocked writer, so that they
// share a batch, and checks each one's outcome and what the queues hold: a
// batch of new deliveries is written by one coalesced write, and a batch
// with a duplicate, a replay conflict or a full queue is run again op by op
// and gives each Append the answer it gets alone.
func TestCoalescedAppends(t *testing.T) {
	roomy := store.QueueLimits{MaxMessages: 1000, MaxBytes: 1 << 20}
	tests := []struct {
		name          string
		before        func(t *testing.T, s *Store) // writes before the batch
		appends       func() []*appendCase
		wantCoalesced uint64
		wantRetried   uint64
		wantFull      int // recipients answered with a full queue
	}{
		{
			name: "new deliveries sharing queues",
			appends: func() []*appendCase {
				var cs []*appendCase
				for i := range 10 {
					cs = append(cs, &appendCase{d: delivery(fmt.Sprint("m", i), roomy, client("shared1"), client(fmt.Sprint("own", i)), client("shared2"))})
				}
				return cs
			},
			wantCoalesced: 10,
		},
		{
			name: "more rows than the largest statement",
			appends: func() []*appendCase {
				var cs []*appendCase
				for i := range 30 {
					var rs []string
					for r := range 5 {
						rs = append(rs, client(fmt.Sprint("r", (i+r)%7)))
					}
					cs = append(cs, &appendCase{d: delivery(fmt.Sprint("m", i), roomy, rs...)})
				}
				return cs
			},
			wantCoalesced: 30,
		},
		{
			name: "a duplicate inside the batch",
			appends: func() []*appendCase {
				cs := []*appendCase{{d: delivery("same", roomy, client("x")), either: true}}
				for i := range 4 {
					cs = append(cs, &appendCase{d: delivery(fmt.Sprint("m", i), roomy, client("x"), client("y"))})
				}
				dup := delivery("same", roomy, client("x"))
				dup.Replay.RequestID = []byte("another request")
				cs = append(cs, &appendCase{d: dup, either: true})
				return cs
			},
			wantRetried: 1,
		},
		{
			name: "a replay entry alive already",
			before: func(t *testing.T, s *Store) {
				if _, err := s.RecordReplay(context.Background(), "a.example", []byte("request taken"), digestOf("x"),
					store.Answer{Body: []byte("first")}, time.Now().Add(time.Hour)); err != nil {
					t.Fatal(err)
				}
			},
			appends: func() []*appendCase {
				var cs []*appendCase
				for i := range 4 {
					cs = append(cs, &appendCase{d: delivery(fmt.Sprint("m", i), roomy, client("x"))})
				}
				taken := delivery("taken", roomy, client("x"))
				taken.Replay.RequestID = []byte("request taken")
				return append(cs, &appendCase{d: taken, wantErr: store.ErrConflict})
			},
			wantRetried: 1,
		},
		{
			name: "a queue that fills up",
			appends: func() []*appendCase {
				small := store.QueueLimits{MaxMessages: 3, MaxBytes: 1 << 20}
				var cs []*appendCase
				for i := range 5 {
					// q fills after 3, whichever they are; each p_i
					// takes its one.
					cs = append(cs, &appendCase{d: delivery(fmt.Sprint("m", i), small, client(fmt.Sprint("p", i)), client("q"))})
				}
				return cs
			},
			wantFull:    2,
			wantRetried: 1,
		},
		{
			name: "differing queue limits",
			appends: func() []*appendCase {
				var cs []*appendCase
				for i := range 6 {
					limits := roomy
					if i%2 == 1 {
						limits.MaxMessages = 500
					}
					cs = append(cs, &appendCase{d: delivery(fmt.Sprint("m", i), limits, client("x"))})
				}
				return cs
			},
			// The first's limits: three coalesced, the other three one
			// by one.
			wantCoalesced: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTemp(t)
			ctx := context.Background()
			if tt.before != nil {
				tt.before(t, s)
			}
			cases := tt.appends()
			calls := make([]*call, len(cases))
			for i, c := range cases {
				calls[i] = c.call(s)
			}
			before := runBatch(t, s, ctx, calls)
			after := s.Stats()
			if d := statsDelta(before, after); d.Retried != tt.wantRetried || d.Commits != 2 {
				t.Errorf("stats %+v: want %d retried runs and the batch in one commit", d, tt.wantRetried)
			}
			if got := after.Coalesced - before.Coalesced; got != tt.wantCoalesced {
				t.Errorf("%d Appends coalesced, want %d", got, tt.wantCoalesced)
			}

			// Each Append's answer, and what each queue holds: the
			// accepted messages, in sequence order.
			want := map[string][]uint64{}
			full, eitherOK, eithers := 0, 0, 0
			for i, c := range cases {
				if c.either {
					eithers++
					if errors.Is(calls[i].err, store.ErrDuplicate) {
						continue
					}
					if calls[i].err != nil {
						t.Fatalf("%s: got %v, want nil or ErrDuplicate", calls[i].name, calls[i].err)
					}
					eitherOK++
				} else if !errors.Is(calls[i].err, c.wantErr) || (c.wantErr != nil) != (calls[i].err != nil) {
					t.Fatalf("%s: got %v, want %v", calls[i].name, calls[i].err, c.wantErr)
				}
				if c.wantErr != nil {
					continue
				}
				for r, a := range c.out {
					if errors.Is(a.Err, store.ErrQueueFull) && a.Seq == 0 {
						full++
						continue
					}
					if a.Err != nil || a.Seq == 0 {
						t.Fatalf("%s, recipient %d: got %+v", calls[i].name, r, a)
					}
					want[c.d.Recipients[r]] = append(want[c.d.Recipients[r]], a.Seq)
				}
				// Its dedup key and replay record are stored.
				if _, err := s.Append(ctx, c.d); !errors.Is(err, store.ErrDuplicate) {
					t.Errorf("%s again: got %v, want ErrDuplicate", calls[i].name, err)
				}
				e, err := s.FindReplay(ctx, "a.example", c.d.Replay.RequestID)
				if err != nil || string(e.Answer.Body) != string(c.d.Replay.Answer.Body) {
					t.Errorf("%s: replay record %+v, %v", calls[i].name, e, err)
				}
			}
			if eithers > 0 && eitherOK != 1 {
				t.Errorf("%d of the %d Appends of one message were appended, want 1", eitherOK, eithers)
			}
			if full != tt.wantFull {
				t.Errorf("%d recipients found their queue full, want %d", full, tt.wantFull)
			}
			for cl, seqs := range want {
				slices.Sort(seqs)
				got, err := s.Fetch(ctx, cl, 0, store.FetchLimit{Messages: 1000, Bytes: 1 << 20})
				if err != nil {
					t.Fatal(err)
				}
				var gotSeqs []uint64
				for _, m := range got {
					gotSeqs = append(gotSeqs, m.Seq)
				}
				if !slices.Equal(gotSeqs, seqs) {
					t.Errorf("queue %s holds %v, want %v", cl, gotSeqs, seqs)
				}
				var messages, bytes int64
				if err := s.r.QueryRowContext(ctx, `SELECT messages, bytes FROM queue_heads WHERE client = ?1`, cl).Scan(&messages, &bytes); err != nil {
					t.Fatal(err)
				}
				var size int64
				for _, m := range got {
					size += int64(len(m.Message))
				}
				if messages != int64(len(got)) || bytes != size {
					t.Errorf("queue %s counts %d messages, %d bytes; holds %d, %d", cl, messages, bytes, len(got), size)
				}
			}
			// Every body is referenced exactly as often as entries name
			// it.
			var bad int
			if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM queue_bodies b
				WHERE b.refs <> (SELECT COUNT(*) FROM queue_messages m WHERE m.body_id = b.id)`).Scan(&bad); err != nil {
				t.Fatal(err)
			}
			if bad != 0 {
				t.Errorf("%d bodies with a wrong reference count", bad)
			}
		})
	}
}

// TestMultiStatementsOnDemand checks that the multi-row statements are
// prepared when a coalesced write first needs them, and only the chunk
// sizes it may use: none after Open or a lone Append; after a batch of 10
// Appends for 3 recipients each, the sizes up to 10 for the statements of
// a row per Append and up to 30 for those of a row per recipient.
func TestMultiStatementsOnDemand(t *testing.T) {
	roomy := store.QueueLimits{MaxMessages: 1000, MaxBytes: 1 << 20}
	s := openTemp(t)
	ctx := context.Background()
	prepared := func() map[*multiRow][]int {
		out := map[*multiRow][]int{}
		for m, sts := range s.multi {
			for i, st := range sts {
				if st != nil {
					out[m] = append(out[m], chunkSizes[i])
				}
			}
		}
		return out
	}
	if got := prepared(); len(got) != 0 {
		t.Fatalf("after Open: prepared %v, want none", got)
	}
	if _, err := s.Append(ctx, delivery("alone", roomy, client("x"))); err != nil {
		t.Fatal(err)
	}
	if got := prepared(); len(got) != 0 {
		t.Fatalf("after one Append: prepared %v, want none", got)
	}

	var calls []*call
	for i := range 10 {
		c := &appendCase{d: delivery(fmt.Sprint("m", i), roomy, client("shared1"), client(fmt.Sprint("own", i)), client("shared2"))}
		calls = append(calls, c.call(s))
	}
	before := runBatch(t, s, ctx, calls)
	for _, c := range calls {
		if c.err != nil {
			t.Fatalf("%s: %v", c.name, c.err)
		}
	}
	if got := s.Stats().Coalesced - before.Coalesced; got != 10 {
		t.Fatalf("%d Appends coalesced, want 10", got)
	}
	want := map[*multiRow][]int{
		&seenMulti: {8, 4, 2, 1}, &replayMulti: {8, 4, 2, 1}, &bodyMulti: {8, 4, 2, 1},
		&headMulti: {16, 8, 4, 2, 1}, &entryMulti: {16, 8, 4, 2, 1},
	}
	got := prepared()
	for m, sizes := range want {
		if !slices.Equal(got[m], sizes) {
			t.Errorf("%s…: prepared chunk sizes %v, want %v", m.head, got[m], sizes)
		}
	}
	if len(got) != len(want) {
		t.Errorf("prepared %d statements' sizes, want %d", len(got), len(want))
	}
}
