// Package pgstore is the store.Store of a cluster: the gateway's state in a
// PostgreSQL database that several gateways share, through
// github.com/jackc/pgx/v5 and a connection pool (pgxpool).
//
// # Durability and isolation
//
// Every write commits before its method returns, and PostgreSQL flushes
// the commit's WAL before it answers (synchronous_commit on, the default;
// concurrent commits share a flush, PostgreSQL's own group commit). So an
// acknowledged write survives a crash of the gateway and of the database
// server. Each session sets synchronous_commit on, whatever the server's
// configuration says, unless the DSN asks for another durable level; a DSN
// that turns synchronous_commit off, under any spelling, is refused.
// Every method with a check-and-set decides its outcome in the database,
// not in this process, so exactly-once holds across gateways:
//
//   - Reserve, RecordReplay, SeenSignature and MarkSpent are one INSERT ...
//     ON CONFLICT DO UPDATE ... WHERE (the row is replaced only when
//     expired) RETURNING: a returned row means first use. When no row
//     comes back, the entry that holds the key is read by a second
//     statement; if that entry is gone or expired by then (a concurrent
//     Release or sweep), the operation starts again.
//   - Complete and Release are one conditional UPDATE or DELETE; when it
//     changes nothing, a read tells ErrNotFound from ErrConflict.
//   - Checks over many rows take a transaction-scoped advisory lock
//     first: a client's KeyPackage publishes (the count bound), an
//     attachment's group and uploader quotas, a peer domain's keys (their
//     replacement), and the outbox's writes (whose identity ids then
//     commit in order). The numbered queue writes
//     lock the one queue_sequence row until they commit, for the same
//     reason.
//   - Operations of several statements run in one READ COMMITTED
//     transaction (every session's default level, whatever the
//     database's configuration says) and take row locks (SELECT ... FOR UPDATE, or the lock
//     an UPDATE or ON CONFLICT takes) before they decide; a transaction
//     that fails with a serialization failure or a deadlock is run again.
//
// Reads (lookups, listings) run outside the write path, on the pool.
//
// # Schema
//
// Open applies the versioned migrations of this package (the same logical
// schema, version for version, as package sqlitestore's), each in the one
// transaction that holds a transaction-scoped advisory lock
// (pg_advisory_xact_lock), so gateways that start at once on an empty
// database apply them once: the others wait for the lock, then find the
// schema current. A database whose version is newer than this code is
// refused (store.ErrSchemaTooNew). Several Stores, in one process or many,
// may share a database: unlike sqlitestore, nothing derived from the
// database is kept in memory, and there is no store.ErrInUse.
//
// # Clocks
//
// Expiry and lease decisions use the clock of the gateway that makes
// them, not the database's: the now that DeleteExpired, AcquireLease and
// OutboxClaim are given, and Options.Now (time.Now by default) in the
// expiry checks of Reserve, RecordReplay, SeenSignature and MarkSpent.
// The gateways on
// one database must keep their clocks synchronised (NTP): one whose clock
// is ahead by d treats the others' records as expired d early, so its
// sweep may remove a seen signature or a spent token that another gateway
// still counts on (a replay accepted within d of its expiry), and it may
// take over a lease d before it runs out. The store cannot clamp these
// times to the database's clock: DeleteExpired's contract is to remove
// what expired by the now it is given.
//
// # Wake-ups across gateways
//
// WatchQueue's waiters are woken by the writes of every Store on the
// database, in this process or another. A write that stores messages for
// queues (an Append; the fan-out of Deliver, CommitEpoch and AddProposal,
// personal messages and group log posts) sends, in its own transaction,
// pg_notify on the channel mimi_queues with a compact payload: a line per
// queue (client URI and sequence number) or per group post (group id, the
// excepted sender and the sequence number), in payloads under NOTIFY's
// 8000-byte limit. PostgreSQL delivers it when the transaction commits,
// never if it rolls back. The writing Store wakes its own waiters itself,
// after the commit. Each Store keeps one connection outside the pool that
// LISTENs on the channel; a goroutine turns what it hears into wake-ups of
// the Store's store.Notifier (a group post costs the read of the group's
// current local members that a local post costs, and none when nobody
// waits) and ignores what the pool's own connections sent. After 30s
// without a notification it pings its connection, and takes no answer
// within 10s for a failure: a half-open connection (a peer gone without a
// word) carries no error for minutes. Should that connection fail, the
// goroutine connects again, waiting from 50ms up to 5s between attempts,
// and once it listens again wakes every waiter: a notification may have
// been missed, and a woken waiter fetches again. Close stops it. Open fails when it cannot LISTEN.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/groupcache"
)

