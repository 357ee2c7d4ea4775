package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// blockWriter queues an op that holds the writer until the returned
// function is called, and waits until the writer runs it, so that the ops
// queued next share one batch. release returns the blocking op's outcome.
func blockWriter(t *testing.T, s *Store) (release func() error) {
	t.Helper()
	started, unblock := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.wr.do(context.Background(), func(context.Context, *sql.Tx) error {
			close(started)
			<-unblock
			return nil
		})
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the blocking op never started")
	}
	var once sync.Once
	release = func() error {
		once.Do(func() { close(unblock) })
		return <-done
	}
	t.Cleanup(func() { once.Do(func() { close(unblock) }) })
	return release
}

// waitQueued waits until n ops wait in the writer's queue.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.wr.queued() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d ops queued, want %d", s.wr.queued(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// call is one queued store call and its outcome.
type call struct {
	name string
	run  func(ctx context.Context) error
	err  error
}

// queueCalls starts each call in its own goroutine with ctx, waits until
// all of them are queued behind the blocked writer, and returns a function
// that waits for their outcomes.
func queueCalls(t *testing.T, s *Store, ctx context.Context, calls []*call) (wait func()) {
	t.Helper()
	before := s.wr.queued()
	var wg sync.WaitGroup
	for _, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.err = c.run(ctx)
		}()
	}
	waitQueued(t, s, before+len(calls))
	return wg.Wait
}

// runBatch queues calls behind a blocked writer, so that they share one
// batch, releases the writer and waits for all of them; it returns the
// store's Stats from before the calls were queued.
func runBatch(t *testing.T, s *Store, ctx context.Context, calls []*call) (before Stats) {
	t.Helper()
	release := blockWriter(t, s)
	before = s.Stats()
	wait := queueCalls(t, s, ctx, calls)
	if err := release(); err != nil {
		t.Fatal(err)
	}
	wait()
	return before
}

func markSpentCall(s *Store, key string) *call {
	return &call{name: "MarkSpent " + key, run: func(ctx context.Context) error {
		first, err := s.MarkSpent(ctx, []byte(key), time.Now().Add(time.Hour))
		if err == nil && !first {
			err = fmt.Errorf("fresh key %q reported as replay", key)
		}
		return err
	}}
}

// spent reports whether key is recorded, by recording it again.
func spent(t *testing.T, s *Store, key string) bool {
	t.Helper()
	first, err := s.MarkSpent(context.Background(), []byte(key), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatalf("MarkSpent %q: %v", key, err)
	}
	return !first
}

func statsDelta(a, b Stats) Stats {
	return Stats{Commits: b.Commits - a.Commits, Ops: b.Ops - a.Ops, MaxBatch: b.MaxBatch, Failed: b.Failed - a.Failed, Retried: b.Retried - a.Retried}
}

// TestBatchOpFailsAlone puts failing ops in one batch with succeeding
// ones: Complete and Release of entries that do not exist, and an op that
// writes, then hits a constraint. Each failing op gets its own error and
// leaves nothing behind; the others commit, in that one transaction.
func TestBatchOpFailsAlone(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	release := blockWriter(t, s)
	before := s.Stats()

	var calls []*call
	for i := range 10 {
		calls = append(calls, markSpentCall(s, fmt.Sprintf("ok/%d", i)))
	}
	for i := range 3 {
		id := fmt.Appendf(nil, "missing/%d", i)
		calls = append(calls,
			&call{name: "Complete of a missing entry", run: func(ctx context.Context) error {
				return s.Complete(ctx, "a.example", id, digestOf("x"), store.Answer{})
			}},
			&call{name: "Release of a missing entry", run: func(ctx context.Context) error {
				return s.Release(ctx, "a.example", id, digestOf("x"))
			}})
	}
	partial := &call{name: "op that fails after writing", run: func(ctx context.Context) error {
		return s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO spent_tokens (key, expires_ms) VALUES (?1, ?2)", []byte("partial"), exp.UnixMilli()); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO seen_signatures (digest, expires_ms) VALUES (x'00', 0)") // CHECK fails
			return err
		})
	}}
	calls = append(calls, partial)
	wait := queueCalls(t, s, ctx, calls)
	if err := release(); err != nil {
		t.Fatalf("blocking op: %v", err)
	}
	wait()

	for _, c := range calls {
		switch {
		case strings.HasPrefix(c.name, "MarkSpent"):
			if c.err != nil {
				t.Errorf("%s: %v", c.name, c.err)
			}
		case c == partial:
			if c.err == nil || !strings.Contains(c.err.Error(), "CHECK constraint failed") {
				t.Errorf("%s: got %v, want its CHECK constraint error", c.name, c.err)
			}
		default:
			if !errors.Is(c.err, store.ErrNotFound) {
				t.Errorf("%s: got %v, want ErrNotFound", c.name, c.err)
			}
		}
	}
	d := statsDelta(before, s.Stats())
	if d.Commits != 2 || d.Ops != uint64(len(calls))+1 || d.MaxBatch < uint64(len(calls)) {
		t.Fatalf("stats %+v: want the blocking op's commit and one commit of all %d ops", d, len(calls))
	}
	// The optimistic run met the first failing op and was rolled back
	// unanswered; the careful run committed. MarkSpent's first-use answers
	// (checked above) show that no op's rolled-back run left anything.
	if d.Retried != 1 {
		t.Errorf("stats %+v: want one optimistic run retried carefully", d)
	}
	for i := range 10 {
		if !spent(t, s, fmt.Sprintf("ok/%d", i)) {
			t.Errorf("ok/%d: acknowledged but not recorded", i)
		}
	}
	if spent(t, s, "partial") {
		t.Error("the failing op's own write survived its failure")
	}
}

