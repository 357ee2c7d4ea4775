// Package walvfs registers an SQLite VFS for modernc.org/sqlite that is
// the default ("unix") VFS in every respect but one: the writes of a
// connection to its write-ahead log are gathered in memory and reach the
// file in one pwrite, instead of two system calls per frame (a 24-byte
// frame header, then the page).
//
// SQLite writes a transaction's frames one after another at increasing
// offsets, then syncs the log (synchronous=FULL) before it publishes the
// frames to readers in the WAL index. The buffer is written out before
// anything else touches the log file through this connection: a read, a
// sync, a truncation, a size query, a file control, a close, or a write
// that does not continue or overwrite the buffered range. So the file
// holds exactly what SQLite wrote whenever SQLite could observe it, every
// sync covers every write before it, and a crash loses only writes that
// no sync had covered, which SQLite never counted on. A failed write-out
// fails the call that caused it (a sync fails the commit) and keeps what
// it could not write for the next one.
//
// Other connections of the process read committed frames only, which a
// sync wrote out first. That holds when the connection syncs its log at
// every commit: open it with synchronous=FULL (or EXTRA). With
// synchronous=NORMAL a commit publishes frames without a sync, and other
// connections could read them before they reach the file.
//
// A log's owner may also take its commit-time syncs upon itself
// (DeferSyncs, deferred.go): the commit still writes its frames out at its
// sync, but the fdatasync runs later, on the owner's goroutine, overlapping
// the connection's next transaction.
package walvfs

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// Name is the name the VFS is registered under: open a connection with
// the DSN parameter vfs=Name (after Register).
const Name = "mimi-walbuf"

// maxBuffer is the most a log's buffer holds before it is written out:
// a commit of a couple of hundred pages is written out when it syncs, a
// larger one in steps of this size. A single write this large goes
// straight to the file.
const maxBuffer = 1 << 20

// keepBuffer bounds the memory a log keeps between commits: a write-out
// of more than this frees the buffer, giving back the pages a large
// commit touched; the next write allocates it again.
const keepBuffer = 512 << 10

var (
	registerOnce sync.Once
	registerErr  error

	// vfs is the registered sqlite3_vfs: a copy of the default VFS with
	// xOpen replaced. Like everything SQLite is handed a pointer to, it
	// is static Go memory (or C memory), never Go heap: the heap is not
	// C's to hold (and -race's checkptr refuses it).
	vfs  sqlite3.Tsqlite3_vfs
	name [len(Name) + 1]byte
	// base is the default VFS that vfs wraps.
	base uintptr

	// tables are the io-methods tables of logs: each one the original
	// table of a log (the unix VFS chooses among a few per file) with the
	// methods that touch the file's content replaced. A log whose
	// original table is not among them once they are all taken is left
	// unbuffered.
	tablesMu sync.Mutex
	tables   [4]wrapped
	nTables  int

	// files maps an open log's sqlite3_file to its state.
	filesMu sync.Mutex
	files   = map[uintptr]*logFile{}
)

// wrapped is the io-methods table of the logs whose original table is
// orig.
type wrapped struct {
	table sqlite3.Tsqlite3_io_methods
	orig  uintptr
}

// logFile is one open write-ahead log and the writes it holds: n bytes
// at mem (C memory of maxBuffer bytes, allocated at the first write),
// from file offset off.
type logFile struct {
	orig *sqlite3.Tsqlite3_io_methods
	mem  uintptr
	n    int
	off  int64

	// deferred is set when the log's owner syncs it (see DeferSyncs);
	// synced records that the log was synced since it opened, and header
	// that its header was written since its last sync.
	deferred *Deferred
	synced   bool
	header   bool
}

// buf is the buffered writes.
func (f *logFile) buf() []byte { return unsafe.Slice((*byte)(ptr(f.mem)), f.n) }

// Stats counts the VFS's work since the process started.
type Stats struct {
	Writes   uint64 // writes SQLite made to logs
	WriteOut uint64 // writes to the log files (each one pwrite or more)
	Deferred uint64 // commit-time syncs left to the logs' owners (DeferSyncs)
}

