package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// DefaultMaxBatch is the most write operations one transaction of the
// writer carries (see WithMaxBatch).
const DefaultMaxBatch = 256

// opFunc is one durable write: it runs inside the writer's transaction and
// reads and writes through tx only. ctx is the writer's, not the caller's:
// cancelling a statement inside an explicit SQLite transaction can roll
// back the whole transaction, so a caller's context must never reach one.
// An opFunc may run more than once (when a transaction it ran in was
// rolled back because another op of its batch failed, and the batch runs
// again), so it must set its results afresh on each run.
type opFunc func(ctx context.Context, tx *sql.Tx) error

// States of an op. Each transition is one compare-and-swap, so exactly one
// party answers an op: the writer (it claimed the op) or nobody (the caller
// gave up while the op was queued).
const (
	opQueued    uint32 = iota // waiting in the queue
	opClaimed                 // taken by the writer or by Close: it will be answered
	opAbandoned               // the caller gave up first: it will never run
)

// op is a queued write and the channel its caller waits on.
type op struct {
	ctx   context.Context
	fn    opFunc
	app   *appendOp // set for an Append, which an optimistic batch may coalesce
	state atomic.Uint32
	err   error      // the op's own outcome in the current transaction
	done  chan error // buffered: the answer is sent once and never blocks
}

// claim takes the op for running or answering; false means its caller
// gave up and it must be skipped.
func (o *op) claim() bool { return o.state.CompareAndSwap(opQueued, opClaimed) }

// writer is the group commit of the store: callers queue ops, and one
// goroutine runs the ops queued when it becomes free, up to maxBatch of
// them, in one transaction with one fsync, then answers each caller.
type writer struct {
	db       *sql.DB
	maxBatch int
	linger   lingering
	ctx      context.Context // of every statement: never cancelled

	mu     sync.Mutex
	cond   *sync.Cond // signalled when queue grows or closed is set
	queue  []*op      // FIFO
	closed bool
	exited chan struct{} // closed when loop returns
	// filled is signalled when the queue reaches linger.enough ops, to end
	// a linger early.
	filled chan struct{}
	// lastBatch is the size of the batch the writer ran last (writer
	// goroutine only).
	lastBatch int
	// ckpt, when set, is told of every commit (see checkpointer).
	ckpt *checkpointer
	// appendBatch, when set, writes the Appends of an optimistic batch
	// together (see appendbatch.go).
	appendBatch func(ctx context.Context, tx *sql.Tx, apps []*appendOp) error
	// readyBatch, when set, readies what appendBatch needs for at most
	// apps Appends with rows recipients in all; it runs before the
	// transaction begins (writer goroutine only).
	readyBatch func(ctx context.Context, apps, rows int) error
	// dur, when set, answers the batches once their commits are synced
	// (see durable.go); unset, a COMMIT syncs and the writer answers.
	dur *durability
	// stopped holds the error that stopped the writer when dur is unset
	// (see stop).
	stopped atomic.Pointer[error]

	commits, ops, maxSeen, failed, retried, coalesced atomic.Uint64
}

// lingering is how the writer waits for company: when a batch is about to
// start with fewer than enough ops and the previous batch held more than
// one (writes are arriving concurrently), it waits up to wait for more,
// or until enough are queued. Under load the batches grow, and with them
// the writes each commit (and fsync) carries, which is what decides the
// write path's CPU cost per write: measured through Caddy, a 500 us wait
// raised distinct signed requests from 0.33 to 0.39 of a bare route, with
// a lower p99. A lone write (the previous batch held one) never waits.
type lingering struct {
	wait   time.Duration // 0: never wait
	enough int
}

// Defaults of the writer's linger (see WithLinger).
const (
	DefaultLinger       = 500 * time.Microsecond
	DefaultLingerEnough = 16
)

func newWriter(db *sql.DB, maxBatch int, linger lingering, dur *durability) *writer {
	w := &writer{db: db, maxBatch: maxBatch, linger: linger, dur: dur, ctx: context.Background(),
		exited: make(chan struct{}), filled: make(chan struct{}, 1)}
	w.cond = sync.NewCond(&w.mu)
	go w.loop()
	return w
}

