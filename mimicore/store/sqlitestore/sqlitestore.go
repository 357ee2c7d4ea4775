// Package sqlitestore is the embedded store.Store: one SQLite file under the
// gateway's data_dir, through the pure-Go modernc.org/sqlite driver.
//
// Durability: the database runs in WAL mode, and every write is in the
// fsynced WAL before the method returns; an acknowledged write survives
// kill -9 and power loss. The fsync of a batch runs on a goroutine of its
// own while the writer runs the next batch, and nothing is answered, by
// the writer or by a lookup, from a commit before its fsync (durable.go,
// gate.go). Lookups use a small pool of read-only connections, which WAL
// lets run beside the writer. A failed fsync, of the log by the syncer or
// of the log or the database file by a checkpoint, stops the store: it
// takes no writes until it is opened again, copies nothing more out of
// the log, and leaves the log to the next Open's recovery (durable.go).
//
// # Group commit
//
// Every write method (Reserve, Complete, Release, SeenSignature, MarkSpent,
// the signing-key and peer-key writes, the group writes,
// PublishKeyPackages, ClaimKeyPackage, Append (whatever its number of
// recipients), Ack, and each bounded DELETE of DeleteExpired) is an
// operation queued to one writer goroutine, the only
// user of the one writer connection. When the writer becomes free it takes
// every operation queued meanwhile, oldest first and at most the batch
// size (DefaultMaxBatch, see WithMaxBatch), and runs them in one
// transaction: BEGIN IMMEDIATE (which also serialises against another
// process on the same file), the operations one after the other, then one
// COMMIT and so one fsync for the whole batch. Operations rarely fail, so
// the batch first runs without savepoints; if one fails, that transaction
// is rolled back unanswered and the batch runs again with each operation
// inside its own SAVEPOINT (an operation is a function of its transaction:
// only the committed run counts). A lone write does not wait: under light
// load a batch holds one write. Under concurrent writes (the previous
// batch held more than one) the writer lingers up to 500 us for more, or
// until 16 are queued (WithLinger), so that a commit and its fsync carry
// more writes. While a batch is being fsynced, the writer begins the next
// one only once 32 writes (twice the linger's) are queued, or when the
// fsync ends: its answers could not precede the next fsync anyway.
//
//   - A caller is answered only after the COMMIT that holds its write
//     and the fsync that covers that COMMIT.
//   - An operation that fails (Complete of an unknown entry, a constraint)
//     is rolled back to its savepoint and fails alone with its own error
//     (store.ErrNotFound and store.ErrConflict unchanged); the others
//     commit. If the transaction itself breaks under an operation (SQLite
//     rolls back a whole transaction on some errors), that operation gets
//     the error and the others run again in a new transaction.
//   - A failed BEGIN or COMMIT fails every operation of the batch with a
//     wrapped error; the writer then goes on with the next batch.
//   - A caller whose ctx ends while its operation is queued gets ctx.Err()
//     at once and the operation never runs: for this backend, an error
//     that wraps context.Canceled or context.DeadlineExceeded means the
//     write did not happen. Once the operation has started, the call waits
//     for the outcome of its transaction (at most one batch) and returns
//     it, nil included. Statements never see the caller's ctx, because
//     interrupting a statement inside a transaction can roll back the
//     whole batch.
//   - Close answers every operation still queued with store.ErrClosed
//     (none of them ran) and waits for the batch in progress, whose
//     callers get their outcome.
//
// Within an optimistic batch the Appends are written together, one
// multi-row statement per table (see appendbatch.go): the same rows and
// answers, fewer statements. WAL checkpoints run on a connection of their
// own beside the writer, never inside a commit (see checkpoint.go), and
// the tables every hot write inserts into carry no expiry index: their
// expired rows are found by scans on a read connection (see
// scansweep.go). The writer connection opens the file through walvfs,
// which hands a commit's log frames to the kernel in one write at its
// sync instead of two system calls per frame.
//
// Stats reports commits, operations and fsyncs, so Ops/Commits is the
// mean batch size and Syncs the number of fsyncs of the write path (one
// may cover several commits).
//
// One Store per file: Open takes an exclusive flock(2) on the file beside
// the database (its path, symbolic links resolved, + ".lock"), released by
// Close or by the kernel when
// the process dies, and fails with store.ErrInUse while another Store, in
// this process or another, holds it. Share one Store, e.g. through a
// caddy.UsagePool, across config reloads. Being the only writer lets the
// Store keep a filter of the alive replay keys in memory (package
// internal/keyfilter, loaded at Open and fed by every replay insert inside
// its write transaction): FindReplay of a request id the filter has never
// seen answers store.ErrNotFound without a query, and every other lookup
// reads the database. Where flock does not exist, no lock is taken and
// every lookup reads the database.
//
// # Porting to PostgreSQL
//
// The SQL is written to carry over: numbered parameters (?N becomes $N),
// INSERT ... ON CONFLICT ... DO UPDATE ... WHERE for every check-and-set
// (zero affected rows means "already there"), deletes keyed on the primary
// key, times as integer milliseconds (BIGINT), BLOB as BYTEA, and the same
// schema_version table and migration numbering. What is SQLite's own: WITHOUT
// ROWID, the single writer goroutine and connection, and BEGIN IMMEDIATE; a
// PostgreSQL backend keeps the operations (functions over a transaction)
// and groups them as package store describes. The KeyPackage and queue
// statements use three SQLite spellings: MIN(a, b) of two values is
// LEAST(a, b), json_each(?N) over a JSON array of recipients is
// unnest($N::text[]), and a claim's subquery takes FOR UPDATE SKIP LOCKED
// there. Under
// PostgreSQL's READ COMMITTED, the SELECT that Reserve, Complete and Release
// run after a no-op write may find the row gone (a concurrent Release or
// sweep); lock it with SELECT ... FOR UPDATE in the same transaction, or
// retry the operation.
//
// The group state ports the same way. A commit is one conditional UPDATE of
// the group's head (WHERE group_id, epoch, context and interim hash match
// the base, RETURNING id: no row means another commit won), then an upsert
// per changed tree position (O(log n), sent in the same pgx Batch), and a
// few deletes keyed on the group; the group row's lock serialises rival
// commits as BEGIN IMMEDIATE does here. mls_groups.id is AUTOINCREMENT here
// and an identity column there: neither reuses an id, which the state
// cache relies on. Loads read the head and, on a cache miss, the positions
// in one snapshot (REPEATABLE READ, or one statement joining both).
package sqlitestore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/groupcache"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/keyfilter"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore/internal/walvfs"

	"modernc.org/sqlite" // also registers the "sqlite" database/sql driver
)