// DefaultMaxConns is the pool size when Options.MaxConns is zero.
const DefaultMaxConns = 16

// maxRetries bounds how often an operation that lost a race (a
// serialization failure, a deadlock, an entry gone between two statements)
// runs again before its error is returned.
const maxRetries = 10

// Options configure Open. The zero value is usable.
type Options struct {
	// MaxConns is the most connections the pool opens to the database,
	// and so the most operations of this Store that run at once; zero
	// means DefaultMaxConns. A MaxConns in the DSN (pool_max_conns) is
	// overridden.
	MaxConns int32
	// Now is the store's clock; nil means time.Now. Tests replace it.
	Now func() time.Time
	// GroupCacheNodes bounds the in-memory cache of group states, in tree
	// positions (see DefaultGroupCacheNodes, its default when zero); a
	// negative value disables it.
	GroupCacheNodes int
}

// Store is a store.Store on a PostgreSQL database. It is safe for
// concurrent use.
type Store struct {
	pool   *pgxpool.Pool
	now    func() time.Time
	notify *store.Notifier
	listen listener
	// hubWatch holds the functions of WatchHubForgets.
	hubWatch hubWatchers
	cache    *groupcache.Cache
	closed   atomic.Bool
	// trips counts the pool's round trips to the database (Stats).
	trips roundTrips
	// outboxLimits are the bounds of SetOutboxLimits, nil for the
	// defaults.
	outboxLimits atomic.Pointer[store.OutboxLimits]
}

// Open connects to the database dsn names (a libpq key=value string or a
// postgres:// URL), migrates its schema to the latest version and returns
// a Store on it.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The DSN may hold a password: pgx's error does not repeat it.
		return nil, fmt.Errorf("opening postgres store: parsing the DSN: %w", err)
	}
	// A nil error is a durable write (package store), also when the
	// server or the database is configured with synchronous_commit off:
	// every session sets it on, unless the DSN names another durable
	// level (local, remote_write, remote_apply).
	// PostgreSQL reads the level's name regardless of case, and off
	// under the spellings of false too. The DSN's options (-c) may set it
	// as well: Open reads the level of a session too (checkDurable).
	switch v := cfg.ConnConfig.RuntimeParams["synchronous_commit"]; strings.ToLower(v) {
	case "":
		cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	case "off", "false", "no", "0":
		return nil, fmt.Errorf("opening postgres store: synchronous_commit=%s loses acknowledged writes in a crash: %w", v, store.ErrInvalid)
	}
	// The operations rely on READ COMMITTED (each statement sees the
	// rows committed before it, a locked row is read again once its
	// lock is released), also where the database's default level is
	// another: quotas and count bounds would be exceeded, and lone
	// statements fail with serialization errors that are not run again.
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "read committed"
	if opts.MaxConns < 0 {
		return nil, fmt.Errorf("opening postgres store: pool size %d: %w", opts.MaxConns, store.ErrInvalid)
	}
	cfg.MaxConns = opts.MaxConns
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MinConns > cfg.MaxConns {
		cfg.MinConns = cfg.MaxConns
	}
	cacheNodes := opts.GroupCacheNodes
	if cacheNodes == 0 {
		cacheNodes = DefaultGroupCacheNodes
	}
	s := &Store{now: opts.Now, notify: store.NewNotifier(), cache: groupcache.New(cacheNodes)}
	if s.now == nil {
		s.now = time.Now
	}
	// The listener ignores the notifications of the pool's own
	// connections: their writes woke this Store's waiters already.
	s.listen.cfg = cfg.ConnConfig.Copy()
	// The pool's connections count their round trips (Stats); the
	// listener's connection, whose LISTEN is once per connection, does not.
	cfg.ConnConfig.Tracer = &s.trips
	cfg.AfterConnect = func(_ context.Context, c *pgx.Conn) error {
		s.listen.ours.Store(c.PgConn().PID(), struct{}{})
		return nil
	}
	cfg.BeforeClose = func(c *pgx.Conn) { s.listen.ours.Delete(c.PgConn().PID()) }
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening postgres store: %w", err)
	}
	s.pool = pool
	if err := checkDurable(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("opening postgres store: %w", err)
	}
	if err := migrate(ctx, pool, s.now()); err != nil {
		pool.Close()
		return nil, fmt.Errorf("opening postgres store: %w", err)
	}
	if err := s.startListening(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("opening postgres store: %w", err)
	}
	return s, nil
}