// TestBatchCommitFailure makes a batch's COMMIT fail (a deferred foreign
// key, checked only at COMMIT): every op of the batch gets the wrapped
// commit error, none of their writes remains, and the writer goes on.
func TestBatchCommitFailure(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE test_parent (id INTEGER PRIMARY KEY);
		CREATE TABLE test_child (pid INTEGER REFERENCES test_parent (id) DEFERRABLE INITIALLY DEFERRED)`); err != nil {
		t.Fatal(err)
	}
	release := blockWriter(t, s)
	before := s.Stats()
	var calls []*call
	for i := range 5 {
		calls = append(calls, markSpentCall(s, fmt.Sprintf("lost/%d", i)))
	}
	calls = append(calls, &call{name: "orphan insert", run: func(ctx context.Context) error {
		return s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO test_child (pid) VALUES (42)")
			return err
		})
	}})
	wait := queueCalls(t, s, ctx, calls)
	if err := release(); err != nil {
		t.Fatalf("blocking op: %v", err)
	}
	wait()
	for _, c := range calls {
		if c.err == nil || !strings.Contains(c.err.Error(), "committing a batch of 6 writes") {
			t.Errorf("%s: got %v, want the batch's commit error", c.name, c.err)
		}
		if errors.Is(c.err, store.ErrNotFound) || errors.Is(c.err, store.ErrConflict) || errors.Is(c.err, store.ErrInvalid) {
			t.Errorf("%s: commit failure reported as a store answer: %v", c.name, c.err)
		}
	}
	if d := statsDelta(before, s.Stats()); d.Failed != 1 || d.Commits != 1 {
		t.Errorf("stats %+v: want one failed transaction and the blocking op's commit", d)
	}
	// The writer keeps working, and the failed batch left nothing.
	for i := range 5 {
		if spent(t, s, fmt.Sprintf("lost/%d", i)) {
			t.Errorf("lost/%d: recorded although its batch failed to commit", i)
		}
	}
	var n int
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM test_child").Scan(&n); err != nil || n != 0 {
		t.Errorf("test_child holds %d rows (%v), want 0", n, err)
	}
}

// TestBatchCancelWhileQueued cancels callers whose ops wait behind a busy
// writer: they return context.Canceled at once, before the writer is free,
// and their ops never run. A ctx cancelled before the call has the same
// result.
func TestBatchCancelWhileQueued(t *testing.T) {
	s := openTemp(t)
	release := blockWriter(t, s)
	before := s.Stats()
	ctx, cancel := context.WithCancel(context.Background())
	var calls []*call
	for i := range 8 {
		calls = append(calls, markSpentCall(s, fmt.Sprintf("canceled/%d", i)))
	}
	// A replay reservation and a completion, too.
	calls = append(calls, &call{name: "Reserve", run: func(ctx context.Context) error {
		_, err := s.Reserve(ctx, "a.example", []byte("canceled"), digestOf("x"), time.Now().Add(time.Hour))
		return err
	}})
	kept := markSpentCall(s, "kept")
	wait := queueCalls(t, s, ctx, calls)
	waitKept := queueCalls(t, s, context.Background(), []*call{kept})
	cancel()
	wait() // returns while the writer is still blocked
	for _, c := range calls {
		if !errors.Is(c.err, context.Canceled) {
			t.Errorf("%s: got %v, want context.Canceled", c.name, c.err)
		}
	}
	// Already cancelled before the call.
	if _, err := s.MarkSpent(ctx, []byte("canceled/early"), time.Now().Add(time.Hour)); !errors.Is(err, context.Canceled) {
		t.Errorf("MarkSpent with a cancelled ctx: got %v, want context.Canceled", err)
	}
	if err := release(); err != nil {
		t.Fatalf("blocking op: %v", err)
	}
	waitKept()
	if kept.err != nil {
		t.Fatalf("op queued behind cancelled ones: %v", kept.err)
	}
	if d := statsDelta(before, s.Stats()); d.Ops != 2 {
		t.Errorf("stats %+v: want only the blocking op and the kept op run", d)
	}
	for i := range 8 {
		if spent(t, s, fmt.Sprintf("canceled/%d", i)) {
			t.Errorf("canceled/%d: recorded although its caller got context.Canceled", i)
		}
	}
	if spent(t, s, "canceled/early") {
		t.Error("canceled/early: recorded although its caller got context.Canceled")
	}
	r, err := s.Reserve(context.Background(), "a.example", []byte("canceled"), digestOf("x"), time.Now().Add(time.Hour))
	if err != nil || r.Status != store.ReplayNew {
		t.Errorf("Reserve after a cancelled Reserve = %s, %v; want new", r.Status, err)
	}
}

// TestBatchStartedOpIgnoresCancel cancels a caller while its op runs: the
// caller waits for the commit and gets its outcome, nil, and the write is
// there.
func TestBatchStartedOpIgnoresCancel(t *testing.T) {
	s := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		cancel() // the caller gives up while its op runs
		_, err := tx.ExecContext(ctx, "INSERT INTO spent_tokens (key, expires_ms) VALUES (?1, ?2)",
			[]byte("started"), time.Now().Add(time.Hour).UnixMilli())
		return err
	})
	if err != nil {
		t.Fatalf("op cancelled while running: got %v, want its outcome nil", err)
	}
	if !spent(t, s, "started") {
		t.Fatal("the write of an op that reported success is missing")
	}
}

// TestBatchBounds checks that a batch holds at most WithMaxBatch ops and
// that ops run in the order they were queued.
func TestBatchBounds(t *testing.T) {
	s := openTemp(t, WithMaxBatch(4))
	release := blockWriter(t, s)
	before := s.Stats()
	var (
		mu    sync.Mutex
		order []int
	)
	var waits []func()
	for i := range 10 {
		// One at a time, so the queue order is known.
		waits = append(waits, queueCalls(t, s, context.Background(), []*call{{run: func(ctx context.Context) error {
			return s.wr.do(ctx, func(context.Context, *sql.Tx) error {
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				return nil
			})
		}}}))
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	for _, w := range waits {
		w()
	}
	for i, v := range order {
		if v != i {
			t.Fatalf("ops ran in order %v, want the queue's order", order)
		}
	}
	// The blocking op's batch, then 4, 4 and 2.
	if d := statsDelta(before, s.Stats()); d.Commits != 4 || d.Ops != 11 || d.MaxBatch != 4 {
		t.Fatalf("stats %+v: want the blocking op, then 10 ops in batches of 4, 4 and 2", d)
	}
}

// TestBatchPanic checks that an op that panics fails alone and the writer
// survives it.
func TestBatchPanic(t *testing.T) {
	s := openTemp(t)
	release := blockWriter(t, s)
	ok := markSpentCall(s, "beside-panic")
	bad := &call{name: "panicking op", run: func(ctx context.Context) error {
		return s.wr.do(ctx, func(context.Context, *sql.Tx) error { panic("boom") })
	}}
	wait := queueCalls(t, s, context.Background(), []*call{ok, bad})
	if err := release(); err != nil {
		t.Fatal(err)
	}
	wait()
	if ok.err != nil {
		t.Errorf("op beside a panicking one: %v", ok.err)
	}
	if bad.err == nil || !strings.Contains(bad.err.Error(), "panicked: boom") {
		t.Errorf("panicking op: got %v", bad.err)
	}
	if !spent(t, s, "beside-panic") {
		t.Error("op beside a panicking one was lost")
	}
}

// TestCloseWithQueuedOps closes the store while ops wait behind a busy
// writer: the queued ops fail with ErrClosed at once, the running op gets
// its own outcome, Close returns once the writer is gone, and calls after
// Close fail with ErrClosed.
func TestCloseWithQueuedOps(t *testing.T) {
	s := openTemp(t)
	release := blockWriter(t, s)
	var calls []*call
	for i := range 8 {
		calls = append(calls, markSpentCall(s, fmt.Sprintf("closed/%d", i)))
	}
	wait := queueCalls(t, s, context.Background(), calls)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	wait() // answered before the running op ends
	for _, c := range calls {
		if !errors.Is(c.err, store.ErrClosed) {
			t.Errorf("%s: got %v, want ErrClosed", c.name, c.err)
		}
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while an op was still running", err)
	case <-time.After(20 * time.Millisecond):
	}
	if err := release(); err != nil {
		t.Fatalf("op running at Close: got %v, want its own outcome", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-s.wr.exited:
	default:
		t.Fatal("writer goroutine still running after Close")
	}
	if _, err := s.MarkSpent(context.Background(), []byte("after"), time.Now().Add(time.Hour)); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("MarkSpent after Close: got %v, want ErrClosed", err)
	}
	if err := s.wr.do(context.Background(), func(context.Context, *sql.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("op queued after Close: got %v, want ErrClosed", err)
	}
}

// TestStatsGrouping checks that concurrent writers share commits: with 64
// callers at once, there are fewer commits than ops.
func TestStatsGrouping(t *testing.T) {
	s := openTemp(t)
	const workers, each = 64, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := s.MarkSpent(context.Background(), fmt.Appendf(nil, "%d/%d", w, i), time.Now().Add(time.Hour)); err != nil {
					t.Errorf("MarkSpent: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	if st.Ops != workers*each || st.Commits >= st.Ops || st.MaxBatch < 2 {
		t.Fatalf("stats %+v after %d concurrent writes: want them grouped", st, workers*each)
	}
	if st.Retried != 0 {
		t.Errorf("stats %+v: batches of succeeding writes were retried", st)
	}
	t.Logf("%d writes in %d commits (mean batch %.1f, max %d)", st.Ops, st.Commits, float64(st.Ops)/float64(st.Commits), st.MaxBatch)
}

// lingerStore opens a store whose writer would linger an hour: a test
// that finishes shows the linger was skipped or ended early, never by
// timing.
func lingerStore(t *testing.T, enough int) *Store {
	return openTemp(t, WithLinger(time.Hour, enough))
}

// TestLingerSkippedForLoneWrites: one write after another, each alone in
// its batch, never waits.
func TestLingerSkippedForLoneWrites(t *testing.T) {
	s := lingerStore(t, 16)
	for i := range 20 {
		if _, err := s.MarkSpent(context.Background(), fmt.Appendf(nil, "lone/%d", i), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Commits != st.Ops {
		t.Fatalf("stats %+v: sequential writes should each have had a commit", st)
	}
}

// TestLingerEndsWhenEnoughQueue: after a batch of more than one, the
// writer lingers for company, and starts as soon as enough ops are queued.
func TestLingerEndsWhenEnoughQueue(t *testing.T) {
	const enough = 4
	s := lingerStore(t, enough)
	ctx := context.Background()
	// A batch of two: the blocking op's, then two queued behind it.
	runBatch(t, s, ctx, []*call{markSpentCall(s, "pair/0"), markSpentCall(s, "pair/1")})
	before := s.Stats()
	// The writer now lingers over the next lone op until enough are
	// queued: all four share one commit.
	var calls []*call
	for i := range enough {
		calls = append(calls, markSpentCall(s, fmt.Sprintf("company/%d", i)))
	}
	var wg sync.WaitGroup
	for _, c := range calls {
		wg.Go(func() { c.err = c.run(ctx) })
	}
	wg.Wait()
	for _, c := range calls {
		if c.err != nil {
			t.Errorf("%s: %v", c.name, c.err)
		}
	}
	if d := statsDelta(before, s.Stats()); d.Commits != 1 || d.Ops != enough {
		t.Fatalf("stats %+v: want the %d ops in one commit", d, enough)
	}
}

// TestCloseEndsLinger: Close does not wait out a linger; the op it
// interrupted is answered ErrClosed, unrun.
func TestCloseEndsLinger(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "mimi.db"), WithLinger(time.Hour, 16))
	if err != nil {
		t.Fatal(err)
	}
	runBatch(t, s, context.Background(), []*call{markSpentCall(s, "a"), markSpentCall(s, "b")})
	done := make(chan error, 1)
	go func() {
		_, err := s.MarkSpent(context.Background(), []byte("lingered"), time.Now().Add(time.Hour))
		done <- err
	}()
	waitQueued(t, s, 1) // the writer lingers over it
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, store.ErrClosed) {
		t.Fatalf("op queued during the linger: %v, want ErrClosed", err)
	}
}