// Defaults of Open.
const (
	// DefaultFileName is the database's file name in the gateway's
	// data_dir.
	DefaultFileName = "mimi.db"
	// DefaultReaders is the number of read-only connections.
	DefaultReaders = 4
	// DefaultBusyTimeout is how long a statement waits for a lock that
	// another process holds.
	DefaultBusyTimeout = 5 * time.Second
)

// lockSuffix names the lock file beside the database: path + lockSuffix.
const lockSuffix = ".lock"

// walSizeLimit is the size the WAL file is truncated to after a checkpoint.
const walSizeLimit = 64 << 20

// Store is the SQLite store.Store. Open it with Open; it is safe for
// concurrent use.
type Store struct {
	w    *sql.DB       // exactly one connection: every write goes through it
	r    *sql.DB       // read-only connections for lookups
	wr   *writer       // the group commit: the only user of w after Open
	ckpt *checkpointer // WAL checkpoints off the write path
	now  func() time.Time

	ws writeStmts
	rs readStmts
	gs groupStmts
	qs queueStmts
	ks kpStmts
	// multi are the coalesced appends' statements (writer only).
	multi multiStmts
	// multiArgs is execMulti's parameter list, kept between statements
	// (writer only) and cleared after each, so that it holds no message.
	multiArgs []any

	notifier *store.Notifier // wakes queue waiters after Append commits

	outboxLimits atomic.Pointer[store.OutboxLimits] // see SetOutboxLimits; nil means the defaults

	cache      *groupcache.Cache // loaded group states, see WithGroupCache
	groupBytes atomic.Uint64     // bytes of group rows written, see Stats

	// known holds every alive replay key (and, rarely, others), so that
	// FindReplay answers most new request ids without a query; nil when
	// the Store cannot be sure it is the file's only writer.
	known  *keyfilter.Filter
	unlock func() error // releases the file lock
	// walSync is the deferred syncing of the writer's log (durable.go);
	// nil when every COMMIT syncs.
	walSync *walvfs.Deferred

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Option configures Open.
type Option func(*options)

type options struct {
	readers     int
	busyTimeout time.Duration
	maxBatch    int
	linger      lingering
	cacheNodes  int
	now         func() time.Time
	// syncAtCommit makes each COMMIT sync the log itself (see
	// WithSyncAtCommit).
	syncAtCommit bool
	// shared skips the file lock, as where flock does not exist: the
	// Store then trusts nothing it keeps in memory over the database. Only
	// tests set it (withSharedFile), to run two Stores on one file as a
	// backend shared by several gateways would.
	shared bool
	// checkpointVFS, when set, is the VFS of the checkpointer's
	// connection instead of the default one. Only tests set it
	// (withCheckpointVFS), to make its syncs fail.
	checkpointVFS string
}

// withSharedFile opens without the file lock (see options.shared).
func withSharedFile() Option { return func(o *options) { o.shared = true } }

// withCheckpointVFS opens the checkpointer's connection through the VFS
// registered as name (see options.checkpointVFS).
func withCheckpointVFS(name string) Option { return func(o *options) { o.checkpointVFS = name } }

// WithReaders sets the number of read-only connections (default
// DefaultReaders); n < 1 means 1.
func WithReaders(n int) Option {
	return func(o *options) { o.readers = max(n, 1) }
}

// WithBusyTimeout sets how long a statement waits for a lock held by
// another process before it fails (default DefaultBusyTimeout).
func WithBusyTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.busyTimeout = d
		}
	}
}