var writes, writeOuts, deferredSyncs atomic.Uint64

// ReadStats returns the counters.
func ReadStats() Stats {
	return Stats{Writes: writes.Load(), WriteOut: writeOuts.Load(), Deferred: deferredSyncs.Load()}
}

// Register registers the VFS with SQLite, once; it is not made the
// default.
func Register() error {
	registerOnce.Do(func() { registerErr = register() })
	return registerErr
}

func register() error {
	tls := libc.NewTLS()
	defer tls.Close()
	base = sqlite3.Xsqlite3_vfs_find(tls, 0)
	if base == 0 {
		return fmt.Errorf("walvfs: SQLite has no default VFS")
	}
	vfs = *(*sqlite3.Tsqlite3_vfs)(ptr(base))
	vfs.FpNext = 0
	copy(name[:], Name)
	vfs.FzName = uintptr(unsafe.Pointer(&name[0]))
	*(*func(*libc.TLS, uintptr, uintptr, uintptr, int32, uintptr) int32)(unsafe.Pointer(&vfs.FxOpen)) = xOpen
	if rc := sqlite3.Xsqlite3_vfs_register(tls, uintptr(unsafe.Pointer(&vfs)), 0); rc != sqlite3.SQLITE_OK {
		return fmt.Errorf("walvfs: registering the VFS: SQLite error %d", rc)
	}
	return nil
}

// ptr converts an address SQLite handed over (memory of modernc's C
// allocator, outside Go's heap, or static Go memory) to a pointer.
func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// call helpers: a C function pointer of the io-methods table, called.

func callOpen(tls *libc.TLS, fp, pVfs, zName, pFile uintptr, flags int32, pOutFlags uintptr) int32 {
	return (*(*func(*libc.TLS, uintptr, uintptr, uintptr, int32, uintptr) int32)(unsafe.Pointer(&fp)))(tls, pVfs, zName, pFile, flags, pOutFlags)
}

func callWrite(tls *libc.TLS, fp, pFile, zBuf uintptr, iAmt int32, iOfst int64) int32 {
	return (*(*func(*libc.TLS, uintptr, uintptr, int32, int64) int32)(unsafe.Pointer(&fp)))(tls, pFile, zBuf, iAmt, iOfst)
}

func callFile(tls *libc.TLS, fp, pFile uintptr) int32 {
	return (*(*func(*libc.TLS, uintptr) int32)(unsafe.Pointer(&fp)))(tls, pFile)
}

func callFileInt(tls *libc.TLS, fp, pFile uintptr, n int32) int32 {
	return (*(*func(*libc.TLS, uintptr, int32) int32)(unsafe.Pointer(&fp)))(tls, pFile, n)
}

func callFileInt64(tls *libc.TLS, fp, pFile uintptr, n int64) int32 {
	return (*(*func(*libc.TLS, uintptr, int64) int32)(unsafe.Pointer(&fp)))(tls, pFile, n)
}

func callFilePtr(tls *libc.TLS, fp, pFile, p uintptr) int32 {
	return (*(*func(*libc.TLS, uintptr, uintptr) int32)(unsafe.Pointer(&fp)))(tls, pFile, p)
}

func callFileIntPtr(tls *libc.TLS, fp, pFile uintptr, n int32, p uintptr) int32 {
	return (*(*func(*libc.TLS, uintptr, int32, uintptr) int32)(unsafe.Pointer(&fp)))(tls, pFile, n, p)
}

func callRead(tls *libc.TLS, fp, pFile, zBuf uintptr, iAmt int32, iOfst int64) int32 {
	return callWrite(tls, fp, pFile, zBuf, iAmt, iOfst) // same signature
}