// do queues fn and waits for its outcome: nil once the transaction that ran
// it committed, fn's own error (unchanged) when fn failed, or an error of
// the batch. A ctx that ends while the op is queued skips the op and
// returns ctx.Err() at once; once the op has started, do waits for the
// outcome of its transaction, which is bounded by the batch size.
func (w *writer) do(ctx context.Context, fn opFunc) error {
	return w.doAppend(ctx, nil, fn)
}

// doAppend is do for an Append: fn runs it alone, and an optimistic batch
// may write app together with the batch's other Appends instead (see
// appendbatch.go); either way app holds its outcome once doAppend
// returns nil.
func (w *writer) doAppend(ctx context.Context, app *appendOp, fn opFunc) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o := &op{ctx: ctx, fn: fn, app: app, done: make(chan error, 1)}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return store.ErrClosed
	}
	w.queue = append(w.queue, o)
	w.cond.Signal()
	if n := len(w.queue); n == w.linger.enough || n == w.syncEnough() {
		select {
		case w.filled <- struct{}{}:
		default:
		}
	}
	w.mu.Unlock()

	select {
	case err := <-o.done:
		return err
	case <-ctx.Done():
		if o.state.CompareAndSwap(opQueued, opAbandoned) {
			return ctx.Err()
		}
		// The writer took it first: the op ran or is running.
		return <-o.done
	}
}

// close stops taking ops, answers every op still queued with
// store.ErrClosed, and waits for the batch in progress to be answered and
// the writer goroutine to exit.
func (w *writer) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.exited
		return
	}
	w.closed = true
	pending := w.queue
	w.queue = nil
	w.cond.Broadcast()
	select { // end a linger
	case w.filled <- struct{}{}:
	default:
	}
	w.mu.Unlock()
	for _, o := range pending {
		if o.claim() {
			o.done <- fmt.Errorf("write queued when the store closed: %w", store.ErrClosed)
		}
	}
	<-w.exited
}

// queued reports how many ops wait in the queue (for tests).
func (w *writer) queued() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}

// loop runs batches until close.
func (w *writer) loop() {
	defer close(w.exited)
	if w.dur != nil {
		defer w.dur.close() // before exited: Close waits for every answer
	}
	batch := make([]*op, 0, w.maxBatch)
	for {
		batch = w.next(batch[:0])
		if len(batch) == 0 {
			return
		}
		w.lastBatch = len(batch)
		w.run(batch)
		clear(batch) // drop references to answered ops
	}
}

// next waits for queued ops and moves up to maxBatch of them, oldest
// first, into batch. It returns an empty batch once the writer is closed.
// Under concurrent writes it lingers first (see lingering).
func (w *writer) next(batch []*op) []*op {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.queue) == 0 && !w.closed {
		w.cond.Wait()
	}
	if w.closed {
		return batch // close answers whatever is still queued
	}
	if w.dur != nil {
		// The previous batch is being synced, and the answers of this
		// one cannot precede the next sync, which starts when that one
		// ends: wait for it, or for enough writes to make starting now
		// worth a commit of its own.
		for len(w.queue) < w.syncEnough() && w.dur.busy() {
			select {
			case <-w.dur.idle: // stale
			default:
			}
			select {
			case <-w.filled: // stale
			default:
			}
			if !w.dur.busy() {
				break
			}
			w.mu.Unlock()
			select {
			case <-w.dur.idle:
			case <-w.filled:
			}
			w.mu.Lock()
			if w.closed {
				return batch
			}
		}
	}
	if w.linger.wait > 0 && w.lastBatch > 1 && len(w.queue) < w.linger.enough {
		select {
		case <-w.filled: // a stale signal of a queue already taken
		default:
		}
		w.mu.Unlock()
		t := time.NewTimer(w.linger.wait)
		select {
		case <-t.C:
		case <-w.filled:
			t.Stop()
		}
		w.mu.Lock()
		if w.closed {
			return batch
		}
	}
	n := min(len(w.queue), w.maxBatch)
	batch = append(batch, w.queue[:n]...)
	rest := copy(w.queue, w.queue[n:])
	clear(w.queue[rest:])
	w.queue = w.queue[:rest]
	return batch
}

