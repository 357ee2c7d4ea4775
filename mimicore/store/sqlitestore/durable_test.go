package sqlitestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// heldSync replaces the syncer's fsync of s with one that reports each
// call on started and waits for release before it syncs (or fails with
// fail, when set). It must be called before s takes any write.
func heldSync(t *testing.T, s *Store, fail error) (started <-chan struct{}, release chan<- struct{}) {
	t.Helper()
	if s.wr.dur == nil {
		t.Fatal("the store syncs at commit: no syncer to hold")
	}
	st, rel := make(chan struct{}, 16), make(chan struct{})
	real := s.wr.dur.sync
	s.wr.dur.sync = func() error {
		st <- struct{}{}
		<-rel
		if fail != nil {
			return fail
		}
		return real()
	}
	return st, rel
}

// waitFor polls cond (no timing assumption: it waits as long as it takes).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

var syncLimits = store.QueueLimits{MaxMessages: 100, MaxBytes: 1 << 20}

type appendResult struct {
	out []store.Appended
	err error
}

func appendAsync(s *Store, d store.Delivery) <-chan appendResult {
	ch := make(chan appendResult, 1)
	go func() {
		out, err := s.Append(context.Background(), d)
		ch <- appendResult{out, err}
	}()
	return ch
}

// TestSyncerOverlapsAndGates checks the syncer's promises: a write is
// answered only once its commit is synced; the next batch commits while
// the previous one is being synced; and a read that could see a commit not
// yet synced waits for the sync before it answers. Two queued writes start
// a batch during a sync (WithLinger's enough, doubled).
func TestSyncerOverlapsAndGates(t *testing.T) {
	const client = "mimi://a.example/d/alice/laptop"
	s := openTemp(t, WithLinger(DefaultLinger, 1))
	started, release := heldSync(t, s, nil)

	first := appendAsync(s, delivery("one", syncLimits, client))
	<-started // the first commit is visible to readers, not yet synced
	if got := s.Stats().Commits; got != 1 {
		t.Fatalf("commits before the first sync: %d, want 1", got)
	}

	// A read now must wait for the sync.
	fetched := make(chan []store.QueuedMessage, 1)
	fetchErr := make(chan error, 1)
	go func() {
		msgs, err := s.Fetch(context.Background(), client, 0, store.FetchLimit{Messages: 10, Bytes: 1 << 20})
		fetchErr <- err
		fetched <- msgs
	}()
	waitFor(t, "the read to wait for the sync", func() bool { return s.Stats().ReadWaits == 1 })

	// The next write commits meanwhile: its batch overlaps the sync.
	second := appendAsync(s, delivery("two", syncLimits, client))
	third := appendAsync(s, delivery("three", syncLimits, client))
	waitFor(t, "the second commit", func() bool { return s.Stats().Commits == 2 })
	select {
	case r := <-first:
		t.Fatalf("first write answered before its sync: %+v", r)
	case r := <-second:
		t.Fatalf("second write answered before its sync: %+v", r)
	case r := <-third:
		t.Fatalf("third write answered before its sync: %+v", r)
	case err := <-fetchErr:
		t.Fatalf("read answered before the sync: %v", err)
	default:
	}

	release <- struct{}{} // the first sync
	if r := <-first; r.err != nil || len(r.out) != 1 || r.out[0].Seq == 0 {
		t.Fatalf("first write: %+v", r)
	}
	// The read may go on to a query that sees the second commit, and wait
	// for its sync too.
	<-started
	release <- struct{}{} // the second sync
	for _, ch := range []<-chan appendResult{second, third} {
		if r := <-ch; r.err != nil {
			t.Fatalf("write during the first sync: %v", r.err)
		}
	}
	if err := <-fetchErr; err != nil {
		t.Fatalf("read: %v", err)
	}
	if msgs := <-fetched; len(msgs) == 0 || string(msgs[0].Message) != "one" {
		t.Fatalf("read %d messages, want the first one first", len(msgs))
	}
	if st := s.Stats(); st.Syncs != 2 {
		t.Errorf("syncs: %d, want 2", st.Syncs)
	}

	// Nothing pending: reads do not wait.
	close(release)
	waits := s.Stats().ReadWaits
	msgs, err := s.Fetch(context.Background(), client, 0, store.FetchLimit{Messages: 10, Bytes: 1 << 20})
	if err != nil || len(msgs) != 3 {
		t.Fatalf("fetch after the syncs: %d messages, %v", len(msgs), err)
	}
	if got := s.Stats().ReadWaits; got != waits {
		t.Errorf("a read waited with every commit synced: %d waits, want %d", got, waits)
	}
}

