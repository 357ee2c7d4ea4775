package ds

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestUploadSlots runs sequences of acquisitions and releases against the
// counts: at most limit slots per uploader, each uploader counted alone, a
// release giving back exactly one slot however often it is called, and
// no uploader kept once it holds none.
func TestUploadSlots(t *testing.T) {
	// A step acquires a slot of uploader (release < 0) or calls the
	// release of the step numbered release.
	type step struct {
		uploader string
		release  int
		wantOK   bool
	}
	acquire := func(uploader string, ok bool) step { return step{uploader: uploader, release: -1, wantOK: ok} }
	rel := func(i int) step { return step{release: i} }
	for _, tc := range []struct {
		name      string
		limit     int
		steps     []step
		want      map[string]int
		uploaders int
		total     int
	}{
		{"up to the limit", 3, []step{acquire("a", true), acquire("a", true), acquire("a", true), acquire("a", false)},
			map[string]int{"a": 3}, 1, 3},
		{"a release frees a slot", 2, []step{acquire("a", true), acquire("a", true), rel(0), acquire("a", true), acquire("a", false)},
			map[string]int{"a": 2}, 1, 2},
		{"a release twice frees one slot", 2, []step{acquire("a", true), acquire("a", true), rel(0), rel(0), acquire("a", true),
			acquire("a", false)}, map[string]int{"a": 2}, 1, 2},
		{"uploaders counted apart", 1, []step{acquire("a", true), acquire("a", false), acquire("b", true), acquire("b", false)},
			map[string]int{"a": 1, "b": 1}, 2, 2},
		{"a refusal takes nothing", 1, []step{acquire("a", true), acquire("a", false), acquire("a", false), rel(0), acquire("a", true)},
			map[string]int{"a": 1}, 1, 1},
		{"an uploader with none left is forgotten", 2, []step{acquire("a", true), acquire("b", true), rel(0), rel(1)},
			map[string]int{"a": 0, "b": 0}, 0, 0},
		{"limit 0 refuses", 0, []step{acquire("a", false)}, map[string]int{"a": 0}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s UploadSlots
			releases := make([]func(), len(tc.steps))
			for i, st := range tc.steps {
				if st.release >= 0 {
					releases[st.release]()
					continue
				}
				release, ok := s.Acquire(st.uploader, tc.limit)
				if ok != st.wantOK || (release != nil) != ok {
					t.Fatalf("step %d: acquire %q: ok %v (release %v), want %v", i, st.uploader, ok, release != nil, st.wantOK)
				}
				releases[i] = release
			}
			for uploader, want := range tc.want {
				if got := s.InProgress(uploader); got != want {
					t.Errorf("%q holds %d slots, want %d", uploader, got, want)
				}
			}
			if got := s.Uploaders(); got != tc.uploaders {
				t.Errorf("%d uploaders hold slots, want %d", got, tc.uploaders)
			}
			if got := s.Total(); got != tc.total {
				t.Errorf("%d slots held in all, want %d", got, tc.total)
			}
		})
	}
}

// TestUploadSlotsConcurrent: goroutines racing for the slots of one
// uploader never hold more than the limit at once, and all are given
// back.
func TestUploadSlotsConcurrent(t *testing.T) {
	const limit = 3
	var s UploadSlots
	var holding, most atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				release, ok := s.Acquire("a", limit)
				if !ok {
					continue
				}
				n := holding.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				holding.Add(-1)
				release()
			}
		}()
	}
	wg.Wait()
	if m := most.Load(); m > limit || m < 1 {
		t.Fatalf("%d slots held at once, want 1 to %d", m, limit)
	}
	if n, u := s.InProgress("a"), s.Uploaders(); n != 0 || u != 0 || s.Total() != 0 {
		t.Fatalf("%d slots of %d uploaders left after every release", n, u)
	}
}