// checkDurable refuses a pool whose sessions run with synchronous_commit
// off, however the DSN spelled or set it: PostgreSQL answers before the
// commit is flushed then, and a crash loses acknowledged writes.
func checkDurable(ctx context.Context, pool *pgxpool.Pool) error {
	var v string
	if err := pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&v); err != nil {
		return fmt.Errorf("reading synchronous_commit: %w", err)
	}
	if v == "off" {
		return fmt.Errorf("synchronous_commit=off loses acknowledged writes in a crash: %w", store.ErrInvalid)
	}
	return nil
}

// Close stops the listener, closes the pool, waiting for the operations
// in progress, and wakes every WatchQueue waiter. Later calls fail with
// store.ErrClosed; closing twice is harmless.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.stopListening()
	s.notify.Close()
	s.pool.Close()
	return nil
}

// checkOpen fails with store.ErrClosed after Close.
func (s *Store) checkOpen(doing string) error {
	if s.closed.Load() {
		return fmt.Errorf("%s: %w", doing, store.ErrClosed)
	}
	return nil
}

// fail wraps err with what was being done; a backend error of a store
// closed meanwhile becomes store.ErrClosed.
func (s *Store) fail(doing string, err error) error {
	if s.closed.Load() && !errors.Is(err, store.ErrInvalid) && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("%s: %w", doing, store.ErrClosed)
	}
	return fmt.Errorf("%s: %w", doing, err)
}

// nowMs is the store's clock in Unix milliseconds.
func (s *Store) nowMs() int64 { return s.now().UnixMilli() }

// inTx runs fn in a READ COMMITTED transaction and commits it, running it
// again (up to maxRetries times) when PostgreSQL aborts it for a
// serialization failure or a deadlock, or when fn returns errRetry. fn
// must be a function of its transaction: only the committed run counts.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	var err error
	for range maxRetries {
		err = pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, fn)
		if !retryable(err) {
			return err
		}
	}
	return err
}

// errRetry asks inTx or a retry loop to run an operation again: it lost a
// race between two of its statements.
var errRetry = errors.New("lost a race with a concurrent write")

// retryable reports whether err is a transient failure of a transaction
// that running it again may fix.
func retryable(err error) bool {
	if errors.Is(err, errRetry) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "40001", "40P01": // serialization_failure, deadlock_detected
			return true
		}
	}
	return false
}

// uniqueViolation reports whether err is a unique constraint's refusal.
func uniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// nonNil returns b, or an empty slice for nil: a completed answer's body
// is stored as an empty bytea, never NULL (which means pending).
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Interface guard.
var _ store.Store = (*Store)(nil)
