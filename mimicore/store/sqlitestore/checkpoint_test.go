package sqlitestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// waitCheckpointed waits until every frame of the WAL of the database at
// path has been copied back into the database (the WAL-index header's
// mxFrame, at offset 16 of the -shm file in native byte order, equals the
// checkpoint's nBackfill, at offset 96), so that the next commit restarts
// the WAL from its beginning; it only reads the file, which SQLite maps
// shared. 30 s only against a checkpointer that never gets there.
func waitCheckpointed(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		shm, err := os.ReadFile(path + "-shm")
		if err != nil {
			t.Fatal(err)
		}
		if len(shm) < 100 {
			t.Fatalf("the WAL index of %s has %d bytes", path, len(shm))
		}
		frames, backfilled := binary.NativeEndian.Uint32(shm[16:]), binary.NativeEndian.Uint32(shm[96:])
		if frames == backfilled {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the WAL's %d frames checkpointed 30 s after the last commit", backfilled, frames)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// spendN commits n writes, one transaction each.
func spendN(t *testing.T, s *Store, from, n int) {
	t.Helper()
	exp := time.Now().Add(time.Hour)
	for i := from; i < from+n; i++ {
		var key [16]byte
		binary.BigEndian.PutUint64(key[:], uint64(i))
		if ok, err := s.MarkSpent(context.Background(), key[:], exp); err != nil || !ok {
			t.Fatalf("MarkSpent %d: %v, %v", i, ok, err)
		}
	}
}

func TestCheckpointsRunOffTheWritePath(t *testing.T) {
	path := t.TempDir() + "/mimi.db"
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var auto int
	if err := s.w.QueryRowContext(context.Background(), "PRAGMA wal_autocheckpoint").Scan(&auto); err != nil {
		t.Fatal(err)
	}
	if auto != 0 {
		t.Fatalf("writer's wal_autocheckpoint is %d, want 0: commits would checkpoint inline", auto)
	}
	spendN(t, s, 0, 300)
	deadline := time.Now().Add(30 * time.Second)
	for s.Stats().Checkpoints == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint ran within 30 s of 300 commits")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := s.Stats(); st.CheckpointErrors != 0 {
		t.Fatalf("stats %+v: checkpoints failed", st)
	}
	// A checkpoint that copied every frame lets the next commit restart
	// the WAL from its beginning: it stays small however long it runs.
	before := walSize(t, path+"-wal")
	for round := range 5 {
		spendN(t, s, 1000+round*300, 300)
		// The checkpointer runs after these commits, however late a
		// loaded machine lets it: wait for it rather than a time.
		waitCheckpointed(t, path)
	}
	if after := walSize(t, path+"-wal"); after > before+(4<<20) {
		t.Fatalf("WAL grew from %d to %d bytes over 1,500 commits: checkpoints do not keep up", before, after)
	}
}

func TestWriterCheckpointsWhenTheCheckpointerFails(t *testing.T) {
	s := openTemp(t)
	// The checkpointer's connection is gone: each of its checkpoints
	// fails from now on.
	if err := s.ckpt.db.Close(); err != nil {
		t.Fatal(err)
	}
	spendN(t, s, 0, writerCheckpointCommits+10)
	st := s.Stats()
	if st.CheckpointErrors == 0 {
		t.Fatalf("stats %+v: the failing checkpointer counted no error", st)
	}
	if st.Checkpoints <= st.CheckpointErrors {
		t.Fatalf("stats %+v: the writer ran no checkpoint of its own after %d commits", st, writerCheckpointCommits)
	}
	if got := s.ckpt.sinceOK.Load(); got >= writerCheckpointCommits {
		t.Fatalf("%d commits since a successful checkpoint", got)
	}
}

// TestWriterCheckpointWaitsForTheSync checks that the writer's own
// checkpoint never copies into the database file a commit whose log is not
// yet synced: the writer's log defers its syncs, the checkpoint's sync of
// the log among them, so such a checkpoint would leave in the database
// file, after a power loss, pages of a commit that the log lost.
func TestWriterCheckpointWaitsForTheSync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mimi.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The checkpointer fails from now on, and the next commit is the one
	// after which the writer checkpoints itself.
	if err := s.ckpt.db.Close(); err != nil {
		t.Fatal(err)
	}
	s.ckpt.sinceOK.Store(writerCheckpointCommits - 1)
	started, release := heldSync(t, s, nil)
	var once sync.Once
	releaseSync := func() { once.Do(func() { close(release) }) }
	defer releaseSync()
	before := s.Stats()

	marker := []byte("not-yet-synced-marker-7f3a9c21")
	res := make(chan error, 1)
	go func() {
		_, err := s.MarkSpent(context.Background(), marker, time.Now().Add(time.Hour))
		res <- err
	}()
	<-started // the commit is in the log, its sync held
	waitFor(t, "the writer's checkpoint, or its wait for the sync", func() bool {
		st := s.Stats()
		return st.Checkpoints-st.CheckpointErrors > before.Checkpoints-before.CheckpointErrors ||
			st.ReadWaits > before.ReadWaits
	})
	if bytes.Contains(readFile(t, path), marker) {
		t.Fatal("the database file holds a commit whose log was not synced")
	}

	releaseSync()
	if err := <-res; err != nil {
		t.Fatalf("MarkSpent: %v", err)
	}
	waitFor(t, "the writer's checkpoint", func() bool {
		st := s.Stats()
		return st.Checkpoints-st.CheckpointErrors > before.Checkpoints-before.CheckpointErrors
	})
	if !bytes.Contains(readFile(t, path), marker) {
		t.Fatal("the writer's checkpoint did not copy the synced commit into the database file")
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCheckpointIOErrorStopsTheStore checks that a checkpoint whose sync
// fails (of the log, before it copies frames, or of the database file,
// after) stops the store as a failed sync of the syncer does: later writes
// fail, no checkpoint runs again, and the log stays on disk for the next
// Open, which finds every acknowledged write. The kernel reports a failed
// write-back once per open file: the checkpointer's next sync succeeds, so
// a retried checkpoint would copy into the database file frames the disk
// may not hold, or go on from a database file whose failed write-back
// left the disk unknown.
func TestCheckpointIOErrorStopsTheStore(t *testing.T) {
	registerFaultVFS(t)
	for _, tc := range []struct {
		name string
		kind int
		// syncAtCommit opens the store WithSyncAtCommit: no syncer, and
		// no log whose syncs it stops, so that Close's checkpoint on the
		// writer's connection runs (on a real device its sync fails too:
		// the kernel reports the failed write-back to each open file).
		syncAtCommit bool
	}{
		{"the log's sync", faultWAL, false},
		{"the database file's sync", faultDB, false},
		{"the log's sync, syncing at commit", faultWAL, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "mimi.db")
			opts := []Option{withCheckpointVFS(faultVFSName)}
			if tc.syncAtCommit {
				opts = append(opts, WithSyncAtCommit())
			}
			s, err := Open(context.Background(), path, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			failedBefore := failedSyncs[tc.kind].Load()
			failSyncs[tc.kind].Store(1)
			defer failSyncs[tc.kind].Store(0)

			// The commit wakes the checkpointer, whose sync fails. The
			// write is answered once the syncer synced it, or fails if
			// the checkpoint's failure came first.
			marker := []byte("checkpoint-eio-marker-9d41c6e0")
			ok, err := s.MarkSpent(context.Background(), marker, time.Now().Add(time.Hour))
			acked := err == nil && ok
			if err != nil && !errors.Is(err, errSyncFailed) {
				t.Fatalf("MarkSpent: %v", err)
			}
			waitFor(t, "the checkpoint's failure", func() bool { return s.Stats().CheckpointErrors > 0 })
			if got := failedSyncs[tc.kind].Load() - failedBefore; got != 1 {
				t.Fatalf("%d injected sync failures, want 1", got)
			}
			if st := s.Stats(); !errors.Is(st.Stopped, errSyncFailed) {
				t.Errorf("Stats().Stopped after the checkpoint's I/O error: %v", st.Stopped)
			}

			// The next sync would succeed: nothing may checkpoint again.
			_, err = s.MarkSpent(context.Background(), []byte("later"), time.Now().Add(time.Hour))
			if !errors.Is(err, errSyncFailed) {
				t.Errorf("a write after the checkpoint's I/O error: %v, want the sync failure", err)
			}
			runs := s.Stats().Checkpoints
			s.ckpt.run(context.Background(), s.ckpt.db)
			if got := s.Stats().Checkpoints; got != runs {
				t.Error("a checkpoint ran after a checkpoint's I/O error")
			}
			if tc.kind == faultWAL && bytes.Contains(readFile(t, path), marker) {
				t.Error("a checkpoint copied frames into the database file after its sync of the log failed")
			}
			if err := s.Close(); err != nil {
				t.Logf("Close after the failure: %v", err)
			}
			if tc.syncAtCommit {
				return
			}
			if wal := readFile(t, path+"-wal"); !bytes.Contains(wal, marker) {
				t.Error("the log was not left for the next Open")
			}

			s, err = Open(context.Background(), path)
			if err != nil {
				t.Fatalf("opening again: %v", err)
			}
			defer s.Close()
			ok, err = s.MarkSpent(context.Background(), marker, time.Now().Add(time.Hour))
			if err != nil {
				t.Fatalf("MarkSpent after opening again: %v", err)
			}
			if acked && ok {
				t.Error("the acknowledged write was lost")
			}
		})
	}
}

// TestLogStartsOverUnderSteadyWrites checks that the WAL starts over while
// writes never pause: several writers keep the writer busy, so that a
// checkpoint beside it never finds every frame copied at the start of a
// transaction, and the log would grow for as long as they write (see
// checkpointer) were it not for the writer's own checkpoints.
func TestLogStartsOverUnderSteadyWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mimi.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const restartAt = 256 // frames: 1 MiB of pages
	s.ckpt.restartAt.Store(restartAt)
	const writers, perWriter = 4, 1500
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			d := store.Delivery{Recipients: benchRecipients(fmt.Sprint("w", w), 4), GroupID: []byte("a group id"),
				Sender: "a.example", Message: make([]byte, 400), Limits: benchLimits,
				DedupExpires: time.Now().Add(time.Hour)}
			for i := range perWriter {
				n := uint64(w*perWriter + i)
				binary.BigEndian.PutUint64(d.Message, n)
				key := digestOfUint(n * 0x9E3779B97F4A7C15) // scattered over the table
				d.Dedup = key[:]
				if _, err := s.Append(context.Background(), d); err != nil {
					errs <- fmt.Errorf("Append %d: %w", n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Each Append adds a page or two to the log: 6,000 of them would
	// leave it above 20 MiB. Starting over at 1 MiB, it stays within the
	// pages written between two checkpoints of the checkpointer (one
	// per checkpointInterval) past that.
	const limit = 12 << 20
	if size := walSize(t, path+"-wal"); size > limit {
		st := s.Stats()
		t.Fatalf("the log grew to %d bytes over %d Appends (%d commits, %d checkpoints, %d frames at the last): it does not start over under steady writes",
			size, writers*perWriter, st.Commits, st.Checkpoints, st.LogFrames)
	}
}
