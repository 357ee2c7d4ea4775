package storagetest_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/storagetest"
)

// files is a minimal correct backend: files in a directory, uploads in a
// temporary file linked under the name on Commit. It shows that the suite
// passes a correct backend; its modes break one promise each.
type files struct {
	dir  string
	mode string
}

type fileWriter struct {
	b       *files
	name    string
	f       *os.File
	size, n int64
	buf     bytes.Buffer // buffer mode only
	done    bool
}

func (b *files) Create(_ context.Context, name string, size int64) (storage.Writer, error) {
	if !storage.ValidName(name) && b.mode != "any-name" {
		return nil, storage.ErrInvalidName
	}
	if size < 0 {
		return nil, storage.ErrSize
	}
	if _, err := os.Stat(filepath.Join(b.dir, name)); err == nil && b.mode != "overwrite" {
		return nil, storage.ErrExists
	}
	f, err := os.CreateTemp(b.dir, "tmp-")
	if err != nil {
		return nil, err
	}
	w := &fileWriter{b: b, name: name, f: f, size: size}
	if b.mode == "visible-early" {
		os.Symlink(f.Name(), filepath.Join(b.dir, name))
	}
	return w, nil
}

func (w *fileWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.size && w.b.mode != "no-size-check" {
		return 0, storage.ErrSize
	}
	w.n += int64(len(p))
	if w.b.mode == "buffer" {
		return w.buf.Write(p)
	}
	return w.f.Write(p)
}

func (w *fileWriter) Commit(context.Context) error {
	if w.n != w.size && w.b.mode != "no-size-check" {
		w.Abort()
		return storage.ErrSize
	}
	if w.b.mode == "buffer" {
		if _, err := w.f.Write(w.buf.Bytes()); err != nil {
			return err
		}
	}
	if err := w.f.Close(); err != nil {
		return err
	}
	w.done = true
	final := filepath.Join(w.b.dir, w.name)
	switch w.b.mode {
	case "visible-early":
		os.Remove(final) // its link
	case "rename-commit":
		return os.Rename(w.f.Name(), final)
	}
	// A link never replaces an object, unlike a rename.
	err := os.Link(w.f.Name(), final)
	os.Remove(w.f.Name())
	if errors.Is(err, os.ErrExist) {
		return storage.ErrExists
	}
	return err
}

func (w *fileWriter) Abort() error {
	if w.done {
		return nil
	}
	if w.b.mode == "abort-commits" {
		w.f.Close()
		w.done = true
		return os.Rename(w.f.Name(), filepath.Join(w.b.dir, w.name))
	}
	w.f.Close()
	if err := os.Remove(w.f.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

type fileObject struct {
	*os.File
	size int64
	mode string
}

func (o *fileObject) Size() int64 { return o.size }

func (o *fileObject) ReadAt(p []byte, off int64) (int, error) {
	if o.mode == "readat-from-start" {
		off = 0
	}
	return o.File.ReadAt(p, off)
}

func (b *files) Open(_ context.Context, name string) (storage.Object, error) {
	if !storage.ValidName(name) && b.mode != "any-name" {
		return nil, storage.ErrInvalidName
	}
	f, err := os.Open(filepath.Join(b.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, storage.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &fileObject{File: f, size: st.Size(), mode: b.mode}, nil
}

func (b *files) Delete(_ context.Context, name string) error {
	if !storage.ValidName(name) && b.mode != "any-name" {
		return storage.ErrInvalidName
	}
	err := os.Remove(filepath.Join(b.dir, name))
	if errors.Is(err, os.ErrNotExist) && b.mode != "delete-not-idempotent" {
		return nil
	}
	return err
}

func (b *files) Sweep(_ context.Context, olderThan time.Time) (int, error) {
	entries, err := os.ReadDir(b.dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "tmp-") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return n, err
		}
		if b.mode == "sweep-all" || info.ModTime().Before(olderThan) {
			os.Remove(filepath.Join(b.dir, e.Name()))
			n++
		}
	}
	return n, nil
}

// brokenModes maps each broken mode to the contract subtest that must
// catch it.
var brokenModes = map[string]string{
	"visible-early":         "NotVisibleBeforeCommit",
	"abort-commits":         "Abort",
	"no-size-check":         "WrongSize",
	"overwrite":             "CreateExisting",
	"rename-commit":         "TwoWriters",
	"readat-from-start":     "Ranges",
	"delete-not-idempotent": "Delete",
	"any-name":              "InvalidNames",
	"sweep-all":             "Sweep",
	"buffer":                "Large",
}

const brokenEnv = "STORAGETEST_BROKEN_MODE"

func openFiles(mode string) func(t *testing.T) storage.Backend {
	return func(t *testing.T) storage.Backend { return &files{dir: t.TempDir(), mode: mode} }
}

// TestContract runs the suite on the correct file backend.
func TestContract(t *testing.T) {
	storagetest.Run(t, openFiles(""))
}

// TestBrokenBackendHelper runs the contract against a broken backend when
// re-executed by TestContractCatchesBrokenBackends.
func TestBrokenBackendHelper(t *testing.T) {
	mode := os.Getenv(brokenEnv)
	if mode == "" {
		t.Skip("helper for TestContractCatchesBrokenBackends")
	}
	storagetest.Run(t, openFiles(mode))
}

// TestContractCatchesBrokenBackends proves that the suite can fail: each
// broken backend must fail the subtest aimed at its defect.
func TestContractCatchesBrokenBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	for mode, subtest := range brokenModes {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenBackendHelper$/^"+subtest+"$", "-test.count=1")
			cmd.Env = append(os.Environ(), brokenEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("contract subtest %s passed a %s backend:\n%s", subtest, mode, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestBrokenBackendHelper/"+subtest) {
				t.Fatalf("helper failed without failing %s (%v):\n%s", subtest, err, out)
			}
		})
	}
}
