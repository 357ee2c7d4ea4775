// Package storagetest checks that a storage.Backend keeps the contract
// documented in package storage. Every backend (local files, S3, the
// legacy backend over HTTP) calls Run from its own tests, against the real
// thing (a directory, an S3 server on loopback, an HTTP server), under
// -race.
//
// The suite knows nothing of any backend: it sees only the interface. The
// checks that need a backend's insides (how many temporary uploads Sweep
// found, which files or keys are left) belong to that backend's own tests.
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
)

// LargeSize is the size of the object that the Large subtest streams
// through the backend, and MaxLargeHeap the growth of the live Go heap
// that it allows meanwhile: a quarter of the object, so a backend that
// buffers the object (or half of it) fails, and one that buffers a part
// of a multipart upload (S3's 5 to 8 MiB) passes.
const (
	LargeSize    = 64 << 20
	MaxLargeHeap = LargeSize / 4
)

// Run runs the contract tests as subtests of t. open must return a
// backend with no objects and no uploads of any other call (a fresh
// directory, a fresh key prefix) and release it with t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) storage.Backend) {
	t.Run("CommitMakesVisible", func(t *testing.T) { testCommit(t, open(t)) })
	t.Run("NotVisibleBeforeCommit", func(t *testing.T) { testNotVisibleBeforeCommit(t, open(t)) })
	t.Run("Empty", func(t *testing.T) { testEmpty(t, open(t)) })
	t.Run("Abort", func(t *testing.T) { testAbort(t, open(t)) })
	t.Run("WrongSize", func(t *testing.T) { testWrongSize(t, open) })
	t.Run("CreateExisting", func(t *testing.T) { testCreateExisting(t, open(t)) })
	t.Run("TwoWriters", func(t *testing.T) { testTwoWriters(t, open(t)) })
	t.Run("Ranges", func(t *testing.T) { testRanges(t, open(t)) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, open(t)) })
	t.Run("InvalidNames", func(t *testing.T) { testInvalidNames(t, open(t)) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, open(t)) })
	t.Run("Sweep", func(t *testing.T) { testSweep(t, open(t)) })
	t.Run("Large", func(t *testing.T) { testLarge(t, open(t)) })
}

func ctx() context.Context { return context.Background() }

// Name returns a fresh object name, as the attachment service draws one.
func Name(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// content returns n deterministic bytes that differ with seed.
func content(seed uint64, n int) []byte {
	b := make([]byte, n)
	mrand.NewChaCha8(seedOf(seed)).Read(b)
	return b
}

func seedOf(seed uint64) [32]byte {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return s
}

// put uploads data under name in chunks of at most 1000 bytes and commits.
func put(t testing.TB, b storage.Backend, name string, data []byte) {
	t.Helper()
	w, err := b.Create(ctx(), name, int64(len(data)))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if err := writeChunks(w, data, 1000); err != nil {
		w.Abort()
		t.Fatalf("Write: %v", err)
	}
	if err := w.Commit(ctx()); err != nil {
		w.Abort()
		t.Fatalf("Commit: %v", err)
	}
}

func writeChunks(w io.Writer, data []byte, chunk int) error {
	for len(data) > 0 {
		n := min(chunk, len(data))
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// get reads the whole committed object name through Read.
func get(t testing.TB, b storage.Backend, name string) []byte {
	t.Helper()
	o, err := b.Open(ctx(), name)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer o.Close()
	data, err := io.ReadAll(o)
	if err != nil {
		t.Fatalf("reading: %v", err)
	}
	if o.Size() != int64(len(data)) {
		t.Fatalf("Size() = %d, read %d bytes", o.Size(), len(data))
	}
	return data
}

func wantNotFound(t testing.TB, b storage.Backend, name string) {
	t.Helper()
	o, err := b.Open(ctx(), name)
	if err == nil {
		o.Close()
		t.Fatal("Open found an object that should not be visible")
	}
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open: %v, want ErrNotFound", err)
	}
}

func testCommit(t *testing.T, b storage.Backend) {
	for _, size := range []int{1, 1000, 100_000, 1 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			name, data := Name(t), content(uint64(size), size)
			put(t, b, name, data)
			if got := get(t, b, name); !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes that differ from the %d written", len(got), len(data))
			}
		})
	}
}