// WithMaxBatch sets the most write operations one transaction carries
// (default DefaultMaxBatch); n < 1 means 1, which turns group commit off:
// every write then has a transaction and an fsync of its own.
func WithMaxBatch(n int) Option {
	return func(o *options) { o.maxBatch = max(n, 1) }
}

// WithGroupCache bounds the in-memory cache of group states by the sum of
// their tree widths (default DefaultGroupCacheNodes); n < 1 turns the cache
// off, so that every LoadGroup reads the tree from the database. The cache
// is checked against the group's stored head on every load, so another
// process writing the same file never makes it serve a stale state.
func WithGroupCache(n int) Option {
	return func(o *options) { o.cacheNodes = n }
}

// WithLinger sets how long the writer waits for more writes before it
// starts a batch of fewer than enough, while writes arrive concurrently
// (the previous batch held more than one); a lone write never waits.
// Defaults: DefaultLinger and DefaultLingerEnough; wait 0 turns it off.
func WithLinger(wait time.Duration, enough int) Option {
	return func(o *options) { o.linger = lingering{wait: max(wait, 0), enough: max(enough, 1)} }
}

// WithSyncAtCommit makes every COMMIT fsync the write-ahead log before the
// writer begins its next batch, instead of leaving the fsync to the syncer
// goroutine, which overlaps it with the next batch (durable.go). Both are
// equally durable; it is for comparisons, and it is what a Store does
// where the log's descriptor cannot be known (outside unix) or another
// Store may write the same file. Failures differ: a failed sync of a
// COMMIT fails that commit alone (SQLite publishes a commit's log frames
// only once their sync succeeded, and the next commit writes over them)
// and does not stop the store; and after a checkpoint's I/O error stopped
// it, the checkpoint SQLite runs when Close closes the last connection
// still runs, copying every frame from the last one checkpointed (the
// failed checkpoint's pages included, since it did not advance), syncing
// the database file and removing the log.
func WithSyncAtCommit() Option { return func(o *options) { o.syncAtCommit = true } }

// WithClock replaces time.Now as the clock that decides whether a record
// has expired; tests that run the gateway on a fake clock pass the same one.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}

