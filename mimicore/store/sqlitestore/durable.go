package sqlitestore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Durability as a stage of its own. The writer's COMMIT does not fsync:
// its log is opened with deferred syncs (walvfs.DeferSyncs), so the COMMIT
// writes its frames to the file and publishes them, and the writer hands
// the batch's answers to the syncer goroutine and begins the next batch at
// once. The syncer fsyncs the log (one fdatasync for every batch handed
// over meanwhile) and only then answers the callers. So a batch's
// statements run while the batch before it is being synced, instead of
// after, and an answer, a success or a refusal alike, never precedes the
// sync of the state it was decided on.
//
// Between its COMMIT and that sync a batch is visible to the other
// connections of the file though not yet durable. Readers of this Store
// must not answer from it: the reader pool's connections are gated (see
// gate.go): once a query's first row is read (when SQLite takes the
// query's snapshot) the query waits until every commit begun by then is
// synced. Waits are rare and short (one sync at most) outside the write
// path, whose own reads run on the writer's connection and whose answers
// the syncer orders. Processes other than this one (a backup, an admin's
// sqlite3 shell) may read a commit before its sync; a kill -9 of the
// gateway loses nothing either way (the kernel holds every write), and
// after a power loss SQLite recovers the log's checksummed frames up to
// the last sync, as with synchronous=NORMAL.
//
// A failed fsync leaves the log's state on disk unknown (the kernel may
// have dropped the pages it could not write): the syncer fails the batches
// it was syncing and the store takes no further write, and no read of a
// state not known durable, until it is opened again (errSyncFailed), as
// PostgreSQL stops after a failed fsync of its WAL. Nor does the writer's
// connection copy anything out of the log any more: every sync of the log
// fails from then on, so that the checkpoint SQLite runs when Close closes
// the last connection fails before it copies frames into the database file
// and deletes the log; the next Open recovers from the log on disk.
//
// The checkpointer's connection (checkpoint.go) syncs the log and the
// database file itself, on descriptors of its own, and a failed sync
// stops the store the same way: an I/O error of a checkpoint
// (SQLITE_IOERR and its extended codes; SQLITE_BUSY and SQLITE_LOCKED are
// a checkpoint's normal outcomes under load, and fail nothing) stops the
// log (Deferred.Stop), fails every later write and every read waiting
// for a sync, and no checkpoint runs again (but for Close's, with
// WithSyncAtCommit: see there). Retrying would be wrong: the
// kernel reports a failed write-back once per open file, so the retry's
// sync of the log would succeed and the retry would copy into the
// database file frames that the disk may not hold; and after a failed
// write-back of the database file its pages in memory are not known to
// match the disk, which a later sync that succeeds does not reveal. The
// log stays on disk, whole, for the next Open's recovery. Classifying the
// error is enough: the checkpointer's connection stays on the default VFS
// (walvfs's deferred syncs are for the writer's descriptor alone), its
// syncs are real ones, and its first failure stops everything after it.

// errSyncFailed marks the errors of a store whose log or database file
// failed to sync.
var errSyncFailed = errors.New("sqlitestore: an fsync of the database or its write-ahead log failed; the store takes no writes until it is opened again")

// maxSyncBatches is the most batches one sync answers, and twice the
// batches the writer may hand over before it waits for the syncer.
const maxSyncBatches = 32

// durability tracks the writer's commits and the syncs that cover them,
// and runs the syncer.
type durability struct {
	sync func() error // fdatasync of the writer's log
	// stop fails every later sync of the log, SQLite's own included, so
	// that no checkpoint copies frames out of it (walvfs.Deferred.Stop).
	stop func()
	in   chan handoff
	done chan struct{}

	// pending counts the commits begun (the writer adds one before each
	// COMMIT); durable is the number of the last commit a sync covers.
	pending, durable atomic.Uint64

	// outstanding counts the handoffs not yet answered; idle is signalled
	// when it falls to zero (see writer.next).
	outstanding atomic.Int64
	idle        chan struct{}

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when durable or err changes
	err     error         // set when a sync failed

	syncs, waits atomic.Uint64
}

