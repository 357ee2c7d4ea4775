// Package storage is the interface between the Delivery Service's
// attachment service and the place that keeps attachment ciphertexts: a
// directory under the data dir, an S3-compatible object store, or the
// provider's legacy backend. One package per backend implements it.
//
// Objects are named by the gateway, never by request data: a name is the
// hex encoding of random bytes the attachment service draws (ValidName).
// The store knows nothing of groups, tokens, quotas or membership; the
// attachment service keeps that metadata in the store package and calls a
// Backend only for bytes.
//
// The life of an upload:
//
//	w, err := b.Create(ctx, name, size) // nothing visible yet
//	_, err = io.Copy(w, body)           // streamed, hashed by the caller
//	err = w.Commit(ctx)                 // durable and visible, or an error
//	// on any failure before Commit: w.Abort() removes every byte written
//
// A name is created at most once. A Writer neither committed nor aborted
// (the process died) leaves temporary data that the backend's Sweep
// removes.
package storage

import (
	"context"
	"errors"
	"io"
	"time"
)

// Errors of a Backend.
var (
	// ErrNotFound reports a name with no committed object.
	ErrNotFound = errors.New("storage: no such object")
	// ErrExists reports Create of a name that is committed already, or
	// a Commit of a name that another writer committed since Create.
	ErrExists = errors.New("storage: object exists")
	// ErrSize reports a Writer given more or fewer bytes than the size
	// passed to Create.
	ErrSize = errors.New("storage: object size mismatch")
	// ErrInvalidName reports a name that ValidName refuses.
	ErrInvalidName = errors.New("storage: invalid object name")
	// ErrUncertain reports a Commit that ended without learning whether
	// the object was made visible: every byte went to the storage, whose
	// answer was lost or did not come in time, and which may still make
	// the object visible later. The caller keeps the name recorded until
	// a sweep long after that (it neither reuses the name nor forgets
	// it), so that late bytes are deleted then.
	ErrUncertain = errors.New("storage: commit outcome unknown")
)

// MaxNameSize bounds an object name.
const MaxNameSize = 128

// ValidName reports whether name is an object name: 32..MaxNameSize
// lowercase hex digits. Backends refuse any other name, so no request data
// can become a path or a key.
func ValidName(name string) bool {
	if len(name) < 32 || len(name) > MaxNameSize {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Backend keeps attachment ciphertexts. Implementations are safe for
// concurrent use.
type Backend interface {
	// Create starts the object name of exactly size bytes. Nothing is
	// visible under name until the Writer's Commit succeeds.
	//
	// size is the object's final length, known before its first byte
	// (the upload's header declares it): a backend may lay the object out
	// from it, e.g. send it as requests of exact lengths while it
	// arrives, and refuses any other number of bytes (ErrSize). ctx
	// bounds the Writer's Write calls too, which may send bytes on.
	Create(ctx context.Context, name string, size int64) (Writer, error)
	// Open returns the committed object name for reading, or ErrNotFound.
	Open(ctx context.Context, name string) (Object, error)
	// Delete removes the committed object name. Deleting a name that does
	// not exist is not an error, so a sweeper can repeat it.
	Delete(ctx context.Context, name string) error
	// Sweep removes temporary data of uploads that were neither committed
	// nor aborted and started before olderThan (a process that died
	// mid-upload), and returns how many it removed.
	Sweep(ctx context.Context, olderThan time.Time) (int, error)
}

// InUseFunc reports which of names are objects whose upload is still
// within its own deadline, or committed (store.Attachments.ObjectsInUse).
type InUseFunc func(ctx context.Context, names []string) (map[string]bool, error)

// UploadSweeper is a Backend whose temporary uploads are known by their
// object's name and age only (s3store: the server's multipart uploads),
// not by a recent write, so that Sweep alone would remove an upload
// still in progress that started before olderThan: one of another
// gateway with a longer upload deadline. SweepUnused is Sweep, but it
// leaves alone the uploads of the names inUse reports; an error of
// inUse fails the sweep, removing nothing it asked about.
type UploadSweeper interface {
	SweepUnused(ctx context.Context, olderThan time.Time, inUse InUseFunc) (int, error)
}

// Writer receives an object's bytes in order. Write calls and Commit or
// Abort come from one goroutine.
//
// A Write may pass its bytes on to the storage before it returns (and
// block meanwhile) instead of keeping them (s3store and forward stream
// them into a request), so a backend cannot send them again: a failed
// Write fails the upload, which the caller aborts; only the uploader, who
// still has the bytes, can try again.
type Writer interface {
	io.Writer
	// Commit makes the object durable and visible under its name. It
	// fails with ErrSize when the bytes written are not the size given
	// to Create, and then leaves nothing behind. An error wrapping
	// ErrUncertain means the object may still become visible. ctx bounds
	// the wait for the storage's answer: pass one that the client cannot
	// cancel once its last byte is in (context.WithoutCancel) and that
	// has a deadline.
	Commit(ctx context.Context) error
	// Abort discards everything written. It may be called after a failed
	// Commit and more than once.
	Abort() error
}

// Object is a committed object opened for reading. A download reads the
// whole or a range of it (HTTP range requests) without holding it in
// memory.
type Object interface {
	io.ReaderAt
	io.ReadSeeker
	io.Closer
	// Size is the object's length in bytes.
	Size() int64
}

// SeekTarget returns the offset an io.Seeker at cur, over content of size
// bytes, moves to for Seek(offset, whence): an error for an unknown
// whence or a negative result, as io.Seeker asks.
func SeekTarget(cur, size, offset int64, whence int) (int64, error) {
	var pos int64
	switch whence {
	case io.SeekStart:
		pos = offset
	case io.SeekCurrent:
		pos = cur + offset
	case io.SeekEnd:
		pos = size + offset
	default:
		return cur, errors.New("bad whence")
	}
	if pos < 0 {
		return cur, errors.New("negative offset")
	}
	return pos, nil
}
