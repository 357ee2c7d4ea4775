package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Checkpoints: the writer connection runs with wal_autocheckpoint(0), so
// that a commit never copies WAL frames back into the database file
// itself. SQLite's automatic checkpoint would run inside the COMMIT that
// crossed the threshold, on the writer goroutine, which every write of the
// gateway waits behind: measured on BenchmarkDeliverParallel64 it took a
// tenth of the writer's time. Instead a checkpointer goroutine runs
// PASSIVE checkpoints on a connection of its own. In WAL mode a checkpoint
// and a write transaction run at the same time (the checkpoint copies the
// frames that every reader has moved past and never takes the write
// lock), so the writer goes on committing while the frames are copied and
// the database file is fsynced.
//
// Durability does not depend on checkpoints: a committed transaction is
// in the fsynced WAL, which SQLite replays on the next open after a crash.
// What checkpoints bound is the WAL's size, and with it the cost of
// reading through it. The checkpointer runs after commits, at most once
// per checkpointInterval; should it fall behind or fail, the writer
// checkpoints itself after writerCheckpointCommits commits without one,
// as SQLite's automatic checkpoint would.
//
// Copying frames back is not enough to bound the WAL under steady load.
// SQLite writes the log from its start again (over blocks the file
// already has) only in a write transaction that began when every frame
// had been copied. The checkpointer's checkpoints run beside the writer,
// whose next transaction has always begun before a checkpoint ends, so
// the log grew for as long as the load lasted: to 290 MB over 40,000
// Appends of BenchmarkDeliverDedup, each commit extending the file (new
// blocks for the file system to allocate and to journal at each sync),
// measured at a fifth of the writer's CPU in a longer run. So when a
// checkpoint finds the log logRestartFrames long, the writer runs the next
// checkpoint itself, between two of its transactions: with no write
// beside it, it copies the few frames written since the checkpointer's
// (and syncs the database file), and the transaction after it writes the
// log from its start. A reader still on an older snapshot keeps the
// frames it reads from being copied; the next checkpoint asks again. A checkpoint that fails with an
// I/O error (a failed sync of the log or of the database file) is not
// tried again: it stops the store (see durable.go), and the log stays on
// disk for the next Open.
const (
	// checkpointInterval is the least time between two checkpoints of
	// the checkpointer: under load the WAL grows by a few megabytes in
	// that time, as it would with SQLite's default threshold of 1,000
	// pages.
	checkpointInterval = 100 * time.Millisecond
	// writerCheckpointCommits is how many commits the writer makes
	// without a successful checkpoint before it runs one itself.
	writerCheckpointCommits = 2000
	// logRestartFrames is the length of the log (frames of a page and a
	// 24-byte header each: 16 MiB of 4 KiB pages) from which the writer
	// runs the next checkpoint itself, so that the log starts over. It
	// stays below the journal_size_limit (walSizeLimit), which a
	// restarted log is truncated to, so the file keeps its blocks.
	logRestartFrames = 4096
)

// checkpointer runs PASSIVE checkpoints on its own connection when the
// writer signals commits.
type checkpointer struct {
	db   *sql.DB // one read-write connection, used for checkpoints only
	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	// sinceOK counts commits since the last successful checkpoint (the
	// writer adds, a successful checkpoint resets).
	sinceOK    atomic.Int64
	runs, errs atomic.Uint64

	// logFrames is the length of the log that the last checkpoint found
	// (Stats.LogFrames); restartAt is the length from which the writer
	// runs the next checkpoint (logRestartFrames; tests lower it), and
	// restartDue is set when a checkpoint found that length.
	logFrames, restartAt atomic.Int64
	restartDue           atomic.Bool

	// ioFailed is set once a checkpoint failed with an I/O error: no
	// checkpoint runs after it. halt stops the store with that error;
	// stopped returns the error that stopped it, after which no
	// checkpoint runs either.
	ioFailed atomic.Bool
	halt     func(error)
	stopped  func() error
}

// newCheckpointer starts the checkpointer of db; halt stops the store
// after a checkpoint's I/O error, and stopped reports whether the store
// stopped (writer.stop and writer.unsynced).
func newCheckpointer(db *sql.DB, halt func(error), stopped func() error) *checkpointer {
	c := &checkpointer{db: db, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		halt: halt, stopped: stopped}
	c.restartAt.Store(logRestartFrames)
	go c.loop()
	return c
}

// committed tells the checkpointer that the writer committed; it reports
// whether the writer should checkpoint itself: because the checkpointer
// has not succeeded for writerCheckpointCommits commits, or because the
// last checkpoint found the log long enough to start it over.
func (c *checkpointer) committed() bool {
	select {
	case c.wake <- struct{}{}:
	default:
	}
	restart := c.restartDue.Swap(false)
	return c.sinceOK.Add(1) >= writerCheckpointCommits || restart
}

// run runs a checkpoint on db, the checkpointer's connection or the
// writer's, records its outcome and reports the length of the log it
// found (-1 when it found none); once the store stopped after a failed
// sync (a checkpoint's I/O error or the syncer's) it runs none.
func (c *checkpointer) run(ctx context.Context, db interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (logFrames int64) {
	if c.ioFailed.Load() || c.stopped() != nil {
		return -1
	}
	logFrames, err := checkpoint(ctx, db)
	c.ran(logFrames, err)
	if err != nil {
		return -1
	}
	return logFrames
}

// ran records the outcome of a checkpoint, the checkpointer's or the
// writer's, and the length of the log it found. An I/O error stops the
// store: see durable.go.
func (c *checkpointer) ran(logFrames int64, err error) {
	c.runs.Add(1)
	if err == nil && logFrames >= 0 {
		c.logFrames.Store(logFrames)
	}
	if err != nil {
		c.errs.Add(1)
		if isIOError(err) {
			c.ioFailed.Store(true)
			c.halt(err)
		}
		return
	}
	c.sinceOK.Store(0)
}

// isIOError reports whether err is an SQLite I/O error (SQLITE_IOERR,
// with any extended code), as a failed read, write or sync of a file
// returns, rather than a checkpoint's normal refusals (SQLITE_BUSY,
// SQLITE_LOCKED) or a closed connection.
func isIOError(err error) bool {
	var e *sqlite.Error
	return errors.As(err, &e) && e.Code()&0xff == sqlite3.SQLITE_IOERR
}

func (c *checkpointer) loop() {
	defer close(c.done)
	ctx := context.Background()
	last := time.Time{}
	for {
		select {
		case <-c.stop:
			return
		case <-c.wake:
		}
		if wait := checkpointInterval - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-c.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		// Only the checkpointer's own checkpoints ask the writer for
		// one: the writer's finds the log as long as before (it starts
		// over at the next write), and would ask again.
		if c.run(ctx, c.db) >= c.restartAt.Load() {
			c.restartDue.Store(true)
		}
	}
}

// close stops the checkpointer and closes its connection; the last
// connection to close (the writer's) checkpoints what is left.
func (c *checkpointer) close() error {
	close(c.stop)
	<-c.done
	return c.db.Close()
}

// checkpoint runs a PASSIVE checkpoint on db: it copies what it can
// without waiting for any lock and never blocks a writer. It reports the
// length of the log in frames (-1 when another checkpoint was running).
func checkpoint(ctx context.Context, db interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (logFrames int64, err error) {
	var busy, copied int64
	if err := db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &copied); err != nil {
		return 0, fmt.Errorf("checkpointing the WAL: %w", err)
	}
	return logFrames, nil
}