// run executes a batch. Each op is claimed just before it runs, so an op
// whose caller gave up or whose ctx ended while it was queued is skipped.
//
// A batch first runs optimistically, its ops one after the other in one
// transaction without savepoints: ops rarely fail, and two savepoint
// statements per op cost a quarter of the writer's time. If an op fails,
// that transaction is rolled back unanswered and the whole batch runs
// again carefully, each op inside its own savepoint, so that the failing op
// fails alone and the others commit. An op is a function of the
// transaction it is given, so running it again after a rollback is
// running it once: only the committed run's writes and outcome count.
//
// When a transaction breaks mid-batch in the careful run, the op that broke
// it gets its own error and the ops that ran before it, whose work was
// rolled back unanswered, run again in a new transaction with the rest.
func (w *writer) run(batch []*op) {
	careful := false
	for len(batch) > 0 {
		batch, careful = w.runTx(batch, careful)
	}
}

// runTx runs ops in one transaction and answers them, or returns the ops
// that must run again and whether they must run carefully: all of them,
// carefully, when an optimistic run met a failing op; those that ran
// before the op that broke a careful transaction (answered alone), then
// those not yet run.
func (w *writer) runTx(ops []*op, careful bool) (retry []*op, carefulRetry bool) {
	if !careful && !w.readyAppends(ops) {
		// Run the Appends one by one, as their own ops: the careful run
		// coalesces nothing.
		careful = true
	}
	var tx *sql.Tx
	err := w.unsynced()
	if err == nil {
		tx, err = w.db.BeginTx(w.ctx, nil) // BEGIN IMMEDIATE: see the writer DSN
	}
	if err != nil {
		w.failed.Add(1)
		err = fmt.Errorf("beginning write transaction: %w", err)
		for _, o := range ops {
			if o.state.Load() == opClaimed || o.claim() {
				o.done <- err
			}
		}
		return nil, false
	}
	// A single op needs no savepoint: its failure rolls back the
	// transaction, which holds nothing else.
	solo := len(ops) == 1
	ran := ops[:0:0]
	// The Appends of an optimistic batch wait in apps and run together
	// once the other ops have run.
	var apps []*op
	for i, o := range ops {
		if o.state.Load() != opClaimed { // claimed already on a retry
			if err := o.ctx.Err(); err != nil {
				if o.claim() {
					o.done <- err
				}
				continue
			}
			if !o.claim() {
				continue
			}
		}
		if solo {
			o.err = runOp(w.ctx, tx, o.fn)
			ran = append(ran, o)
			break
		}
		if !careful {
			if o.app != nil && w.appendBatch != nil && (len(apps) == 0 || coalescable(apps[0].app, o.app)) {
				apps = append(apps, o)
				continue
			}
			if o.err = runOp(w.ctx, tx, o.fn); o.err != nil {
				// Its writes, if any, are mixed with the others': start
				// over, carefully. The ops not reached yet are not
				// claimed; the careful run claims them.
				_ = tx.Rollback()
				w.retried.Add(1)
				return slices.Concat(ran, apps, ops[i:]), true
			}
			ran = append(ran, o)
			continue
		}
		if err := w.runSavepoint(tx, o); err != nil {
			// The transaction is gone: o failed and takes the blame
			// alone; the others, whose work went with it unanswered,
			// run again without it.
			_ = tx.Rollback()
			w.failed.Add(1)
			o.err = err
			w.answer([]*op{o})
			return append(ran, ops[i+1:]...), true
		}
		ran = append(ran, o)
	}
	if len(apps) > 0 {
		if err := w.runAppends(tx, apps); err != nil {
			// As for a failing op: start over, carefully.
			_ = tx.Rollback()
			w.retried.Add(1)
			return append(ran, apps...), true
		}
		ran = append(ran, apps...)
	}
	if len(ran) == 0 {
		_ = tx.Rollback()
		return nil, false
	}
	if solo && ran[0].err != nil {
		_ = tx.Rollback()
		w.answer(ran)
		return nil, false
	}
	if w.dur != nil {
		w.dur.begin()
	}
	if err := tx.Commit(); err != nil {
		// A failed COMMIT can leave SQLite's transaction open on the
		// connection, which database/sql has taken back: end it, so
		// that the next batch can begin.
		_, _ = w.db.ExecContext(w.ctx, "ROLLBACK")
		w.failed.Add(1)
		err = fmt.Errorf("committing a batch of %d writes: %w", len(ran), err)
		for _, o := range ran {
			o.err = err
		}
		w.answer(ran)
		return nil, false
	}
	n := uint64(len(ran))
	w.commits.Add(1)
	w.ops.Add(n)
	for m := w.maxSeen.Load(); n > m && !w.maxSeen.CompareAndSwap(m, n); m = w.maxSeen.Load() {
	}
	w.answer(ran)
	if w.ckpt != nil && w.ckpt.committed() {
		// The checkpointer has not managed for a long while, or the
		// log is to start over: checkpoint here, once the batch is
		// answered (see checkpointer).
		w.checkpoint()
	}
	return nil, false
}