// xOpen opens a file with the default VFS, and gives a write-ahead log
// the wrapping methods.
func xOpen(tls *libc.TLS, _ uintptr, zName, pFile uintptr, flags int32, pOutFlags uintptr) int32 {
	b := (*sqlite3.Tsqlite3_vfs)(ptr(base))
	rc := callOpen(tls, b.FxOpen, base, zName, pFile, flags, pOutFlags)
	if rc != sqlite3.SQLITE_OK || flags&sqlite3.SQLITE_OPEN_WAL == 0 {
		return rc
	}
	f := (*sqlite3.Tsqlite3_file)(ptr(pFile))
	if f.FpMethods == 0 {
		return rc
	}
	w := wrap(f.FpMethods)
	if w == nil {
		return rc
	}
	lf := &logFile{orig: (*sqlite3.Tsqlite3_io_methods)(ptr(w.orig))}
	if zName != 0 {
		lf.deferred = deferredFor(libc.GoString(zName), pFile)
	}
	filesMu.Lock()
	files[pFile] = lf
	filesMu.Unlock()
	f.FpMethods = uintptr(unsafe.Pointer(&w.table))
	return rc
}

// wrap returns the wrapping table of the original table orig, or nil
// when every table is taken.
func wrap(orig uintptr) *wrapped {
	tablesMu.Lock()
	defer tablesMu.Unlock()
	for i := range nTables {
		if tables[i].orig == orig {
			return &tables[i]
		}
	}
	if nTables == len(tables) {
		return nil
	}
	w := &tables[nTables]
	nTables++
	w.orig = orig
	w.table = *(*sqlite3.Tsqlite3_io_methods)(ptr(orig))
	t := &w.table
	*(*func(*libc.TLS, uintptr) int32)(unsafe.Pointer(&t.FxClose)) = xClose
	*(*func(*libc.TLS, uintptr, uintptr, int32, int64) int32)(unsafe.Pointer(&t.FxRead)) = xRead
	*(*func(*libc.TLS, uintptr, uintptr, int32, int64) int32)(unsafe.Pointer(&t.FxWrite)) = xWrite
	*(*func(*libc.TLS, uintptr, int64) int32)(unsafe.Pointer(&t.FxTruncate)) = xTruncate
	*(*func(*libc.TLS, uintptr, int32) int32)(unsafe.Pointer(&t.FxSync)) = xSync
	*(*func(*libc.TLS, uintptr, uintptr) int32)(unsafe.Pointer(&t.FxFileSize)) = xFileSize
	*(*func(*libc.TLS, uintptr, int32, uintptr) int32)(unsafe.Pointer(&t.FxFileControl)) = xFileControl
	return w
}

// fileOf returns the state of the open log pFile.
func fileOf(pFile uintptr) *logFile {
	filesMu.Lock()
	f := files[pFile]
	filesMu.Unlock()
	if f == nil {
		panic(fmt.Sprintf("walvfs: unknown log file %#x", pFile))
	}
	return f
}

// maxWrite is the most the unix VFS writes in one call: it masks a
// write's length with 0x1ffff (seekAndWriteFd), so a longer one goes out
// in pieces of this size.
const maxWrite = 0x1ffff

// writeOut writes f's buffer to the file and empties it. If a write
// fails, what was not written stays buffered, to go out with the next
// write-out: every write this VFS acknowledged is in the file or in the
// buffer, in the order SQLite made them.
func (f *logFile) writeOut(tls *libc.TLS, pFile uintptr) int32 {
	done := 0
	for done < f.n {
		n := min(f.n-done, maxWrite)
		writeOuts.Add(1)
		if rc := callWrite(tls, f.orig.FxWrite, pFile, f.mem+uintptr(done), int32(n), f.off+int64(done)); rc != sqlite3.SQLITE_OK {
			b := f.buf()
			f.n = copy(b, b[done:])
			f.off += int64(done)
			return rc
		}
		done += n
	}
	if f.n > keepBuffer {
		// A large commit touched most of the buffer: give its pages back.
		f.free(tls)
	}
	f.n = 0
	return sqlite3.SQLITE_OK
}

// free frees f's buffer, giving its pages back (decommit).
func (f *logFile) free(tls *libc.TLS) {
	if f.mem != 0 {
		decommit(f.mem, maxBuffer)
		libc.Xfree(tls, f.mem)
		f.mem = 0
	}
}