// handoff is a batch's answers: ops with their outcomes in op.err, due
// once every commit up to seq is synced.
type handoff struct {
	seq uint64
	ops []*op
}

func newDurability(sync func() error, stop func()) *durability {
	d := &durability{sync: sync, stop: stop, in: make(chan handoff, maxSyncBatches/2), done: make(chan struct{}),
		changed: make(chan struct{}), idle: make(chan struct{}, 1)}
	go d.run()
	return d
}

// begin numbers a commit the writer is about to make.
func (d *durability) begin() { d.pending.Add(1) }

// answer hands ops to the syncer, which answers them once every commit
// begun so far is synced. Writer goroutine only.
func (d *durability) answer(ops []*op) {
	if len(ops) > 0 {
		d.outstanding.Add(1)
		d.in <- handoff{seq: d.pending.Load(), ops: ops}
	}
}

// busy reports whether the syncer holds batches it has not answered.
func (d *durability) busy() bool { return d.outstanding.Load() > 0 }

// close waits for the syncer to answer everything handed over; the writer
// calls it once it has stopped.
func (d *durability) close() {
	close(d.in)
	<-d.done
}

func (d *durability) run() {
	defer close(d.done)
	batch := make([]handoff, 0, maxSyncBatches)
	for h := range d.in {
		batch = append(batch[:0], h)
	more:
		for len(batch) < maxSyncBatches {
			select {
			case h, ok := <-d.in:
				if !ok {
					break more
				}
				batch = append(batch, h)
			default:
				break more
			}
		}
		// Handoffs come in the writer's order: the last is the highest.
		err := d.syncTo(batch[len(batch)-1].seq)
		for _, h := range batch {
			for _, o := range h.ops {
				if err != nil {
					o.done <- err
				} else {
					o.done <- o.err
				}
			}
		}
		if d.outstanding.Add(-int64(len(batch))) == 0 {
			select {
			case d.idle <- struct{}{}:
			default:
			}
		}
		clear(batch)
	}
}

// syncTo makes every commit up to seq durable.
func (d *durability) syncTo(seq uint64) error {
	if err := d.failed(); err != nil {
		return err
	}
	if d.durable.Load() >= seq {
		return nil
	}
	d.syncs.Add(1)
	err := d.sync()
	d.mu.Lock()
	if err != nil {
		d.stop()
		err = fmt.Errorf("%w: %w", errSyncFailed, err)
		if d.err == nil {
			d.err = err // the first failure is the one reported (fail)
		}
	} else {
		d.durable.Store(seq)
	}
	close(d.changed) // wakes the reads waiting for either
	d.changed = make(chan struct{})
	d.mu.Unlock()
	return err
}

// fail stops the store as a failed sync of the log does, for a failed
// sync elsewhere (a checkpoint's): every later sync of the log fails, and
// so every commit not yet synced, every later write, and every read
// waiting for one of them. The first failure is the one reported.
func (d *durability) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stop()
	if d.err != nil {
		return
	}
	d.err = fmt.Errorf("%w: %w", errSyncFailed, err)
	close(d.changed) // wakes the reads waiting for a sync
	d.changed = make(chan struct{})
}

// failed returns the error of a failed sync, if any.
func (d *durability) failed() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// wait returns once every commit begun before the call is durable, with
// the error of a failed sync that leaves one of them unsynced, or with
// ctx's error once ctx ends (a sync that hangs does not hold a caller
// past its deadline).
func (d *durability) wait(ctx context.Context) error {
	seq := d.pending.Load()
	if d.durable.Load() >= seq {
		return nil
	}
	d.waits.Add(1)
	for {
		d.mu.Lock()
		ch, err := d.changed, d.err
		d.mu.Unlock()
		if d.durable.Load() >= seq {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the write-ahead log's fsync: %w", ctx.Err())
		}
	}
}