// checkpoint runs a checkpoint on the writer's connection. With deferred
// syncs (durable.go) the checkpoint's own sync of the log is deferred like
// a commit's (walvfs cannot tell them apart), so it would copy into the
// database file frames that no sync has made durable: after a power loss
// the file would hold pages of commits the log lost, beside older pages
// the log restores. So it first waits until every commit is synced; no
// commit can come meanwhile, the writer being this goroutine. After a
// failed sync it copies nothing.
func (w *writer) checkpoint() {
	if w.dur != nil {
		if err := w.dur.wait(w.ctx); err != nil {
			w.ckpt.ran(0, err)
			return
		}
	}
	w.ckpt.run(w.ctx, w.db)
}

// answer answers ops with their outcomes (op.err): at once when each
// COMMIT syncs, else once the syncer has synced every commit so far (see
// durable.go), so that no answer precedes the sync of the state it was
// decided on. ops is not used by the writer afterwards.
func (w *writer) answer(ops []*op) {
	if w.dur != nil {
		w.dur.answer(ops)
		return
	}
	for _, o := range ops {
		o.done <- o.err
	}
}

// syncEnough is how many queued writes start a batch while the previous
// one is being synced: twice the linger's enough, since waiting for the
// sync costs those writes no time (their answers follow the next sync)
// and a larger batch costs less per write.
func (w *writer) syncEnough() int { return 2 * w.linger.enough }

// unsynced returns the error of a failed sync of the log or of a
// checkpoint (see stop), after which the writer takes no more writes.
func (w *writer) unsynced() error {
	if w.dur == nil {
		if err := w.stopped.Load(); err != nil {
			return *err
		}
		return nil
	}
	return w.dur.failed()
}

// stop stops the store after a failed sync outside the syncer (a
// checkpoint's, see durable.go): the writer takes no more writes, and
// with deferred syncs the log is stopped and the reads waiting for a sync
// fail.
func (w *writer) stop(err error) {
	if w.dur != nil {
		w.dur.fail(err)
		return
	}
	err = fmt.Errorf("%w: %w", errSyncFailed, err)
	w.stopped.CompareAndSwap(nil, &err)
}

// readyAppends readies the coalesced write of ops' Appends (readyBatch),
// counting every Append of ops and all their recipients, a bound on what
// runTx coalesces; false means it could not, and ops must run carefully.
func (w *writer) readyAppends(ops []*op) bool {
	if w.readyBatch == nil {
		return true
	}
	apps, rows := 0, 0
	for _, o := range ops {
		if o.app != nil {
			apps++
			rows += len(o.app.qa.recipients)
		}
	}
	if apps < 2 { // one Append runs as any op (runAppends)
		return true
	}
	return w.readyBatch(w.ctx, apps, rows) == nil
}

// runAppends runs the Appends of an optimistic batch: one alone as any
// op, more together. An error means the transaction must roll back.
func (w *writer) runAppends(tx *sql.Tx, apps []*op) error {
	if len(apps) == 1 {
		apps[0].err = runOp(w.ctx, tx, apps[0].fn)
		return apps[0].err
	}
	batch := make([]*appendOp, len(apps))
	for i, o := range apps {
		batch[i] = o.app
	}
	err := runOp(w.ctx, tx, func(ctx context.Context, tx *sql.Tx) error {
		return w.appendBatch(ctx, tx, batch)
	})
	if err != nil {
		return err
	}
	for _, o := range apps {
		o.err = nil // answered by the commit
	}
	w.coalesced.Add(uint64(len(apps)))
	return nil
}

