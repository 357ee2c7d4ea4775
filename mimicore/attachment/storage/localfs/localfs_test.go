package localfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/storagetest"
)

// TestContract runs the backend-independent contract of storage.Backend.
func TestContract(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return newBackend(t) })
}

// newBackend opens a backend in a fresh directory.
func newBackend(t *testing.T) *Backend {
	t.Helper()
	b, err := New(filepath.Join(t.TempDir(), "attachments"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newName(t *testing.T) string {
	t.Helper()
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(r[:])
}

// tmpCount is the number of files in the backend's temporary directory.
func tmpCount(t *testing.T, b *Backend) int {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(b.Root(), tmpDir))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func put(t *testing.T, b *Backend, name string, data []byte) {
	t.Helper()
	ctx := context.Background()
	w, err := b.Create(ctx, name, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTripAndRanges(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	name := newName(t)
	data := bytes.Repeat([]byte("0123456789"), 10000)

	w, err := b.Create(ctx, name, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	// Nothing is visible before Commit.
	if _, err := b.Open(ctx, name); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open before Commit: %v, want ErrNotFound", err)
	}
	for off := 0; off < len(data); off += 4096 {
		if _, err := w.Write(data[off:min(off+4096, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := tmpCount(t, b); n != 0 {
		t.Fatalf("%d temporary files after Commit", n)
	}
	o, err := b.Open(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.Size() != int64(len(data)) {
		t.Fatalf("Size %d, want %d", o.Size(), len(data))
	}
	got, err := io.ReadAll(o)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadAll: %v, equal %v", err, bytes.Equal(got, data))
	}
	buf := make([]byte, 7)
	if _, err := o.ReadAt(buf, 12345); err != nil || !bytes.Equal(buf, data[12345:12352]) {
		t.Fatalf("ReadAt: %v %q", err, buf)
	}
	if _, err := o.Seek(99990, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	tail, _ := io.ReadAll(o)
	if !bytes.Equal(tail, data[99990:]) {
		t.Fatalf("tail %q", tail)
	}
	// The file lives under the fan-out directory, named only by name.
	if _, err := os.Stat(filepath.Join(b.Root(), objectsDir, name[:2], name)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(ctx, name, 1); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("Create of a committed name: %v, want ErrExists", err)
	}
}

func TestSizeMismatchLeavesNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int64
		write int
	}{
		{"short", 10, 9},
		{"long", 10, 11},
		{"empty of nonzero", 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			ctx := context.Background()
			name := newName(t)
			w, err := b.Create(ctx, name, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			_, werr := w.Write(make([]byte, tc.write))
			if int64(tc.write) > tc.size && !errors.Is(werr, storage.ErrSize) {
				t.Fatalf("overlong Write: %v, want ErrSize", werr)
			}
			if err := w.Commit(ctx); !errors.Is(err, storage.ErrSize) {
				t.Fatalf("Commit: %v, want ErrSize", err)
			}
			if err := w.Abort(); err != nil {
				t.Fatalf("Abort after failed Commit: %v", err)
			}
			if _, err := b.Open(ctx, name); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Open: %v, want ErrNotFound", err)
			}
			if n := tmpCount(t, b); n != 0 {
				t.Fatalf("%d temporary files left", n)
			}
		})
	}
}

func TestAbortRemovesTemporaryData(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	name := newName(t)
	w, err := b.Create(ctx, name, 100)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 50)); err != nil {
		t.Fatal(err)
	}
	if n := tmpCount(t, b); n != 1 {
		t.Fatalf("%d temporary files while streaming, want 1", n)
	}
	for range 2 {
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
	}
	if n := tmpCount(t, b); n != 0 {
		t.Fatalf("%d temporary files after Abort", n)
	}
	if _, err := w.Write([]byte{1}); err == nil {
		t.Fatal("Write after Abort succeeded")
	}
	if err := w.Commit(ctx); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
}

func TestInvalidNames(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	for _, name := range []string{
		"", "../../etc/passwd", strings.Repeat("a", 31), strings.Repeat("A", 32),
		strings.Repeat("a", 31) + "/", strings.Repeat("a", 129), "..",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := b.Create(ctx, name, 1); !errors.Is(err, storage.ErrInvalidName) {
				t.Errorf("Create: %v", err)
			}
			if _, err := b.Open(ctx, name); !errors.Is(err, storage.ErrInvalidName) {
				t.Errorf("Open: %v", err)
			}
			if err := b.Delete(ctx, name); !errors.Is(err, storage.ErrInvalidName) {
				t.Errorf("Delete: %v", err)
			}
		})
	}
}

func TestDeleteIsIdempotent(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	name := newName(t)
	put(t, b, name, []byte("ciphertext"))
	for i := range 2 {
		if err := b.Delete(ctx, name); err != nil {
			t.Fatalf("Delete %d: %v", i, err)
		}
	}
	if _, err := b.Open(ctx, name); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open after Delete: %v", err)
	}
	// An open reader keeps its bytes after Delete (a download in flight).
	put(t, b, name, []byte("again"))
	o, err := b.Open(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := b.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(o); string(got) != "again" {
		t.Fatalf("read after Delete: %q", got)
	}
}

func TestSweepRemovesOnlyStaleTemporaryFiles(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	// A crashed upload: a temporary file nobody will commit, an hour old.
	stale, err := b.Create(ctx, newName(t), 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stale.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	staleFile := stale.(*writer).tmp
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(staleFile, old, old); err != nil {
		t.Fatal(err)
	}
	// An upload in progress and a committed object.
	live, err := b.Create(ctx, newName(t), 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := live.Write([]byte("ab")); err != nil {
		t.Fatal(err)
	}
	done := newName(t)
	put(t, b, done, []byte("kept"))

	n, err := b.Sweep(ctx, time.Now().Add(-10*time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("Sweep: %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(staleFile); !os.IsNotExist(err) {
		t.Fatalf("stale file: %v", err)
	}
	if _, err := live.Write([]byte("c")); err != nil {
		t.Fatal(err)
	}
	if err := live.Commit(ctx); err != nil {
		t.Fatalf("Commit of the live upload after Sweep: %v", err)
	}
	if _, err := b.Open(ctx, done); err != nil {
		t.Fatal(err)
	}
	// A reopened backend sweeps what a dead process left.
	b2, err := New(b.Root())
	if err != nil {
		t.Fatal(err)
	}
	if n, err := b2.Sweep(ctx, time.Now().Add(time.Second)); err != nil || n != 0 {
		t.Fatalf("second Sweep: %d, %v", n, err)
	}
}

func TestConcurrentUploads(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	names := make([]string, 16)
	for i := range names {
		names[i] = newName(t)
		// Half of them share a fan-out directory created concurrently.
		if i%2 == 0 {
			names[i] = "ff" + names[i][2:]
		}
	}
	errs := make(chan error, len(names))
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte(i)}, 1000+i)
			w, err := b.Create(ctx, name, int64(len(data)))
			if err == nil {
				_, err = w.Write(data)
			}
			if err == nil {
				err = w.Commit(ctx)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, name := range names {
		o, err := b.Open(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if o.Size() != int64(1000+i) {
			t.Errorf("%d: size %d", i, o.Size())
		}
		o.Close()
	}
}

// TestConcurrentCommitSameName: two writers of one name commit at once:
// exactly one succeeds, the other gets ErrExists, and the object is the
// first's. Both used to succeed at times (a check, then a rename that
// replaced the first object).
func TestConcurrentCommitSameName(t *testing.T) {
	b, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		name := storagetest.Name(t)
		var ws [2]storage.Writer
		for i := range ws {
			if ws[i], err = b.Create(context.Background(), name, 1); err != nil {
				t.Fatal(err)
			}
			if _, err := ws[i].Write([]byte{'a' + byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		var errs [2]error
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range ws {
			wg.Go(func() { <-start; errs[i] = ws[i].Commit(context.Background()) })
		}
		close(start)
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won >= 0:
				t.Fatalf("both Commits of one name succeeded: the first object was replaced")
			case err == nil:
				won = i
			case !errors.Is(err, storage.ErrExists):
				t.Fatalf("Commit: %v, want ErrExists", err)
			}
		}
		if won < 0 {
			t.Fatal("neither Commit succeeded")
		}
		o, err := b.Open(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(o)
		o.Close()
		if err != nil || string(got) != string(rune('a'+won)) {
			t.Fatalf("object %q, %v; want the winner's %q", got, err, string(rune('a'+won)))
		}
	}
}