func xWrite(tls *libc.TLS, pFile, zBuf uintptr, iAmt int32, iOfst int64) int32 {
	writes.Add(1)
	f := fileOf(pFile)
	if iOfst == 0 {
		f.header = true
	}
	data := unsafe.Slice((*byte)(ptr(zBuf)), int(iAmt))
	if f.n > 0 {
		end := f.off + int64(f.n)
		switch {
		case iOfst == end && f.n+len(data) <= maxBuffer:
			copy(unsafe.Slice((*byte)(ptr(f.mem)), maxBuffer)[f.n:], data)
			f.n += len(data)
			return sqlite3.SQLITE_OK
		case iOfst >= f.off && iOfst+int64(len(data)) <= end:
			copy(f.buf()[iOfst-f.off:], data)
			return sqlite3.SQLITE_OK
		}
		if rc := f.writeOut(tls, pFile); rc != sqlite3.SQLITE_OK {
			return rc
		}
	}
	if len(data) >= maxBuffer/2 {
		// SQLite's own writes are a frame header or a page.
		writeOuts.Add(1)
		return callWrite(tls, f.orig.FxWrite, pFile, zBuf, iAmt, iOfst)
	}
	if f.mem == 0 {
		if f.mem = libc.Xmalloc(tls, maxBuffer); f.mem == 0 {
			writeOuts.Add(1)
			return callWrite(tls, f.orig.FxWrite, pFile, zBuf, iAmt, iOfst)
		}
	}
	f.off = iOfst
	f.n = copy(unsafe.Slice((*byte)(ptr(f.mem)), maxBuffer), data)
	return sqlite3.SQLITE_OK
}

func xRead(tls *libc.TLS, pFile, zBuf uintptr, iAmt int32, iOfst int64) int32 {
	f := fileOf(pFile)
	if rc := f.writeOut(tls, pFile); rc != sqlite3.SQLITE_OK {
		return rc
	}
	return callRead(tls, f.orig.FxRead, pFile, zBuf, iAmt, iOfst)
}

func xSync(tls *libc.TLS, pFile uintptr, flags int32) int32 {
	f := fileOf(pFile)
	if f.stopped() {
		return sqlite3.SQLITE_IOERR_FSYNC
	}
	if rc := f.writeOut(tls, pFile); rc != sqlite3.SQLITE_OK {
		return rc
	}
	if f.deferSync() {
		deferredSyncs.Add(1)
		return sqlite3.SQLITE_OK
	}
	return f.syncNow(tls, pFile, flags)
}

func xTruncate(tls *libc.TLS, pFile uintptr, size int64) int32 {
	f := fileOf(pFile)
	if rc := f.writeOut(tls, pFile); rc != sqlite3.SQLITE_OK {
		return rc
	}
	return callFileInt64(tls, f.orig.FxTruncate, pFile, size)
}

func xFileSize(tls *libc.TLS, pFile, pSize uintptr) int32 {
	f := fileOf(pFile)
	if rc := f.writeOut(tls, pFile); rc != sqlite3.SQLITE_OK {
		return rc
	}
	return callFilePtr(tls, f.orig.FxFileSize, pFile, pSize)
}

func xFileControl(tls *libc.TLS, pFile uintptr, op int32, pArg uintptr) int32 {
	f := fileOf(pFile)
	if rc := f.writeOut(tls, pFile); rc != sqlite3.SQLITE_OK {
		return rc
	}
	return callFileIntPtr(tls, f.orig.FxFileControl, pFile, op, pArg)
}

func xClose(tls *libc.TLS, pFile uintptr) int32 {
	f := fileOf(pFile)
	rc := f.writeOut(tls, pFile)
	if f.deferred != nil && f.deferred.closing() && rc == sqlite3.SQLITE_OK && !f.stopped() {
		rc = f.syncNow(tls, pFile, sqlite3.SQLITE_SYNC_NORMAL)
	}
	f.free(tls)
	filesMu.Lock()
	delete(files, pFile)
	filesMu.Unlock()
	if crc := callFile(tls, f.orig.FxClose, pFile); rc == sqlite3.SQLITE_OK {
		rc = crc
	}
	return rc
}
