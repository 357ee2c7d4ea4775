package ds

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// lateCommit is a backend whose Commit answers storage.ErrUncertain
// without committing, as when S3 completes a multipart upload after the
// gateway gave up waiting for its answer; land then makes the object
// visible, late, with the bytes written.
type lateCommit struct {
	storage.Backend
	name string
	data []byte
}

func (b *lateCommit) Create(ctx context.Context, name string, size int64) (storage.Writer, error) {
	w, err := b.Backend.Create(ctx, name, size)
	if err != nil {
		return nil, err
	}
	b.name, b.data = name, nil
	return &lateWriter{Writer: w, b: b}, nil
}

// land makes the object visible, as the storage finishing the commit
// late (the real writer's temporary data may be swept meanwhile).
func (b *lateCommit) land(t *testing.T) {
	t.Helper()
	w, err := b.Backend.Create(context.Background(), b.name, int64(len(b.data)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b.data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(context.Background()); err != nil {
		t.Fatalf("landing the late commit: %v", err)
	}
}

type lateWriter struct {
	storage.Writer
	b *lateCommit
}

func (w *lateWriter) Write(p []byte) (int, error) {
	w.b.data = append(w.b.data, p...)
	return w.Writer.Write(p)
}

func (w *lateWriter) Commit(ctx context.Context) error {
	return fmt.Errorf("completing the upload: %w: %w", storage.ErrUncertain, context.DeadlineExceeded)
}

// TestAttachmentLateCommitSwept: an upload's object commit has an
// unknown outcome, and the storage makes the object visible only after
// the sweep that took the upload's expired reservation. The object stays
// listed (KeepObject), so a later sweep deletes the bytes that landed
// late, and only the sweep past KeepObject forgets it: no byte is left in
// the backend listed by nothing.
func TestAttachmentLateCommitSwept(t *testing.T) {
	var late *lateCommit
	f := newAttachFixture(t, func(a *Attachments) {
		late = &lateCommit{Backend: a.Backend}
		a.Backend = late
	})
	data := []byte("bytes the storage commits after the gateway gave up")
	h := sha256.Sum256(data)
	_, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), h[:], bytes.NewReader(data))
	wantCode(t, "upload whose commit has an unknown outcome", err, moh.CodeBackendUnavailable)
	ctx := context.Background()

	// Past the upload's deadline, before the storage lands the bytes.
	expired := f.now.Add(DefaultUploadDeadline + time.Minute)
	if _, err := f.a.Sweep(ctx, expired); err != nil {
		t.Fatal(err)
	}
	late.land(t)
	if obj, err := f.a.Backend.Open(ctx, late.name); err != nil {
		t.Fatalf("the late bytes did not land: %v", err)
	} else {
		obj.Close()
	}
	names, err := f.st.UnreferencedObjects(ctx, "", 10)
	if err != nil || len(names) != 1 || names[0] != late.name {
		t.Fatalf("unreferenced objects %v, %v; want the late object %s still listed", names, err, late.name)
	}
	// The next sweep, still within the commit grace, deletes the bytes
	// and keeps the row.
	if _, err := f.a.Sweep(ctx, expired.Add(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.Backend.Open(ctx, late.name); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the late bytes after the next sweep: %v, want them deleted", err)
	}
	if names, err := f.st.UnreferencedObjects(ctx, "", 10); err != nil || len(names) != 1 {
		t.Fatalf("unreferenced objects %v, %v; want the object kept within the commit grace", names, err)
	}
	// Past the grace, the sweep forgets it.
	if _, err := f.a.Sweep(ctx, f.now.Add(DefaultUploadDeadline+DefaultCommitGrace+time.Minute)); err != nil {
		t.Fatal(err)
	}
	f.wantNothingLeft(t)
}

// recordFails is a store whose RecordObject fails, as a process killed
// before it re-records a swept upload's object.
type recordFails struct{ store.Attachments }

func (recordFails) RecordObject(context.Context, string) error {
	return errors.New("the process was killed")
}

// TestAttachmentSweptMidwayCrashBeforeRecord: the sweeper takes an
// upload's expired reservation while its bytes stream, the backend then
// commits them, and the gateway dies before it records the object again
// and deletes the bytes (RecordObject and the delete fail). The sweep
// kept the object's row (KeepObject), so a later sweep still deletes the
// bytes: none is left in the backend listed by nothing.
func TestAttachmentSweptMidwayCrashBeforeRecord(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) { a.UploadDeadline = time.Minute })
	var armed, failed atomic.Bool
	f.a.Backend = failDeleteOnce{f.a.Backend, &armed, &failed}
	f.a.Store = recordFails{f.a.Store}
	f.uploadSweptMidway(t, func() { armed.Store(true) })
	if !failed.Load() {
		t.Fatal("the upload did not try to delete its bytes")
	}
	if o, _ := f.files(t); o != 1 {
		t.Fatalf("%d objects on disk after the crash, want the late one", o)
	}
	if _, err := f.a.Sweep(context.Background(), f.now); err != nil {
		t.Fatal(err)
	}
	if o, _ := f.files(t); o != 0 {
		t.Fatalf("%d objects on disk after the next sweep, want none", o)
	}
	if _, err := f.a.Sweep(context.Background(), f.now.Add(time.Minute+DefaultCommitGrace)); err != nil {
		t.Fatal(err)
	}
	f.wantNothingLeft(t)
}

// TestAttachmentSweepCountsKeptObjectOnce: the object of an upload whose
// commit had an unknown outcome is kept listed until its commit grace
// ends, and every sweep until then deletes its bytes again; SweepStats
// counts it once, in the sweep that drops its row, not in each of them.
func TestAttachmentSweepCountsKeptObjectOnce(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) {
		a.Backend = &lateCommit{Backend: a.Backend}
	})
	data := []byte("bytes whose commit the gateway did not learn the outcome of")
	h := sha256.Sum256(data)
	_, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), h[:], bytes.NewReader(data))
	wantCode(t, "upload whose commit has an unknown outcome", err, moh.CodeBackendUnavailable)
	expired := f.now.Add(DefaultUploadDeadline + time.Minute)
	grace := f.now.Add(DefaultUploadDeadline + DefaultCommitGrace + time.Minute)
	sweeps := []struct {
		name        string
		at          time.Time
		wantExpired int
		wantObjects int
	}{
		{"past the deadline", expired, 1, 0},
		{"within the grace", expired.Add(5 * time.Minute), 0, 0},
		{"again within the grace", expired.Add(10 * time.Minute), 0, 0},
		{"past the grace", grace, 0, 1},
		{"after the row is gone", grace.Add(5 * time.Minute), 0, 0},
	}
	for _, sw := range sweeps {
		t.Run(sw.name, func(t *testing.T) {
			st, err := f.a.Sweep(context.Background(), sw.at)
			if err != nil {
				t.Fatal(err)
			}
			if st.Expired != sw.wantExpired || st.Objects != sw.wantObjects {
				t.Fatalf("swept %+v, want %d expired and %d objects", st, sw.wantExpired, sw.wantObjects)
			}
		})
	}
	f.wantNothingLeft(t)
}
