// Package store defines the gateway's durable state: small interfaces, one
// job each, that a storage backend implements, and the errors they return.
//
// The embedded backend is package sqlitestore (one SQLite file under the
// gateway's data_dir); a PostgreSQL backend for clusters implements the same
// interfaces. Package storetest holds the contract tests every backend runs,
// so the semantics documented here are checked, not just described.
//
// # Semantics shared by every interface
//
//   - Every method that returns a nil error has made its write durable: a
//     write that was acknowledged survives a crash of the process (kill -9)
//     and, for the SQLite backend, a power loss.
//   - Methods copy the byte slices they are given and never return a slice
//     that aliases the store's memory: the caller owns both.
//   - Times are kept with millisecond precision. An expiry is rounded up to
//     the next millisecond, so a record lives at least until the time the
//     caller asked for; a record is alive while now < expiry. "now" is the
//     backend's clock (time.Now unless the backend lets a test replace it),
//     except for DeleteExpired, which takes it as an argument.
//   - Expired records behave as absent at once, whether or not DeleteExpired
//     has removed them yet. DeleteExpired only reclaims space.
//   - Argument errors wrap ErrInvalid, a record that does not exist
//     ErrNotFound, a write that contradicts a stored record ErrConflict, and
//     use after Close ErrClosed. Any other error means the backend is
//     unavailable (answered as backend_unavailable); the operation may or may not
//     have taken effect, and the caller must treat it as not done.
//   - Methods honour ctx where they block waiting (for a lock, a connection
//     or a place in a write queue): a call whose ctx ends there returns an
//     error that wraps ctx.Err(). A write that has started runs to the end
//     of its transaction, whose length the backend bounds, and the call
//     returns its outcome. So a caller that gives up learns nothing new: an
//     error wrapping ctx.Err() is like any other non-nil error, the write
//     may or may not have taken effect. Backends may promise more (see
//     package sqlitestore).
//
// # How backends execute writes
//
// Every durable write is one operation: a function over a transaction that
// reads what it must check (Reserve's existing entry, an existing signing
// key) and writes, and whose outcome (a Reservation, a first use, an
// ErrNotFound or ErrConflict) is decided inside that transaction. A backend
// need not give each operation a transaction and a disk flush of its own:
// it may run a group of concurrent operations in one transaction, provided
//
//   - each caller is answered only after the commit that holds its write
//     (a nil error is still a durable write), and every caller of a group
//     whose commit fails gets an error;
//   - an operation that fails inside a group fails alone: its own writes
//     are undone (a savepoint) and the others commit, and its error,
//     ErrNotFound and ErrConflict included, reaches its caller unchanged;
//   - an operation sees the writes of those before it in its group, so
//     check-and-set stays atomic (of N concurrent MarkSpent calls for one
//     key exactly one reports first use, whether or not they share a
//     group);
//   - groups are bounded in size and taken in arrival order, so no caller
//     waits behind more than a bounded amount of work, and a maintenance
//     operation (DeleteExpired) is split into operations of bounded work
//     that queue like the others.
//
// The SQLite backend has one writer goroutine that takes every operation
// queued while it was busy (up to a bound) and runs them between BEGIN
// IMMEDIATE and COMMIT, each inside a SAVEPOINT: one fsync for the group
// (see package sqlitestore). A PostgreSQL backend has no single writer to
// protect, but the same shape pays there too: it may run a group of
// operations in one transaction with a savepoint each, sent as one pgx
// Batch (one round trip, one WAL flush at COMMIT); or run each operation in
// its own short transaction over a pool and pipeline them, relying on
// PostgreSQL's own group commit (commit_delay). Row locks (SELECT ... FOR
// UPDATE, INSERT ... ON CONFLICT) take the place of BEGIN IMMEDIATE. Reads
// that are not part of a check-and-set (lookups, listings) never go
// through the write path.
//
// # Schema and what follows
//
// A backend keeps a schema version and migrates to its latest on open, in
// one transaction; it refuses a database whose version is newer than the
// code (ErrSchemaTooNew) rather than guess. Version n means the same logical
// schema in every backend, so data can move between them. Migrations only
// ever append: a released migration is never edited.
//
// Version 1 holds the replay cache, the client-signature replay set, spent
// Privacy Pass tokens, the gateway's signing-key metadata and the peer
// verification-key cache; version 3 the group state of GroupStore: per
// group the hub provider, the epoch's public state in parts (a row per tree
// position, so a commit writes only the positions it changed), the trees of
// old epochs kept for lagging Welcome joiners (at most 14 days or 64
// epochs) and the pending proposals; version 4 the KeyPackages of local
// clients (KeyPackages: single-use packages consumed atomically, one
// last-resort package per suite handed out but never consumed) and their
// queues (Queues: per client an ordered queue with gapless sequence
// numbers, a fan-out's bytes stored once); version 8 the attachment
// metadata of Attachments: per token (its SHA-256) the group, uploader,
// size, content hash and a reference-counted object, whose bytes live in a
// storage backend (files, an object store), never in the database; version
// 9 the outbox's counters per destination (messages, bytes, drops), which
// bound a dead peer's backlog in O(1) per write. The DS
// state that later issues add gets its own interface here and its own
// appended migration in each backend:
//
//   - duplicate detection of delivered messages, per client, by message
//     hash (issue 10: a retried deliver_message under a fresh request id).
//
// Each of those read-modify-write operations is, like Reserve and MarkSpent
// here, one conditional statement (INSERT ... ON CONFLICT ... WHERE, UPDATE
// ... WHERE) run as one operation of the write path above, which SQLite
// serialises with BEGIN IMMEDIATE and PostgreSQL with row locks.
package store