// runSavepoint runs o inside a savepoint, so that its failure undoes only
// its own writes: o.err is its outcome. A non-nil error means the
// transaction can no longer be used (SQLite rolls a whole transaction back
// by itself on some errors, such as a full disk, and the savepoint is then
// gone); it includes o's own error.
func (w *writer) runSavepoint(tx *sql.Tx, o *op) error {
	if _, err := tx.ExecContext(w.ctx, "SAVEPOINT op"); err != nil {
		return fmt.Errorf("starting savepoint: %w", err)
	}
	o.err = runOp(w.ctx, tx, o.fn)
	if o.err != nil {
		if _, err := tx.ExecContext(w.ctx, "ROLLBACK TO op"); err != nil {
			return errors.Join(o.err, fmt.Errorf("rolling back to savepoint: %w", err))
		}
	}
	if _, err := tx.ExecContext(w.ctx, "RELEASE op"); err != nil {
		return errors.Join(o.err, fmt.Errorf("releasing savepoint: %w", err))
	}
	return nil
}

// runOp runs fn, turning a panic into an error so that one faulty op
// cannot stop the writer and strand every caller.
func runOp(ctx context.Context, tx *sql.Tx, fn opFunc) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("write operation panicked: %v", r)
		}
	}()
	return fn(ctx, tx)
}

// Stats counts the work of a Store's writer since Open.
type Stats struct {
	// Commits is the number of write transactions committed: each costs
	// at most one fsync of the WAL (one that changed nothing writes
	// nothing).
	Commits uint64
	// Ops is the number of write operations those transactions carried,
	// counting ops that failed alone inside them. Ops / Commits is the
	// mean batch size.
	Ops uint64
	// MaxBatch is the most operations one committed transaction carried.
	MaxBatch uint64
	// Failed is the number of transactions that failed to begin or
	// commit, or broke mid-batch; their ops were answered with an error
	// or run again.
	Failed uint64
	// Retried is the number of optimistic batches (no savepoints) that
	// met a failing op and ran again with a savepoint per op.
	Retried uint64
	// GroupBytes is the size of the group-state rows that acknowledged
	// writes sent (CreateGroup, CommitEpoch): blobs and text at their
	// length, integers at 8 bytes. Its growth per CommitEpoch is what a
	// commit costs in writes.
	GroupBytes uint64
	// Checkpoints is the number of WAL checkpoints run off the write
	// path (see checkpointer), and CheckpointErrors how many of them
	// failed; a failed checkpoint loses nothing, it is tried again after
	// the next commit, unless it failed with an I/O error, which stops
	// the store (see Stopped).
	Checkpoints, CheckpointErrors uint64
	// LogFrames is the length of the WAL, in frames of a page each, that
	// the last successful checkpoint found. Under steady writes it stays
	// near logRestartFrames, from which the log starts over (see
	// checkpointer).
	LogFrames int64
	// Coalesced is the number of Appends written together with others
	// by one coalesced write (see appendbatch.go) rather than one by one.
	Coalesced uint64
	// Syncs is the number of fsyncs of the log that the syncer ran, each
	// for one or more commits (see durable.go); with WithSyncAtCommit it
	// stays 0 and every commit syncs. ReadWaits is the number of reads
	// that waited for a sync before they answered, counting the writer's
	// own checkpoints, which wait for one too.
	Syncs, ReadWaits uint64
	// Stopped is the failed sync (the syncer's or a checkpoint's, see
	// durable.go) after which the store takes no writes until it is
	// opened again; nil while it takes them.
	Stopped error
}

// Stats reports the writer's counters. It is cheap and safe to call
// concurrently, also after Close.
func (s *Store) Stats() Stats {
	st := Stats{
		Commits:          s.wr.commits.Load(),
		Ops:              s.wr.ops.Load(),
		MaxBatch:         s.wr.maxSeen.Load(),
		Failed:           s.wr.failed.Load(),
		Retried:          s.wr.retried.Load(),
		GroupBytes:       s.groupBytes.Load(),
		Coalesced:        s.wr.coalesced.Load(),
		Checkpoints:      s.ckpt.runs.Load(),
		CheckpointErrors: s.ckpt.errs.Load(),
		LogFrames:        s.ckpt.logFrames.Load(),
	}
	if d := s.wr.dur; d != nil {
		st.Syncs, st.ReadWaits = d.syncs.Load(), d.waits.Load()
	}
	st.Stopped = s.wr.unsynced()
	return st
}