// TestAttachmentUploadsInProgress: an uploader with MaxUploadsInProgress
// uploads streaming is refused one more, rate_limited, before anything
// is stored or a byte of its content read; another uploader is not; and
// the slot of an upload that ended serves the next one.
func TestAttachmentUploadsInProgress(t *testing.T) {
	const limit = 2
	f := newAttachFixture(t, func(a *Attachments) { a.MaxUploadsInProgress = limit })
	data := bytes.Repeat([]byte("in progress "), 100)
	h := sha256.Sum256(data)
	alice := string(f.alice.id())
	gate := make(chan struct{})
	errs := make(chan error, limit)
	for range limit {
		started := make(chan struct{})
		go func() {
			_, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), h[:], &startedReader{started: started, gate: gate, r: bytes.NewReader(data)})
			errs <- err
		}()
		<-started // streaming: its slot and its reservation are held
	}
	if n := f.a.slots().InProgress(alice); n != limit {
		t.Fatalf("alice holds %d slots, want %d", n, limit)
	}

	_, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), h[:], refusingReader{t})
	wantCode(t, "an upload over the limit", err, moh.CodeRateLimited)
	if msg := string(moh.DSErrorOf(err).Message); !bytes.Contains([]byte(msg), []byte(fmt.Sprint(limit))) {
		t.Errorf("the refusal's message %q does not name the limit", msg)
	}
	// Nothing of it stored: the group holds the two reservations.
	if u, err := f.st.GroupAttachmentUsage(context.Background(), f.g1); err != nil || u.Count != limit {
		t.Fatalf("group usage %+v, %v; want the %d uploads in progress alone", u, err, limit)
	}
	if u, err := f.st.UploaderAttachmentUsage(context.Background(), alice); err != nil || u.Count != limit {
		t.Fatalf("alice's usage %+v, %v; want the %d uploads in progress alone", u, err, limit)
	}
	// bob, in the same group, is not held to alice's uploads.
	if _, err := f.upload(t, f.bob, 1, f.g1, uint64(len(data)), h[:], bytes.NewReader(data)); err != nil {
		t.Fatalf("bob's upload while alice's are in progress: %v", err)
	}

	close(gate)
	for range limit {
		if err := <-errs; err != nil {
			t.Fatalf("an upload in progress: %v", err)
		}
	}
	if n, u := f.a.slots().InProgress(alice), f.a.slots().Uploaders(); n != 0 || u != 0 {
		t.Fatalf("%d slots of alice (%d uploaders) held after every upload ended", n, u)
	}
	f.put(t, data) // the slots serve again
	if o, _ := f.files(t); o != limit+2 {
		t.Fatalf("%d objects on disk, want %d", o, limit+2)
	}
}

// panicReader panics when read, as a broken body reader would.
type panicReader struct{}

func (panicReader) Read([]byte) (int, error) { panic("the body reader broke") }

// TestAttachmentUploadSlotReleased: every way out of an upload gives its
// slot back, a refusal after the slot was taken, a failure while
// streaming and a panic included, so that the next upload of an uploader
// whose limit is 1 is accepted.
func TestAttachmentUploadSlotReleased(t *testing.T) {
	f := newAttachFixture(t, func(a *Attachments) {
		a.MaxUploadsInProgress = 1
		a.Quota = store.AttachmentQuota{UploaderBytes: 1 << 20}
	})
	alice := string(f.alice.id())
	data := bytes.Repeat([]byte("slot "), 1000)
	h := sha256.Sum256(data)
	timeout := moh.Errorf(moh.CodeBodyTimeout, "the body did not arrive in time")
	for _, tc := range []struct {
		name    string
		size    uint64
		hash    []byte
		content io.Reader
		want    moh.Code
		panics  bool
	}{
		{"stored", uint64(len(data)), h[:], bytes.NewReader(data), 0, false},
		{"over the quota", 2 << 20, h[:], refusingReader{t}, moh.CodeQuotaExceeded, false},
		{"content cut off", uint64(len(data)), h[:], &cutReader{r: bytes.NewReader(data), n: 100}, moh.CodeContentMismatch, false},
		{"hash mismatch", uint64(len(data)), make([]byte, 32), bytes.NewReader(data), moh.CodeContentMismatch, false},
		{"body timeout", uint64(len(data)), h[:], io.MultiReader(bytes.NewReader(data[:10]), errReader{timeout}), moh.CodeBodyTimeout, false},
		{"reader panics", uint64(len(data)), h[:], panicReader{}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := func() (err error) {
				defer func() {
					if p := recover(); p != nil {
						err = fmt.Errorf("panic: %v", p)
					}
				}()
				_, err = f.upload(t, f.alice, 0, f.g1, tc.size, tc.hash, tc.content)
				return err
			}()
			if tc.panics {
				if err == nil {
					t.Fatal("the panicking reader's upload succeeded")
				}
			} else {
				wantCode(t, "upload", err, tc.want)
			}
			if n := f.a.slots().InProgress(alice); n != 0 {
				t.Fatalf("alice holds %d slots after the upload ended", n)
			}
			if _, err := f.upload(t, f.alice, 0, f.g1, uint64(len(data)), h[:], bytes.NewReader(data)); err != nil {
				t.Fatalf("the next upload: %v", err)
			}
		})
	}
}
