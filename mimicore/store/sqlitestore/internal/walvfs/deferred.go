package walvfs

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// Deferred syncs.
//
// A log registered with DeferSyncs is synced by its owner, not inside
// SQLite's commit: its commit-time sync writes the buffered frames out
// (so the file holds them before SQLite publishes them in the WAL index,
// as always) and returns without syncing; the owner then calls
// Deferred.Sync, on a goroutine of its own, while the connection goes on
// with its next transaction, and answers nobody before that sync covers
// the commit. The file then stands as it would under
// synchronous=NORMAL, which SQLite keeps consistent through a power loss
// (it rebuilds the WAL index from the log's checksummed frames), until the
// owner's sync makes the commits durable.
//
// Three syncs are never deferred: the first sync of each open log (the
// unix VFS syncs the log's directory with it, once, after creating the
// file), a sync after the log's header was written (SQLite syncs a new
// header before the frames that follow a reset of the log, so that
// frames of an old and a new generation are never mixed after a power
// loss), and the sync of a log being closed with a deferred sync owed.
// Once a sync failed, every sync of the log fails (Deferred.Stop).

// deferredMu guards deferredLogs.
var (
	deferredMu   sync.Mutex
	deferredLogs = map[string]*Deferred{}
)

// Deferred is the deferred syncing of one write-ahead log (see
// DeferSyncs). Its methods are safe to call concurrently with the
// connection's use of the log.
type Deferred struct {
	path string

	// mu guards fd and opened: Sync holds it while it syncs, so that the
	// descriptor is not closed meanwhile. The connection's commits never
	// take it (owed and own are atomic), so that a commit does not wait
	// for a sync in progress.
	mu     sync.Mutex
	fd     int  // descriptor of the open log; -1 when it is not open
	opened bool // a connection opened the log since DeferSyncs

	owed atomic.Bool  // a sync was deferred since the last one began
	own  atomic.Int64 // syncs SQLite ran itself on the log (not deferred)
	// stopped is set once a sync failed (see Stop).
	stopped atomic.Bool
}

// DeferSyncs makes the commit-time syncs of the write-ahead log at walPath
// (the database path plus "-wal", as SQLite names it), when a connection
// of this VFS opens it, the caller's business: see Deferred.Sync. At most
// one Deferred per path; Release ends it. It must be called before the
// connection opens the log, and it is refused where the descriptor of a
// log cannot be known (outside unix).
func DeferSyncs(walPath string) (*Deferred, error) {
	if !haveFD {
		return nil, fmt.Errorf("walvfs: deferred syncs need a unix VFS")
	}
	deferredMu.Lock()
	defer deferredMu.Unlock()
	if _, ok := deferredLogs[walPath]; ok {
		return nil, fmt.Errorf("walvfs: syncs of %s are deferred already", walPath)
	}
	d := &Deferred{path: walPath, fd: -1}
	deferredLogs[walPath] = d
	return d, nil
}

// Release stops deferring the log's syncs for connections that open it
// from now on; a log open already keeps deferring them.
func (d *Deferred) Release() {
	deferredMu.Lock()
	if deferredLogs[d.path] == d {
		delete(deferredLogs, d.path)
	}
	deferredMu.Unlock()
}

// Sync makes every write to the log so far durable (fdatasync): every
// commit SQLite made on it before Sync was called. With the log not open,
// there is nothing to sync: a log is synced as it closes. A failed sync
// stops the log (see Stop), and every later Sync fails.
func (d *Deferred) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped.Load() {
		return fmt.Errorf("syncing %s: %w", d.path, errStopped)
	}
	if d.fd < 0 {
		return nil
	}
	// Cleared before the sync, which covers every write made before it;
	// a commit deferring its sync meanwhile sets it again.
	d.owed.Store(false)
	if err := fdatasync(d.fd); err != nil {
		d.owed.Store(true)
		d.stopped.Store(true)
		return fmt.Errorf("syncing %s: %w", d.path, err)
	}
	return nil
}

// errStopped fails the syncs of a stopped log.
var errStopped = errors.New("an earlier sync of the log failed")

// Stop fails every later sync of the log, Sync and SQLite's own alike,
// without syncing. After a failed sync the log's pages in memory are not
// known to be on disk (the kernel may have dropped what it could not
// write, or kept it while the disk holds older bytes), and a later sync
// that succeeds says nothing about them. Nothing may then be copied out
// of the log: a checkpoint, the one SQLite runs as the last connection
// closes included, syncs the log before it copies frames into the
// database file, and fails instead, so that the log stays on disk for the
// recovery of the next open, which keeps the frames whose checksums hold.
// Sync stops the log when it fails; the owner calls Stop when it gives up
// on the log for another reason.
func (d *Deferred) Stop() { d.stopped.Store(true) }

// Opened reports whether a connection of this VFS opened the log since
// DeferSyncs: whether its syncs are deferred at all.
func (d *Deferred) Opened() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.opened
}

// ownSyncs reports how many syncs of the log SQLite ran itself (for
// tests).
func (d *Deferred) ownSyncs() int { return int(d.own.Load()) }

// deferredFor returns the Deferred of a log being opened at path, and
// records its descriptor.
func deferredFor(path string, pFile uintptr) *Deferred {
	deferredMu.Lock()
	d := deferredLogs[path]
	deferredMu.Unlock()
	if d == nil {
		return nil
	}
	d.mu.Lock()
	d.fd = fileDescriptor(pFile)
	d.owed.Store(false)
	d.opened = true
	d.mu.Unlock()
	return d
}

// closing forgets the descriptor of a log about to close, so that Sync
// never syncs a descriptor after it is closed (and perhaps reused). It
// reports whether a deferred sync is owed, which the closing sync pays.
func (d *Deferred) closing() (owed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fd = -1
	return d.owed.Swap(false)
}

// deferSync reports whether the commit-time sync of f may be left to its
// owner, and records that it is owed.
func (f *logFile) deferSync() bool {
	if f.deferred == nil || !f.synced || f.header {
		return false
	}
	f.deferred.owed.Store(true)
	return true
}

// stopped reports whether f's syncs fail (see Deferred.Stop).
func (f *logFile) stopped() bool { return f.deferred != nil && f.deferred.stopped.Load() }

// syncNow runs the log's own sync (the unix VFS's) and records it. A
// failure stops a deferred log (Deferred.Stop): the kernel reports a
// failed write-back once per descriptor, so the owner's next Sync, on the
// same descriptor, would succeed without making the commits it owes
// durable.
func (f *logFile) syncNow(tls *libc.TLS, pFile uintptr, flags int32) int32 {
	rc := callFileInt(tls, f.orig.FxSync, pFile, flags)
	if rc != sqlite3.SQLITE_OK {
		if f.deferred != nil {
			f.deferred.Stop()
		}
		return rc
	}
	f.synced = true
	f.header = false
	if f.deferred != nil {
		f.deferred.own.Add(1)
	}
	return rc
}
