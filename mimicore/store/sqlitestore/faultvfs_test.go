package sqlitestore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// faultVFSName names a VFS that is SQLite's default one, except that the
// syncs of the files its connections open fail on demand (failSyncs): a
// failed fsync as the kernel reports it after a lost write-back, once.
const faultVFSName = "mimi-test-faults"

// Kinds of files whose syncs fail on demand.
const (
	faultDB  = 0 // a main database file
	faultWAL = 1 // a write-ahead log
)

var (
	faultOnce sync.Once
	faultErr  error

	// Everything SQLite is handed a pointer to is static Go memory, as
	// in walvfs: the VFS, its name, and the io-methods tables.
	faultVFS  sqlite3.Tsqlite3_vfs
	faultName [len(faultVFSName) + 1]byte
	faultBase uintptr // the default VFS

	// faultTables[kind] is the io-methods table of the files of a kind,
	// a copy of faultOrig[kind] whose xSync fails on demand.
	faultMu     sync.Mutex
	faultTables [2]sqlite3.Tsqlite3_io_methods
	faultOrig   [2]uintptr

	// failSyncs[kind] is how many of the next syncs of files of a kind
	// fail (with SQLITE_IOERR_FSYNC, without syncing); failedSyncs
	// counts those that did.
	failSyncs   [2]atomic.Int32
	failedSyncs [2]atomic.Int32
)

// registerFaultVFS registers the VFS named faultVFSName, once.
func registerFaultVFS(t *testing.T) {
	t.Helper()
	faultOnce.Do(func() {
		tls := libc.NewTLS()
		defer tls.Close()
		faultBase = sqlite3.Xsqlite3_vfs_find(tls, 0)
		if faultBase == 0 {
			faultErr = fmt.Errorf("no default VFS")
			return
		}
		faultVFS = *(*sqlite3.Tsqlite3_vfs)(cptr(faultBase))
		faultVFS.FpNext = 0
		copy(faultName[:], faultVFSName)
		faultVFS.FzName = uintptr(unsafe.Pointer(&faultName[0]))
		*(*func(*libc.TLS, uintptr, uintptr, uintptr, int32, uintptr) int32)(unsafe.Pointer(&faultVFS.FxOpen)) = faultOpen
		if rc := sqlite3.Xsqlite3_vfs_register(tls, uintptr(unsafe.Pointer(&faultVFS)), 0); rc != sqlite3.SQLITE_OK {
			faultErr = fmt.Errorf("registering the VFS: SQLite error %d", rc)
		}
	})
	if faultErr != nil {
		t.Fatal(faultErr)
	}
}

// cptr converts an address of C memory or static Go memory to a pointer.
func cptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// faultOpen opens a file with the default VFS and gives a database file
// or a log the table of its kind.
func faultOpen(tls *libc.TLS, _ uintptr, zName, pFile uintptr, flags int32, pOutFlags uintptr) int32 {
	b := (*sqlite3.Tsqlite3_vfs)(cptr(faultBase))
	fp := b.FxOpen
	rc := (*(*func(*libc.TLS, uintptr, uintptr, uintptr, int32, uintptr) int32)(unsafe.Pointer(&fp)))(tls, faultBase, zName, pFile, flags, pOutFlags)
	if rc != sqlite3.SQLITE_OK {
		return rc
	}
	kind := -1
	switch {
	case flags&sqlite3.SQLITE_OPEN_MAIN_DB != 0:
		kind = faultDB
	case flags&sqlite3.SQLITE_OPEN_WAL != 0:
		kind = faultWAL
	}
	f := (*sqlite3.Tsqlite3_file)(cptr(pFile))
	if kind < 0 || f.FpMethods == 0 {
		return rc
	}
	faultMu.Lock()
	defer faultMu.Unlock()
	if faultOrig[kind] == 0 {
		faultOrig[kind] = f.FpMethods
		faultTables[kind] = *(*sqlite3.Tsqlite3_io_methods)(cptr(f.FpMethods))
		sync := faultSyncDB
		if kind == faultWAL {
			sync = faultSyncWAL
		}
		*(*func(*libc.TLS, uintptr, int32) int32)(unsafe.Pointer(&faultTables[kind].FxSync)) = sync
	}
	if faultOrig[kind] != f.FpMethods {
		panic(fmt.Sprintf("fault VFS: files of kind %d have two io-methods tables", kind))
	}
	f.FpMethods = uintptr(unsafe.Pointer(&faultTables[kind]))
	return rc
}

func faultSyncDB(tls *libc.TLS, pFile uintptr, flags int32) int32 {
	return faultSync(faultDB, tls, pFile, flags)
}

func faultSyncWAL(tls *libc.TLS, pFile uintptr, flags int32) int32 {
	return faultSync(faultWAL, tls, pFile, flags)
}

// faultSync fails when a failure of its kind is due, and syncs otherwise.
func faultSync(kind int, tls *libc.TLS, pFile uintptr, flags int32) int32 {
	for n := failSyncs[kind].Load(); n > 0; n = failSyncs[kind].Load() {
		if failSyncs[kind].CompareAndSwap(n, n-1) {
			failedSyncs[kind].Add(1)
			return sqlite3.SQLITE_IOERR_FSYNC
		}
	}
	fp := (*sqlite3.Tsqlite3_io_methods)(cptr(faultOrig[kind])).FxSync
	return (*(*func(*libc.TLS, uintptr, int32) int32)(unsafe.Pointer(&fp)))(tls, pFile, flags)
}
