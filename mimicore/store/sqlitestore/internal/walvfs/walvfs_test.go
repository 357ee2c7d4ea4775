package walvfs

import (
	"bytes"
	"database/sql"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"unsafe"

	"modernc.org/libc"
	_ "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// open opens path through the VFS (buffered) or the default VFS, in WAL
// mode with synchronous=FULL.
func open(t *testing.T, path string, buffered bool) *sql.DB {
	t.Helper()
	if err := Register(); err != nil {
		t.Fatal(err)
	}
	q := url.Values{"_pragma": {"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(FULL)", "wal_autocheckpoint(0)"}}
	if buffered {
		q.Set("vfs", Name)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// row is the content of row i: a page and a half, so that rows span
// overflow pages and a transaction writes many frames.
func row(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("row %08d|", i)), 500) }

// TestOneWritePerCommit checks that a transaction's frames reach the log
// in one write-out per maxWrite bytes, not two writes per frame, and that
// another connection, on the default VFS, reads exactly what was
// committed.
func TestOneWritePerCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	w := open(t, path, true)
	if _, err := w.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	const rows = 40 // about 60 pages
	before := ReadStats()
	tx, err := w.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := range rows {
		if _, err := tx.Exec("INSERT INTO t (id, b) VALUES (?, ?)", i, row(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	st := ReadStats()
	writes, outs := st.Writes-before.Writes, st.WriteOut-before.WriteOut
	bytesOut := int(writes/2) * (24 + 4096) // frames of header and page
	if writes < 2*rows || outs > uint64(bytesOut/maxWrite+1) {
		t.Fatalf("%d writes of SQLite went out in %d writes; want about %d", writes, outs, bytesOut/maxWrite+1)
	}

	r := open(t, path, false)
	var n int
	if err := r.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != rows {
		t.Fatalf("the reader counts %d rows (%v), want %d", n, err, rows)
	}
	for i := range rows {
		var b []byte
		if err := r.QueryRow("SELECT b FROM t WHERE id = ?", i).Scan(&b); err != nil || !bytes.Equal(b, row(i)) {
			t.Fatalf("row %d read back wrong: %v", i, err)
		}
	}
	var ok string
	if err := r.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("integrity_check: %q %v", ok, err)
	}
}

// TestReadersDuringWrites runs a buffered writer that commits row after
// row, updates rows (frames rewritten in their transaction) and
// checkpoints, beside readers on the default VFS that must see every
// committed row intact at each point, and checks the file afterwards.
func TestReadersDuringWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	w := open(t, path, true)
	w.SetMaxOpenConns(1)
	if _, err := w.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	r := open(t, path, false)
	const total = 300
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := 0
			for {
				select {
				case <-done:
					return
				default:
				}
				var n int
				var maxID sql.NullInt64
				if err := r.QueryRow("SELECT count(*), max(id) FROM t").Scan(&n, &maxID); err != nil {
					t.Error(err)
					return
				}
				if n < last || (n > 0 && int(maxID.Int64) != n-1) {
					t.Errorf("a reader saw %d rows up to id %d after %d", n, maxID.Int64, last)
					return
				}
				last = n
				if n > 0 {
					var b []byte
					if err := r.QueryRow("SELECT b FROM t WHERE id = ?", n-1).Scan(&b); err != nil || !bytes.Equal(b, row(n-1)) {
						t.Errorf("row %d read wrong: %v", n-1, err)
						return
					}
				}
			}
		}()
	}
	for i := range total {
		tx, err := w.Begin()
		if err != nil {
			t.Fatal(err)
		}
		// A row written, overwritten and written again in one
		// transaction rewrites its pages' frames in the log.
		if _, err := tx.Exec("INSERT INTO t (id, b) VALUES (?, ?)", i, row(i+1)); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec("UPDATE t SET b = ? WHERE id = ?", row(i), i); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if i%50 == 49 {
			if _, err := w.Exec("PRAGMA wal_checkpoint(RESTART)"); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
	w.Close()
	var ok string
	if err := r.QueryRow("PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("integrity_check: %q %v", ok, err)
	}
	var n int
	if err := r.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != total {
		t.Fatalf("%d rows (%v), want %d", n, err, total)
	}
}

// failing is an io-methods table whose writes fail and whose syncs are
// counted, to check that a failed write-out fails the call that caused
// it.
var (
	failing    sqlite3.Tsqlite3_io_methods
	failWrites bool
	written    []byte // what reached the "file", at offset 32
	syncs      int
)

func failingWrite(_ *libc.TLS, _, zBuf uintptr, iAmt int32, iOfst int64) int32 {
	if failWrites {
		return sqlite3.SQLITE_IOERR_WRITE
	}
	if int(iOfst) != 32+len(written) {
		return sqlite3.SQLITE_IOERR_WRITE
	}
	written = append(written, unsafe.Slice((*byte)(ptr(zBuf)), int(iAmt))...)
	return sqlite3.SQLITE_OK
}

func countingSync(*libc.TLS, uintptr, int32) int32 {
	syncs++
	return sqlite3.SQLITE_OK
}

func TestWriteOutFailure(t *testing.T) {
	// The fake file starts empty at every run (go test -count=N).
	failWrites, written, syncs = false, nil, 0
	*(*func(*libc.TLS, uintptr, uintptr, int32, int64) int32)(unsafe.Pointer(&failing.FxWrite)) = failingWrite
	*(*func(*libc.TLS, uintptr, int32) int32)(unsafe.Pointer(&failing.FxSync)) = countingSync
	var file sqlite3.Tsqlite3_file // stands for an open log; never dereferenced by the methods tested
	pFile := uintptr(unsafe.Pointer(&file))
	f := &logFile{orig: &failing}
	filesMu.Lock()
	files[pFile] = f
	filesMu.Unlock()
	tls := libc.NewTLS()
	defer tls.Close()
	defer func() {
		f.free(tls)
		filesMu.Lock()
		delete(files, pFile)
		filesMu.Unlock()
	}()
	var want []byte
	for i := range 40 { // past maxWrite, so that a write-out takes two writes
		frame := bytes.Repeat([]byte{byte(i)}, 4120)
		want = append(want, frame...)
		if rc := xWrite(tls, pFile, uintptr(unsafe.Pointer(&frame[0])), int32(len(frame)), int64(32+i*len(frame))); rc != sqlite3.SQLITE_OK {
			t.Fatalf("buffered write %d: rc %d", i, rc)
		}
	}
	if len(written) != 0 {
		t.Fatalf("%d bytes reached the file before a sync", len(written))
	}
	failWrites = true
	for i := range 2 {
		if rc := xSync(tls, pFile, 0); rc != sqlite3.SQLITE_IOERR_WRITE || syncs != 0 {
			t.Fatalf("sync %d with failing writes: rc %d, %d syncs; want the write's error and no sync", i, rc, syncs)
		}
	}
	// The writes that failed were kept: they go out, in order, with the
	// next sync.
	failWrites = false
	if rc := xSync(tls, pFile, 0); rc != sqlite3.SQLITE_OK || syncs != 1 || !bytes.Equal(written, want) {
		t.Fatalf("sync after the failures: rc %d, %d syncs, %d of %d bytes written in order: %v", rc, syncs,
			len(written), len(want), bytes.Equal(written, want))
	}
}

// TestDeferredSyncs checks DeferSyncs: after the log's first sync, the
// commit-time syncs are left to the owner (their frames still reach the
// file, for readers on the default VFS), the sync after a new header is
// SQLite's own, a log closing with a sync owed syncs, and a path is
// deferred once at a time.
func TestDeferredSyncs(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "x.db")
	d, err := DeferSyncs(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Release()
	if _, err := DeferSyncs(path + "-wal"); err == nil {
		t.Fatal("a second DeferSyncs of one log succeeded")
	}
	w := open(t, path, true)
	if _, err := w.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	if !d.Opened() {
		t.Fatal("the log was opened under another name")
	}
	own, deferred := d.ownSyncs(), ReadStats().Deferred
	const commits = 10
	for i := range commits {
		if _, err := w.Exec("INSERT INTO t (id, b) VALUES (?, ?)", i, row(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := ReadStats().Deferred - deferred; got != commits {
		t.Errorf("deferred syncs: %d, want %d", got, commits)
	}
	if got := d.ownSyncs() - own; got != 0 {
		t.Errorf("SQLite synced the log %d times itself, want 0", got)
	}
	r := open(t, path, false)
	var n int
	if err := r.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil || n != commits {
		t.Fatalf("a default-VFS reader sees %d rows (%v), want %d", n, err, commits)
	}
	if err := d.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}

	// A checkpoint that empties the log: the next commit writes a new
	// header, which SQLite syncs itself before the frames.
	if _, err := r.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		t.Fatal(err)
	}
	own, deferred = d.ownSyncs(), ReadStats().Deferred
	if _, err := w.Exec("INSERT INTO t (id, b) VALUES (?, ?)", commits, row(commits)); err != nil {
		t.Fatal(err)
	}
	if got := d.ownSyncs() - own; got != 1 {
		t.Errorf("syncs of SQLite's own after the log's reset: %d, want 1 (the header)", got)
	}
	if got := ReadStats().Deferred - deferred; got != 1 {
		t.Errorf("deferred syncs after the log's reset: %d, want 1 (the commit)", got)
	}

	// Closing with a sync owed: the close syncs.
	own = d.ownSyncs()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := d.ownSyncs() - own; got != 1 {
		t.Errorf("syncs at close with a sync owed: %d, want 1", got)
	}
	if err := d.Sync(); err != nil {
		t.Errorf("Sync of a closed log: %v, want nil", err)
	}
	d.Release()
	d2, err := DeferSyncs(path + "-wal")
	if err != nil {
		t.Fatalf("DeferSyncs after Release: %v", err)
	}
	d2.Release()
}

func failingSync(*libc.TLS, uintptr, int32) int32 {
	syncs++
	return sqlite3.SQLITE_IOERR_FSYNC
}

// TestOwnSyncFailureStops checks that when a sync SQLite runs itself on a
// deferred log fails (its first one, a new header's, or a close's), the
// owner's later syncs fail too: the kernel reports a failed write-back
// once per descriptor, so the owner's fdatasync, on the same descriptor,
// would succeed without the commits it owes reaching the disk.
func TestOwnSyncFailureStops(t *testing.T) {
	var table sqlite3.Tsqlite3_io_methods
	*(*func(*libc.TLS, uintptr, int32) int32)(unsafe.Pointer(&table.FxSync)) = failingSync
	syncs = 0
	var file sqlite3.Tsqlite3_file // stands for an open log; never dereferenced by the methods tested
	pFile := uintptr(unsafe.Pointer(&file))
	// A log whose descriptor is closed already: the owner's Sync would
	// have nothing to sync, as a descriptor whose error was reported.
	d := &Deferred{path: "test-wal", fd: -1}
	f := &logFile{orig: &table, deferred: d}
	filesMu.Lock()
	files[pFile] = f
	filesMu.Unlock()
	defer func() {
		filesMu.Lock()
		delete(files, pFile)
		filesMu.Unlock()
	}()
	tls := libc.NewTLS()
	defer tls.Close()

	if rc := xSync(tls, pFile, sqlite3.SQLITE_SYNC_NORMAL); rc != sqlite3.SQLITE_IOERR_FSYNC || syncs != 1 {
		t.Fatalf("SQLite's own sync: rc %d, %d syncs; want the failure", rc, syncs)
	}
	if err := d.Sync(); err == nil {
		t.Fatal("the owner's Sync succeeded after a failed sync of the log")
	}
	if rc := xSync(tls, pFile, sqlite3.SQLITE_SYNC_NORMAL); rc != sqlite3.SQLITE_IOERR_FSYNC || syncs != 1 {
		t.Fatalf("a later sync: rc %d, %d syncs; want it failed without syncing", rc, syncs)
	}
}
