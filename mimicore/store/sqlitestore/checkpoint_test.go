package sqlitestore

import (
	"context"
	"encoding/binary"
	"testing"
	"time"
)

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
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().Checkpoints == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint ran within 10 s of 300 commits")
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
		time.Sleep(2 * checkpointInterval)
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