// TestSyncFailureStopsTheStore checks that a failed fsync fails the writes
// it was to make durable, every later write, and the reads that could see
// them, and that the file opens again.
func TestSyncFailureStopsTheStore(t *testing.T) {
	const client = "mimi://a.example/d/alice/laptop"
	path := t.TempDir() + "/mimi.db"
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	eio := errors.New("injected EIO")
	started, release := heldSync(t, s, eio)

	res := appendAsync(s, delivery("lost?", syncLimits, client))
	<-started
	fetchErr := make(chan error, 1)
	go func() {
		_, err := s.Fetch(context.Background(), client, 0, store.FetchLimit{Messages: 10, Bytes: 1 << 20})
		fetchErr <- err
	}()
	waitFor(t, "the read to wait for the sync", func() bool { return s.Stats().ReadWaits == 1 })
	close(release)

	for name, err := range map[string]error{"the write": (<-res).err, "the read": <-fetchErr} {
		if !errors.Is(err, errSyncFailed) || !errors.Is(err, eio) {
			t.Errorf("%s: %v, want the sync failure", name, err)
		}
	}
	if _, err := s.Append(context.Background(), delivery("later", syncLimits, client)); !errors.Is(err, errSyncFailed) {
		t.Errorf("a later write: %v, want the sync failure", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s, err = Open(context.Background(), path)
	if err != nil {
		t.Fatalf("opening again: %v", err)
	}
	defer s.Close()
	if _, err := s.Append(context.Background(), delivery("after", syncLimits, client)); err != nil {
		t.Fatalf("a write after opening again: %v", err)
	}
}

// TestSyncFailureLeavesTheLog checks that after a failed fsync of the log
// nothing copies the log's frames into the database file: not even the
// checkpoint SQLite runs when Close closes the last connection, which
// would then delete the log. The frames in memory are not known to be on
// disk; the next Open recovers what the log on disk holds.
func TestSyncFailureLeavesTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mimi.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	// The checkpointer syncs the log itself before it copies; out of the
	// way, it leaves the log to the writer's connection.
	if err := s.ckpt.db.Close(); err != nil {
		t.Fatal(err)
	}
	eio := errors.New("injected EIO")
	started, release := heldSync(t, s, eio)
	marker := []byte("sync-failed-marker-5be0d7a4")
	res := make(chan error, 1)
	go func() {
		_, err := s.MarkSpent(context.Background(), marker, time.Now().Add(time.Hour))
		res <- err
	}()
	<-started
	close(release)
	if err := <-res; !errors.Is(err, errSyncFailed) {
		t.Fatalf("write whose sync failed: %v, want the sync failure", err)
	}
	if err := s.Close(); err != nil {
		t.Logf("Close after the sync failure: %v", err)
	}
	if db := readFile(t, path); bytes.Contains(db, marker) {
		t.Error("Close copied a frame whose sync failed into the database file")
	}
	if wal := readFile(t, path+"-wal"); !bytes.Contains(wal, marker) {
		t.Error("Close did not leave the log for the next Open")
	}

	s, err = Open(context.Background(), path)
	if err != nil {
		t.Fatalf("opening again: %v", err)
	}
	defer s.Close()
	if _, err := s.MarkSpent(context.Background(), []byte("after"), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("a write after opening again: %v", err)
	}
}

// TestBatchWaitsForSync checks that with fewer than twice the linger's
// enough writes queued the writer waits for the sync in progress before it
// begins the next batch (whose answers could not precede the next sync
// anyway), past the linger's enough, and begins it once that many are
// queued.
func TestBatchWaitsForSync(t *testing.T) {
	s := openTemp(t, WithLinger(DefaultLinger, 3))
	started, release := heldSync(t, s, nil)
	first := appendAsync(s, delivery("first", syncLimits, client("a")))
	<-started
	var later []<-chan appendResult
	for i := range 5 {
		later = append(later, appendAsync(s, delivery(fmt.Sprint("later ", i), syncLimits, client("a"))))
	}
	waitFor(t, "five writes queued", func() bool { return s.wr.queued() == 5 })
	if got := s.Stats().Commits; got != 1 {
		t.Fatalf("commits with 5 of 6 writes queued during a sync: %d, want 1", got)
	}
	later = append(later, appendAsync(s, delivery("enough", syncLimits, client("a"))))
	waitFor(t, "the batch of six", func() bool { return s.Stats().Commits == 2 })
	close(release)
	for _, ch := range append(later, first) {
		if r := <-ch; r.err != nil {
			t.Fatal(r.err)
		}
	}
	if st := s.Stats(); st.Ops != 7 || st.Commits != 2 {
		t.Errorf("stats: %d writes in %d commits, want 7 in 2", st.Ops, st.Commits)
	}
}

// TestReadGivesUpWithItsContext checks that a read waiting for a sync
// returns its context's error when the context ends, and that the write
// is still answered once the sync is done.
func TestReadGivesUpWithItsContext(t *testing.T) {
	const client = "mimi://a.example/d/alice/laptop"
	s := openTemp(t)
	started, release := heldSync(t, s, nil)
	res := appendAsync(s, delivery("one", syncLimits, client))
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	fetchErr := make(chan error, 1)
	go func() {
		_, err := s.Fetch(ctx, client, 0, store.FetchLimit{Messages: 10, Bytes: 1 << 20})
		fetchErr <- err
	}()
	waitFor(t, "the read to wait for the sync", func() bool { return s.Stats().ReadWaits == 1 })
	cancel()
	if err := <-fetchErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("read after its context ended: %v, want context.Canceled", err)
	}
	close(release)
	if r := <-res; r.err != nil {
		t.Fatalf("write: %v", r.err)
	}
}

// TestSyncAtCommit checks the option: no syncer, every commit syncs.
func TestSyncAtCommit(t *testing.T) {
	s := openTemp(t, WithSyncAtCommit())
	if s.wr.dur != nil || s.walSync != nil {
		t.Fatal("WithSyncAtCommit: the store has a syncer")
	}
	if _, err := s.Append(context.Background(), delivery("x", syncLimits, "mimi://a.example/d/a/b")); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Commits != 1 || st.Syncs != 0 {
		t.Errorf("stats: %+v, want 1 commit and no syncer syncs", st)
	}
}