func testNotVisibleBeforeCommit(t *testing.T, b storage.Backend) {
	name, data := Name(t), content(1, 50_000)
	wantNotFound(t, b, name)
	w, err := b.Create(ctx(), name, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	wantNotFound(t, b, name)
	if err := writeChunks(w, data[:len(data)/2], 4096); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, b, name)
	if err := writeChunks(w, data[len(data)/2:], 4096); err != nil {
		t.Fatal(err)
	}
	// Every byte is written: still nothing until Commit.
	wantNotFound(t, b, name)
	if err := w.Commit(ctx()); err != nil {
		t.Fatal(err)
	}
	if got := get(t, b, name); !bytes.Equal(got, data) {
		t.Fatal("committed object differs")
	}
}

func testEmpty(t *testing.T, b storage.Backend) {
	name := Name(t)
	put(t, b, name, nil)
	o, err := b.Open(ctx(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.Size() != 0 {
		t.Fatalf("Size() = %d, want 0", o.Size())
	}
	if n, err := o.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read = %d, %v; want 0, io.EOF", n, err)
	}
}

func testAbort(t *testing.T, b storage.Backend) {
	for _, tc := range []struct {
		name    string
		written int
	}{
		{"before any write", 0},
		{"halfway", 30_000},
		{"all written", 60_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, data := Name(t), content(2, 60_000)
			w, err := b.Create(ctx(), name, int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			if err := writeChunks(w, data[:tc.written], 7000); err != nil {
				t.Fatal(err)
			}
			if err := w.Abort(); err != nil {
				t.Fatalf("Abort: %v", err)
			}
			if err := w.Abort(); err != nil {
				t.Fatalf("second Abort: %v", err)
			}
			wantNotFound(t, b, name)
			// The name is free again: an aborted upload blocks nothing.
			put(t, b, name, data[:100])
			if got := get(t, b, name); !bytes.Equal(got, data[:100]) {
				t.Fatal("object created after an Abort differs")
			}
		})
	}
}

func testWrongSize(t *testing.T, open func(t *testing.T) storage.Backend) {
	b := open(t)
	for _, tc := range []struct {
		name          string
		size, written int
	}{
		{"short", 10_000, 9_999},
		{"nothing written", 10_000, 0},
		{"long", 10_000, 10_001},
		{"long in one write", 10, 20_000},
		{"bytes for an empty object", 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, data := Name(t), content(3, tc.written)
			w, err := b.Create(ctx(), name, int64(tc.size))
			if err != nil {
				t.Fatal(err)
			}
			err = writeChunks(w, data, 5000)
			if err == nil {
				err = w.Commit(ctx())
			}
			if !errors.Is(err, storage.ErrSize) {
				t.Fatalf("writing %d bytes of %d: %v, want ErrSize (from Write or Commit)", tc.written, tc.size, err)
			}
			if err := w.Abort(); err != nil {
				t.Fatalf("Abort after ErrSize: %v", err)
			}
			wantNotFound(t, b, name)
		})
	}
}

func testCreateExisting(t *testing.T, b storage.Backend) {
	name, data := Name(t), content(4, 3000)
	put(t, b, name, data)
	w, err := b.Create(ctx(), name, 10)
	if err == nil {
		w.Abort()
		t.Fatal("Create of a committed name succeeded")
	}
	if !errors.Is(err, storage.ErrExists) {
		t.Fatalf("Create of a committed name: %v, want ErrExists", err)
	}
	if got := get(t, b, name); !bytes.Equal(got, data) {
		t.Fatal("the committed object changed")
	}
}

// testTwoWriters: two writers of one name, both created before either
// commits. Committed one after the other, the second gets ErrExists and
// the object stays the first's; committed at once, at most one succeeds
// and the object is the one that did ("a name is created at most once").
func testTwoWriters(t *testing.T, b storage.Backend) {
	start := func(name string, size int, seeds [2]uint64) [2]storage.Writer {
		t.Helper()
		var ws [2]storage.Writer
		for i := range ws {
			w, err := b.Create(ctx(), name, int64(size))
			if err != nil {
				t.Fatalf("Create of a name not committed yet: %v", err)
			}
			ws[i] = w
			if err := writeChunks(w, content(seeds[i], size), 64<<10); err != nil {
				t.Fatal(err)
			}
		}
		return ws
	}
	for _, size := range []int{1000, 6 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			name := Name(t)
			ws := start(name, size, [2]uint64{20, 21})
			if err := ws[0].Commit(ctx()); err != nil {
				t.Fatal(err)
			}
			err := ws[1].Commit(ctx())
			ws[1].Abort()
			if !errors.Is(err, storage.ErrExists) {
				t.Errorf("the second Commit of one name: %v, want ErrExists", err)
			}
			if got := get(t, b, name); !bytes.Equal(got, content(20, size)) {
				t.Fatal("the second writer replaced the committed object")
			}
		})
	}
	t.Run("AtOnce", func(t *testing.T) {
		for round := range 20 {
			name := Name(t)
			seeds := [2]uint64{uint64(100 + 2*round), uint64(101 + 2*round)}
			ws := start(name, 1000, seeds)
			var errs [2]error
			var wg sync.WaitGroup
			for i := range ws {
				wg.Go(func() { errs[i] = ws[i].Commit(ctx()) })
			}
			wg.Wait()
			won := -1
			for i, err := range errs {
				ws[i].Abort()
				if err == nil {
					if won >= 0 {
						t.Fatal("both Commits of one name succeeded")
					}
					won = i
				}
			}
			if won >= 0 {
				if got := get(t, b, name); !bytes.Equal(got, content(seeds[won], 1000)) {
					t.Fatal("the object is not the one whose Commit succeeded")
				}
			}
		}
	})
}