import (
	"context"
	"errors"
	"io"
	"time"
)

// Errors returned, wrapped, by every backend. Test with errors.Is.
var (
	// ErrNotFound reports that the record an operation needs does not
	// exist or has expired.
	ErrNotFound = errors.New("not found")
	// ErrConflict reports a write that contradicts a stored record.
	ErrConflict = errors.New("conflict")
	// ErrInvalid reports an argument the store refuses: empty or oversized
	// identifiers, a status or body out of range, a file name that is not a
	// plain base name.
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed reports use of a store after Close.
	ErrClosed = errors.New("store closed")
	// ErrSchemaTooNew reports a database written by a newer version of the
	// code; the store refuses to open it.
	ErrSchemaTooNew = errors.New("database schema is newer than this program")
	// ErrInUse reports a database that another open store (in this
	// process or another) holds for itself; a backend that keeps state
	// derived from its database in memory opens it for one store at a
	// time.
	ErrInUse = errors.New("database in use by another store")
)

// Limits on the values a store accepts; larger values are ErrInvalid.
const (
	// MaxAnswerSize bounds the body of a cached answer. It holds the
	// largest provider answer: a key_packages answer of 64 KeyPackages of
	// MaxKeyPackageSize (1 MiB), with its framing (version, type, the
	// vectors' lengths: 8 bytes), so 4 KiB over 1 MiB.
	MaxAnswerSize = 1<<20 + 4<<10
	// MaxIDSize bounds request ids, key ids, spent-token keys and other
	// binary identifiers.
	MaxIDSize = 255
	// MaxDomainSize bounds sender and peer domains (an FQDN is at most 253
	// bytes).
	MaxDomainSize = 253
	// MaxPublicKeySize bounds public keys (ML-DSA-87 keys are 2592 bytes).
	MaxPublicKeySize = 4096
	// MaxReasonSize bounds the reason recorded for a failed key fetch.
	MaxReasonSize = 1024
	// MaxFileNameSize bounds the file name of a signing key.
	MaxFileNameSize = 255
	// MaxSealedKeySize bounds a signing key's sealed private key.
	MaxSealedKeySize = 16 << 10
	// MaxLeaseNameSize bounds a lease's name and its holder's id.
	MaxLeaseNameSize = 255
)

// Store is everything the gateway keeps. A Store is safe for concurrent
// use by many goroutines.
type Store interface {
	ReplayCache
	ReplayLog
	SeenSignatures
	SpentNonces
	TokenChallenges
	KeyStore
	GroupStore
	KeyPackages
	Queues
	Outbox
	Attachments
	OutboxAdder
	OutboxBound
	OutboxLeases
	OutboxRetries
	Sweeper
	// Close releases the store. Calls after Close fail with ErrClosed;
	// closing twice is harmless.
	io.Closer
}

// Sweeper reclaims the space of expired records.
type Sweeper interface {
	// DeleteExpired removes every record whose expiry is at or before now
	// (replay entries, seen signatures, spent tokens, peer keys, peer
	// fetch failures, Welcome trees past WelcomeTreeLifetime with the
	// old tree nodes only they kept, KeyPackages past their NotAfter and
	// the bytes of claimed ones past ClaimedKeyPackageRetention, and
	// queued messages past their expiry)
	// and reports how many it removed. It
	// works in small transactions so writers are not held up; on error,
	// the records removed so far stay removed. The gateway's own signing keys are not
	// swept: see SigningKeys.DeleteSigningKey. now is the caller's clock:
	// where several gateways use one backend (pgstore), one whose clock
	// is ahead removes the others' records early, so their clocks must
	// agree.
	DeleteExpired(ctx context.Context, now time.Time) (int64, error)
}