// Open opens the database at path, creating it (mode 0600, its directory
// 0700) when missing, and migrates its schema to the latest version in one
// transaction. It refuses a database whose schema is newer than this code
// knows (store.ErrSchemaTooNew), and one that another Store holds
// (store.ErrInUse: see the package doc). path is the operator's
// configuration, never request data.
func Open(ctx context.Context, path string, opts ...Option) (s *Store, err error) {
	o := options{readers: DefaultReaders, busyTimeout: DefaultBusyTimeout, maxBatch: DefaultMaxBatch,
		linger:     lingering{wait: DefaultLinger, enough: DefaultLingerEnough},
		cacheNodes: DefaultGroupCacheNodes, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if path == "" {
		return nil, fmt.Errorf("opening store: empty path: %w", store.ErrInvalid)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	if err := createFile(abs); err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	// SQLite follows symbolic links to the database file, and so does the
	// lock: two spellings of one file take one lock.
	canon, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("opening store: resolving %s: %w", abs, err)
	}
	unlock, exclusive := func() error { return nil }, false
	if !o.shared {
		if unlock, exclusive, err = lockFile(canon + lockSuffix); err != nil {
			return nil, fmt.Errorf("opening store %s: %w", abs, err)
		}
	}
	defer func() {
		if err != nil {
			unlock()
		}
	}()

	if err := walvfs.Register(); err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	s = &Store{now: o.now, unlock: unlock, cache: groupcache.New(o.cacheNodes), notifier: store.NewNotifier()}
	if exclusive && !o.syncAtCommit {
		// The writer's log is synced by the syncer (durable.go). SQLite
		// names the log after the canonical path of the database.
		s.walSync, _ = walvfs.DeferSyncs(canon + "-wal") // refused: syncs at commit
	}
	if walSync := s.walSync; walSync != nil {
		defer func() {
			if err != nil {
				walSync.Release()
			}
		}()
	}
	busy := strconv.FormatInt(o.busyTimeout.Milliseconds(), 10)
	s.w, err = sql.Open("sqlite", dsn(abs, url.Values{
		"_pragma": {
			"busy_timeout(" + busy + ")",
			"journal_mode(WAL)",
			"synchronous(FULL)",
			"foreign_keys(1)",
			"journal_size_limit(" + strconv.Itoa(walSizeLimit) + ")",
			// 8 MiB of pages, for the hot pages of the tables (the
			// operating system caches the rest of the file). Measured
			// against 32 MiB: no slower on small databases, 11 % less
			// CPU per delivered message at a million messages
			// (examples/loadtest/README.md), since SQLite scans the
			// whole page cache at some commits; and up to 24 MiB less
			// memory per store once the database outgrows it.
			"cache_size(-8192)",
			"wal_autocheckpoint(0)", // the checkpointer's job: see checkpoint.go
			// Statement journals (which a multi-row statement keeps to
			// undo itself alone) in memory, not in a temporary file
			// written with a syscall per page.
			"temp_store(MEMORY)",
		},
		"_txlock": {"immediate"},
		// The log's frames of a commit reach the file in one write
		// (walvfs; it needs synchronous=FULL, which checkWriter checks).
		"vfs": {walvfs.Name},
	}))
	if err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	// One connection that is never closed: writes are serialised by the
	// pool, and prepared statements stay prepared.
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)
	if err := s.checkWriter(ctx); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("opening store %s: %w", abs, err)
	}
	if err := migrate(ctx, s.w, o.now()); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("opening store %s: %w", abs, err)
	}

	var dur *durability
	writerHasDur := false
	if s.walSync != nil {
		if s.walSync.Opened() {
			// What the checks and migrations committed, synced before
			// anything else.
			if err = s.walSync.Sync(); err != nil {
				s.w.Close()
				return nil, fmt.Errorf("opening store %s: %w", abs, err)
			}
			dur = newDurability(s.walSync.Sync, s.walSync.Stop)
			defer func() {
				if err != nil && !writerHasDur {
					// Failed before the writer took the syncer over
					// (the Store's Close ends it then): end it here.
					dur.close()
				}
			}()
		} else {
			// The writer's log was opened under another name than the
			// one registered: its COMMITs sync, as without.
			s.walSync.Release()
			s.walSync = nil
		}
	}
	readerDSN := dsn(abs, url.Values{
		"_pragma": {
			"busy_timeout(" + busy + ")",
			"query_only(1)",
		},
	})
	if dur == nil {
		s.r, err = sql.Open("sqlite", readerDSN)
	} else {
		var base driver.Connector
		if base, err = sqlite.NewConnector(readerDSN); err == nil {
			s.r = sql.OpenDB(gatedConnector{base: base, dur: dur})
		}
	}
	if err != nil {
		s.w.Close()
		return nil, fmt.Errorf("opening store: %w", err)
	}
	s.r.SetMaxOpenConns(o.readers)
	s.r.SetMaxIdleConns(o.readers)
	s.r.SetConnMaxLifetime(0)
	s.r.SetConnMaxIdleTime(0)

	if exclusive {
		if s.known, err = loadReplayFilter(ctx, s.r, o.now()); err != nil {
			s.r.Close()
			s.w.Close()
			return nil, fmt.Errorf("opening store %s: %w", abs, err)
		}
	}
	ckParams := url.Values{"_pragma": {"busy_timeout(" + busy + ")"}}
	if o.checkpointVFS != "" {
		ckParams.Set("vfs", o.checkpointVFS)
	}
	ckdb, err := sql.Open("sqlite", dsn(abs, ckParams))
	if err != nil {
		s.r.Close()
		s.w.Close()
		return nil, fmt.Errorf("opening store: %w", err)
	}
	ckdb.SetMaxOpenConns(1)
	ckdb.SetMaxIdleConns(1)
	ckdb.SetConnMaxLifetime(0)
	ckdb.SetConnMaxIdleTime(0)
	// Connected now, not at the first checkpoint: the Store's files are
	// all open once Open returns.
	if err := ckdb.PingContext(ctx); err != nil {
		ckdb.Close()
		s.r.Close()
		s.w.Close()
		return nil, fmt.Errorf("opening store %s: checkpoint connection: %w", abs, err)
	}
	s.wr = newWriter(s.w, o.maxBatch, o.linger, dur)
	writerHasDur = true
	s.ckpt = newCheckpointer(ckdb, s.wr.stop, s.wr.unsynced)
	s.wr.ckpt = s.ckpt
	s.multi = newMultiStmts()
	s.wr.appendBatch = func(ctx context.Context, tx *sql.Tx, apps []*appendOp) error {
		return s.appendBatchTx(ctx, tx, apps, check.Millis(s.now()))
	}
	s.wr.readyBatch = s.readyMulti
	if err := errors.Join(s.prepare(ctx), s.prepareGroups(ctx), s.prepareQueues(ctx)); err != nil {
		s.Close()
		return nil, fmt.Errorf("opening store %s: %w", abs, err)
	}
	return s, nil
}