func testRanges(t *testing.T, b storage.Backend) {
	const size = 300_000
	name, data := Name(t), content(5, size)
	put(t, b, name, data)
	o, err := b.Open(ctx(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.Size() != size {
		t.Fatalf("Size() = %d, want %d", o.Size(), size)
	}

	t.Run("ReadAt", func(t *testing.T) {
		for _, tc := range []struct {
			off, n int64
			want   int64
			eof    bool
		}{
			{0, 1, 1, false},
			{0, 1000, 1000, false},
			{123_456, 70_000, 70_000, false},
			{size - 10, 10, 10, false},
			{size - 10, 20, 10, true},
			{size - 1, 1, 1, false},
			{size, 1, 0, true},
			{size + 100, 10, 0, true},
		} {
			t.Run(fmt.Sprintf("%d+%d", tc.off, tc.n), func(t *testing.T) {
				p := make([]byte, tc.n)
				n, err := o.ReadAt(p, tc.off)
				if int64(n) != tc.want {
					t.Fatalf("ReadAt = %d bytes (%v), want %d", n, err, tc.want)
				}
				if tc.eof && err != io.EOF {
					t.Fatalf("ReadAt short read: err %v, want io.EOF", err)
				}
				if !tc.eof && err != nil && !(err == io.EOF && tc.off+tc.n == size) {
					t.Fatalf("ReadAt: %v", err)
				}
				if n > 0 && !bytes.Equal(p[:n], data[tc.off:tc.off+int64(n)]) {
					t.Fatal("ReadAt returned other bytes")
				}
			})
		}
	})

	t.Run("ParallelReadAt", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Go(func() {
				off := int64(i) * 30_000
				p := make([]byte, 20_000)
				if _, err := o.ReadAt(p, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(p, data[off:off+20_000]) {
					errs <- fmt.Errorf("ReadAt at %d returned other bytes", off)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("Seek", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			offset int64
			whence int
			at     int64
		}{
			{"start", 200_000, io.SeekStart, 200_000},
			{"current", -50_000, io.SeekCurrent, 150_000 + 100},
			{"end", -1000, io.SeekEnd, size - 1000},
			{"zero", 0, io.SeekStart, 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				at, err := o.Seek(tc.offset, tc.whence)
				if err != nil || at != tc.at {
					t.Fatalf("Seek = %d, %v; want %d", at, err, tc.at)
				}
				p := make([]byte, 100)
				if _, err := io.ReadFull(o, p); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(p, data[tc.at:tc.at+100]) {
					t.Fatal("Read after Seek returned other bytes")
				}
			})
		}
		// Read to the end from a seek, as a resumed download does.
		if _, err := o.Seek(250_000, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(o)
		if err != nil || !bytes.Equal(rest, data[250_000:]) {
			t.Fatalf("reading from 250000 to the end: %d bytes, %v", len(rest), err)
		}
		if _, err := o.Seek(-1, io.SeekStart); err == nil {
			t.Fatal("Seek to a negative offset succeeded")
		}
	})
}

func testDelete(t *testing.T, b storage.Backend) {
	name, data := Name(t), content(6, 5000)
	put(t, b, name, data)
	if err := b.Delete(ctx(), name); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, b, name)
	if err := b.Delete(ctx(), name); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if err := b.Delete(ctx(), Name(t)); err != nil {
		t.Fatalf("Delete of a name never created: %v", err)
	}
	// The name can be used again.
	put(t, b, name, data[:10])
	if got := get(t, b, name); !bytes.Equal(got, data[:10]) {
		t.Fatal("object created after a Delete differs")
	}
}

func testInvalidNames(t *testing.T, b storage.Backend) {
	hex64 := Name(t)
	for _, tc := range []struct{ name, value string }{
		{"empty", ""},
		{"short", hex64[:31]},
		{"long", hex64 + hex64 + "0"},
		{"uppercase", "A" + hex64[1:]},
		{"dot dot", "../" + hex64},
		{"slash", hex64[:32] + "/" + hex64[:32]},
		{"percent", hex64[:32] + "%2f" + hex64[:32]},
		{"query", hex64 + "?x=1"},
		{"space", hex64 + " "},
		{"nul", hex64 + "\x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if w, err := b.Create(ctx(), tc.value, 1); !errors.Is(err, storage.ErrInvalidName) {
				if err == nil {
					w.Abort()
				}
				t.Errorf("Create: %v, want ErrInvalidName", err)
			}
			if o, err := b.Open(ctx(), tc.value); !errors.Is(err, storage.ErrInvalidName) {
				if err == nil {
					o.Close()
				}
				t.Errorf("Open: %v, want ErrInvalidName", err)
			}
			if err := b.Delete(ctx(), tc.value); !errors.Is(err, storage.ErrInvalidName) {
				t.Errorf("Delete: %v, want ErrInvalidName", err)
			}
		})
	}
	if _, err := b.Create(ctx(), hex64, -1); err == nil {
		t.Error("Create with a negative size succeeded")
	}
}

func testConcurrent(t *testing.T, b storage.Backend) {
	const n = 8
	names := make([]string, n)
	for i := range names {
		names[i] = Name(t)
	}
	// Half the uploads commit, half abort, all at once.
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i, name := range names {
		wg.Go(func() {
			data := content(uint64(100+i), 40_000+i*1000)
			w, err := b.Create(ctx(), name, int64(len(data)))
			if err != nil {
				errs <- err
				return
			}
			if err := writeChunks(w, data, 3000); err != nil {
				w.Abort()
				errs <- err
				return
			}
			if i%2 == 1 {
				errs <- w.Abort()
				return
			}
			errs <- w.Commit(ctx())
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Readers of all the objects at once.
	for i, name := range names {
		wg.Go(func() {
			o, err := b.Open(ctx(), name)
			if i%2 == 1 {
				if !errors.Is(err, storage.ErrNotFound) {
					t.Errorf("aborted upload %d: Open: %v, want ErrNotFound", i, err)
				}
				if err == nil {
					o.Close()
				}
				return
			}
			if err != nil {
				t.Errorf("upload %d: Open: %v", i, err)
				return
			}
			defer o.Close()
			got, err := io.ReadAll(o)
			if err != nil || !bytes.Equal(got, content(uint64(100+i), 40_000+i*1000)) {
				t.Errorf("upload %d: read %d bytes (%v) that differ", i, len(got), err)
			}
		})
	}
	wg.Wait()
}

// testSweep abandons an upload (a process that died mid-stream: neither
// Commit nor Abort), then sweeps with a cut-off between it and a younger
// upload still in progress. The abandoned upload must stay invisible,
// the young one must still commit, and committed objects must survive.
// How many temporary uploads Sweep reports depends on the backend (one
// that keeps nothing before Commit reports 0); the backends' own tests
// check the count.
func testSweep(t *testing.T, b storage.Backend) {
	kept, keptData := Name(t), content(7, 2000)
	put(t, b, kept, keptData)

	if n, err := b.Sweep(ctx(), time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("Sweep of an hour ago = %d, %v; want 0, nil", n, err)
	}

	old, oldData := Name(t), content(8, 100_000)
	w, err := b.Create(ctx(), old, int64(len(oldData)))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeChunks(w, oldData[:60_000], 10_000); err != nil {
		t.Fatal(err)
	}
	// Abandoned: w gets neither Commit nor Abort before Sweep. (A live
	// process aborts it at the end, after Sweep removed its data: that
	// must be harmless, and it ends a backend's request in flight.)
	t.Cleanup(func() {
		if err := w.Abort(); err != nil {
			t.Errorf("Abort of an upload that Sweep removed: %v", err)
		}
	})
	// Sweep's cut-off
	// must lie strictly between the two uploads' starts, on a clock with
	// (at worst) one-second resolution.
	time.Sleep(1100 * time.Millisecond)
	cut := time.Now()
	time.Sleep(1100 * time.Millisecond)

	young, youngData := Name(t), content(9, 100_000)
	y, err := b.Create(ctx(), young, int64(len(youngData)))
	if err != nil {
		t.Fatal(err)
	}
	defer y.Abort()
	if err := writeChunks(y, youngData[:60_000], 10_000); err != nil {
		t.Fatal(err)
	}

	n, err := b.Sweep(ctx(), cut)
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if n < 0 || n > 1 {
		t.Fatalf("Sweep removed %d uploads, want at most the abandoned one", n)
	}
	wantNotFound(t, b, old)
	if err := writeChunks(y, youngData[60_000:], 10_000); err != nil {
		t.Fatalf("writing the young upload after Sweep: %v", err)
	}
	if err := y.Commit(ctx()); err != nil {
		t.Fatalf("committing the young upload after Sweep: %v", err)
	}
	if got := get(t, b, young); !bytes.Equal(got, youngData) {
		t.Fatal("the young upload differs after Sweep")
	}
	if got := get(t, b, kept); !bytes.Equal(got, keptData) {
		t.Fatal("a committed object changed in Sweep")
	}
	// A second sweep finds nothing left over from the first.
	if n, err := b.Sweep(ctx(), cut); err != nil || n != 0 {
		t.Fatalf("second Sweep = %d, %v; want 0, nil", n, err)
	}
	// The abandoned name is free for a new upload.
	put(t, b, old, oldData)
	if got := get(t, b, old); !bytes.Equal(got, oldData) {
		t.Fatal("a new upload under the abandoned name differs")
	}
}

// heapWatch samples the live heap: after a GC, the bytes of the heap's
// objects that are still reachable (HeapAlloc), so garbage that a GC would
// free does not count. peak is the most seen above the baseline.
type heapWatch struct {
	base, peak, alloc0 uint64
}

func newHeapWatch() *heapWatch {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return &heapWatch{base: m.HeapAlloc, alloc0: m.TotalAlloc}
}

func (h *heapWatch) sample() {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	if m.HeapAlloc > h.base && m.HeapAlloc-h.base > h.peak {
		h.peak = m.HeapAlloc - h.base
	}
}

func (h *heapWatch) allocated() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc - h.alloc0
}

// testLarge streams a LargeSize object in and out, generated and hashed
// on the fly, and checks that the live heap grew by at most MaxLargeHeap
// meanwhile: memory stays flat in the object's size. The heap is sampled
// (after a GC) every 1 MiB written or read; the bytes allocated in all
// are logged, not checked.
func testLarge(t *testing.T, b storage.Backend) {
	if testing.Short() {
		t.Skip("streams 64 MiB")
	}
	name := Name(t)
	src := mrand.NewChaCha8(seedOf(10))
	buf := make([]byte, 32<<10)
	sum := sha256.New()

	h := newHeapWatch()
	w, err := b.Create(ctx(), name, LargeSize)
	if err != nil {
		t.Fatal(err)
	}
	for written := 0; written < LargeSize; written += len(buf) {
		src.Read(buf)
		sum.Write(buf)
		if _, err := w.Write(buf); err != nil {
			w.Abort()
			t.Fatalf("Write at %d: %v", written, err)
		}
		if written%(1<<20) == 0 {
			h.sample()
		}
	}
	if err := w.Commit(ctx()); err != nil {
		w.Abort()
		t.Fatal(err)
	}
	h.sample()
	upPeak, upAlloc := h.peak, h.allocated()
	want := sum.Sum(nil)

	h = newHeapWatch()
	o, err := b.Open(ctx(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.Size() != LargeSize {
		t.Fatalf("Size() = %d, want %d", o.Size(), LargeSize)
	}
	sum.Reset()
	read := int64(0)
	for {
		n, err := o.Read(buf)
		sum.Write(buf[:n])
		if read/(1<<20) != (read+int64(n))/(1<<20) {
			h.sample()
		}
		read += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read at %d: %v", read, err)
		}
	}
	h.sample()
	downPeak, downAlloc := h.peak, h.allocated()
	if read != LargeSize || !bytes.Equal(sum.Sum(nil), want) {
		t.Fatalf("read %d bytes with another hash", read)
	}
	t.Logf("%d MiB object: live heap grew by at most %.1f MiB uploading (%.1f MiB allocated in all), %.1f MiB downloading (%.1f MiB allocated)",
		LargeSize>>20, mib(upPeak), mib(upAlloc), mib(downPeak), mib(downAlloc))
	if upPeak > MaxLargeHeap || downPeak > MaxLargeHeap {
		t.Fatalf("live heap grew by %.1f MiB uploading and %.1f MiB downloading a %d MiB object; want at most %d MiB",
			mib(upPeak), mib(downPeak), LargeSize>>20, MaxLargeHeap>>20)
	}
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
