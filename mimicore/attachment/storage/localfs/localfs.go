// Package localfs is the local attachment storage backend: ciphertexts as
// files under one root directory (the gateway's data_dir/attachments by
// default).
//
// Layout under the root:
//
//	objects/<first two hex digits of name>/<name>   committed objects
//	tmp/up-<random>                                   uploads in progress
//
// An upload is written to a file in tmp/ as it streams (same file system
// as objects/, so the link is atomic), fsynced, hard-linked to its final
// path (which fails if the name exists, so an object is never replaced),
// unlinked from tmp/, and the final directory is fsynced before Commit
// returns. A crash
// leaves either no object or the complete one; the temporary file of an
// upload that was never committed is removed by Sweep. File names come
// only from storage.ValidName names, never from request data.
package localfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
)

const (
	objectsDir = "objects"
	tmpDir     = "tmp"
	tmpPrefix  = "up-"
	dirPerm    = 0o700
	filePerm   = 0o600
)

// Backend keeps attachment ciphertexts as files under a root directory.
// It is safe for concurrent use.
type Backend struct {
	root string

	// mkdirMu serialises the creation (and fsync) of fan-out directories.
	mkdirMu sync.Mutex
}

var _ storage.Backend = (*Backend)(nil)

// New returns the backend rooted at root, creating root and its two
// subdirectories (mode 0700) when they are missing.
func New(root string) (*Backend, error) {
	if root == "" {
		return nil, errors.New("localfs: empty root directory")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("localfs: resolving root %q: %w", root, err)
	}
	for _, d := range []string{abs, filepath.Join(abs, objectsDir), filepath.Join(abs, tmpDir)} {
		if err := os.MkdirAll(d, dirPerm); err != nil {
			return nil, fmt.Errorf("localfs: creating %s: %w", d, err)
		}
	}
	return &Backend{root: abs}, nil
}

// Root is the backend's absolute root directory.
func (b *Backend) Root() string { return b.root }

// path is the final path of name, which the caller has validated.
func (b *Backend) path(name string) (dir, file string) {
	dir = filepath.Join(b.root, objectsDir, name[:2])
	return dir, filepath.Join(dir, name)
}

// Create starts the object name of exactly size bytes in a temporary file.
func (b *Backend) Create(ctx context.Context, name string, size int64) (storage.Writer, error) {
	if !storage.ValidName(name) {
		return nil, storage.ErrInvalidName
	}
	if size < 0 {
		return nil, fmt.Errorf("localfs: creating object: negative size %d", size)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, final := b.path(name)
	if _, err := os.Lstat(final); err == nil {
		return nil, storage.ErrExists
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("localfs: checking object: %w", err)
	}
	f, err := os.CreateTemp(filepath.Join(b.root, tmpDir), tmpPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("localfs: creating temporary file: %w", err)
	}
	return &writer{b: b, f: f, tmp: f.Name(), dir: dir, final: final, size: size}, nil
}

// writer streams one upload into its temporary file.
type writer struct {
	b          *Backend
	f          *os.File // nil once closed
	tmp        string
	dir, final string
	size, n    int64
	done       bool // committed or aborted
}

// Write appends p to the temporary file. Writing past the size given to
// Create fails with storage.ErrSize before anything beyond it reaches the
// disk.
func (w *writer) Write(p []byte) (int, error) {
	if w.done || w.f == nil {
		return 0, errors.New("localfs: write after commit or abort")
	}
	if int64(len(p)) > w.size-w.n {
		return 0, storage.ErrSize
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("localfs: writing temporary file: %w", err)
	}
	return n, nil
}

// Commit fsyncs the temporary file, links it to its final path (ErrExists
// when another writer committed the name first), removes the temporary
// name and fsyncs the final directory. On any failure nothing is left behind.
func (w *writer) Commit(ctx context.Context) error {
	if w.done {
		return errors.New("localfs: commit after commit or abort")
	}
	if err := w.commit(ctx); err != nil {
		_ = w.Abort()
		return err
	}
	w.done = true
	return nil
}

func (w *writer) commit(ctx context.Context) error {
	if w.n != w.size {
		return storage.ErrSize
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("localfs: syncing temporary file: %w", err)
	}
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return fmt.Errorf("localfs: closing temporary file: %w", err)
	}
	if err := w.b.mkdirFanout(w.dir); err != nil {
		return err
	}
	// A link, unlike a rename, never replaces an object: of two writers
	// of one name, one commits and the other gets ErrExists.
	if err := os.Link(w.tmp, w.final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return storage.ErrExists
		}
		return fmt.Errorf("localfs: linking into place: %w", err)
	}
	_ = os.Remove(w.tmp) // else the sweep removes it
	if err := syncDir(w.dir); err != nil {
		// The object may or may not survive a crash; take it back so
		// that an error always means "not stored".
		_ = os.Remove(w.final)
		return err
	}
	return nil
}

// Abort closes and removes the temporary file. It may be called more than
// once and after a failed Commit.
func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	if w.f != nil {
		_ = w.f.Close()
		w.f = nil
	}
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("localfs: removing temporary file: %w", err)
	}
	return nil
}

// mkdirFanout creates the fan-out directory dir when missing and fsyncs
// its parent, so that the directory entry survives a crash.
func (b *Backend) mkdirFanout(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	b.mkdirMu.Lock()
	defer b.mkdirMu.Unlock()
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.Mkdir(dir, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("localfs: creating %s: %w", dir, err)
	}
	return syncDir(filepath.Dir(dir))
}

// Open returns the committed object name.
func (b *Backend) Open(ctx context.Context, name string) (storage.Object, error) {
	if !storage.ValidName(name) {
		return nil, storage.ErrInvalidName
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	_, final := b.path(name)
	f, err := os.Open(final)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, storage.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("localfs: opening object: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("localfs: stat of object: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, storage.ErrNotFound
	}
	return &object{File: f, size: st.Size()}, nil
}

// object is an open committed file.
type object struct {
	*os.File
	size int64
}

// Size is the object's length in bytes.
func (o *object) Size() int64 { return o.size }

// Delete removes the committed object name; a missing one is not an error.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if !storage.ValidName(name) {
		return storage.ErrInvalidName
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, final := b.path(name)
	err := os.Remove(final)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("localfs: removing object: %w", err)
	}
	return syncDir(dir)
}

// Sweep removes temporary files last modified before olderThan: uploads
// whose process died before Commit or Abort. An upload still streaming
// keeps its file's modification time recent.
func (b *Backend) Sweep(ctx context.Context, olderThan time.Time) (int, error) {
	dir := filepath.Join(b.root, tmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("localfs: listing temporary files: %w", err)
	}
	removed := 0
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		if !strings.HasPrefix(e.Name(), tmpPrefix) || e.IsDir() {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // committed or aborted meanwhile
		}
		if err != nil {
			return removed, fmt.Errorf("localfs: stat of temporary file: %w", err)
		}
		if !info.ModTime().Before(olderThan) {
			continue
		}
		err = os.Remove(filepath.Join(dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("localfs: removing temporary file: %w", err)
		}
		removed++
	}
	return removed, nil
}

// syncDir fsyncs the directory dir.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("localfs: opening directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("localfs: syncing directory: %w", err)
	}
	return nil
}