// dsn returns the modernc.org/sqlite data source name of the database at
// the absolute path abs: a file: URI, so that any byte of the path is
// escaped rather than read as a parameter.
func dsn(abs string, params url.Values) string {
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: params.Encode()}
	if u.Path[0] != '/' { // a Windows volume
		u.Path = "/" + u.Path
	}
	return u.String()
}

// createFile creates the directory (0700) and the database file (0600) if
// they are missing, so that SQLite, which creates its WAL and shared-memory
// files with the database file's mode, never makes them more open. A
// symbolic link to a file not created yet is followed: the file it names
// is created, as SQLite would create it.
func createFile(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating data directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		// O_EXCL follows no link: path exists, or is a symbolic link
		// whose target does not exist yet, created here.
		if _, serr := os.Stat(path); !errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	}
	if err != nil {
		return fmt.Errorf("creating database file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("creating database file: %w", err)
	}
	if target, err := filepath.EvalSymlinks(path); err == nil {
		dir = filepath.Dir(target) // the new entry is the link's target's
	}
	// Make the new directory entry durable before anything is written
	// to the file.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing data directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing data directory: %w", err)
	}
	return nil
}

// checkWriter verifies that the writer connection really runs with the
// durability settings the package promises: a pragma the driver failed to
// apply must not silently weaken them. synchronous=FULL is also what
// walvfs needs: a commit's log writes reach the file at the sync that
// precedes their publication to the readers.
func (s *Store) checkWriter(ctx context.Context) error {
	var mode string
	if err := s.w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("reading journal mode: %w", err)
	}
	if mode != "wal" {
		return fmt.Errorf("journal mode is %q, not wal", mode)
	}
	var sync int
	if err := s.w.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
		return fmt.Errorf("reading synchronous setting: %w", err)
	}
	if sync != 2 {
		return fmt.Errorf("synchronous is %d, not 2 (FULL)", sync)
	}
	return nil
}

// Close closes the store. Writes still queued fail with store.ErrClosed
// without having run; a batch already running is committed (or fails) and
// answered first. Later calls fail with store.ErrClosed; a second Close
// returns the first one's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		var errs []error
		if s.wr != nil {
			s.wr.close()
		}
		if s.ckpt != nil {
			errs = append(errs, s.ckpt.close())
		}
		// After the writer: no Append can notify any more.
		s.notifier.Close()
		for _, st := range slices.Concat(s.allStmts(), s.groupStmts(), s.queueStmts(), s.multiStmtList()) {
			if st != nil {
				errs = append(errs, st.Close())
			}
		}
		if s.r != nil {
			errs = append(errs, s.r.Close())
		}
		errs = append(errs, s.w.Close())
		if s.walSync != nil {
			s.walSync.Release()
		}
		// The lock goes last, once nothing of this Store can write.
		errs = append(errs, s.unlock())
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("closing store: %w", err)
		}
	})
	return s.closeErr
}

// fail wraps err with what was being done, reporting store.ErrClosed when
// the store was closed under the call. An answer of the store's semantics
// (ErrInvalid, ErrNotFound, ErrConflict) is kept as it is: the write that
// produced it was settled before Close returned.
func (s *Store) fail(doing string, err error) error {
	if s.closed.Load() && !errors.Is(err, store.ErrInvalid) && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%s: %w", doing, store.ErrClosed)
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// checkOpen fails with store.ErrClosed after Close.
func (s *Store) checkOpen(doing string) error {
	if s.closed.Load() {
		return fmt.Errorf("%s: %w", doing, store.ErrClosed)
	}
	return nil
}

// rollback ends a transaction that wrote nothing or failed; its error adds
// nothing to the one being returned.
func rollback(tx *sql.Tx) { _ = tx.Rollback() }
