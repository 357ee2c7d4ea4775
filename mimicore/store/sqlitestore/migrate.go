package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// migration is one step of the schema. Migrations only ever append: a
// released one is never edited, and version n is the same logical schema as
// the PostgreSQL backend's version n.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations lists every schema step, in order, starting at version 1.
//
// Conventions for every table, kept so the PostgreSQL port is mechanical:
// times are INTEGER Unix milliseconds named *_ms (BIGINT there), binary
// values are BLOB (BYTEA), text is TEXT, and expiring tables have an index
// on their expiry for DeleteExpired.
var migrations = []migration{
	{1, "replay cache, seen signatures, spent tokens, signing and peer keys", schemaV1},
	{2, "replay answers are DSResponses without an HTTP status", schemaV2},
	{3, "group state: hubs, groups in parts, Welcome trees, pending proposals", schemaV3},
	{4, "KeyPackages of local clients, local client queues", schemaV4},
	{5, "joiners of Welcome epochs", schemaV5},
	{6, "outbox of messages for other providers", schemaV6},
	{7, "one global queue sequence, group logs, group members, ack cursors", schemaV7},
	{8, "attachment metadata and reference-counted objects", schemaV8},
	{9, "outbox backlog counters per destination", schemaOutboxHeads},
	{10, "no expiry index on the hot write path", schemaV10},
	{11, "sealed signing keys and leases", schemaSealedKeys},
	{12, "Privacy Pass challenges of random redemption contexts", schemaTokenChallenges},
	{13, "the ids of deleted hosted groups", schemaDeletedGroups},
	{14, "the outbox sender's backoffs per destination", schemaOutboxRetries},
	{15, "answers of client-signed requests that succeeded", schemaSignatureAnswers},
	{16, "whether a last-resort KeyPackage was handed out", schemaKeyPackagesHandedOut},
	{17, "claimed KeyPackage refs kept until their NotAfter", schemaKeyPackagesRetained},
	{18, "attachment objects kept until a late commit of their bytes can no longer land", schemaObjectKeep},
	{19, "a group log index that holds what Fetch merges and cuts on", schemaGroupLogView},
	{20, "whether a destination's stored backoff is a 429's", schemaOutboxRetryRateLimited},
	{21, "whether a hosted group was reinitialized", schemaGroupReInit},
	{22, "the ReInit proposal that reinitialized a hosted group", schemaGroupReInitProposal},
	{23, "outbox message bodies stored once per write", schemaOutboxBodies},
}

const schemaV1 = `
CREATE TABLE replay_requests (
	sender     TEXT    NOT NULL,
	request_id BLOB    NOT NULL,
	digest     BLOB    NOT NULL CHECK (length(digest) = 32),
	expires_ms INTEGER NOT NULL,
	-- status and body are NULL while the request is being processed.
	status     INTEGER CHECK (status BETWEEN 100 AND 599),
	body       BLOB,
	CHECK ((status IS NULL) = (body IS NULL)),
	PRIMARY KEY (sender, request_id)
) WITHOUT ROWID;
CREATE INDEX replay_requests_expires ON replay_requests (expires_ms);

CREATE TABLE seen_signatures (
	digest     BLOB    NOT NULL PRIMARY KEY CHECK (length(digest) = 32),
	expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_signatures_expires ON seen_signatures (expires_ms);

CREATE TABLE spent_tokens (
	key        BLOB    NOT NULL PRIMARY KEY,
	expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX spent_tokens_expires ON spent_tokens (expires_ms);

CREATE TABLE signing_keys (
	key_id        BLOB    NOT NULL PRIMARY KEY,
	scheme        INTEGER NOT NULL CHECK (scheme BETWEEN 0 AND 65535),
	public_key    BLOB    NOT NULL,
	not_before_ms INTEGER NOT NULL,
	not_after_ms  INTEGER NOT NULL,
	retired_ms    INTEGER,
	file_name     TEXT    NOT NULL UNIQUE
) WITHOUT ROWID;

CREATE TABLE peer_keys (
	domain         TEXT    NOT NULL,
	key_id         BLOB    NOT NULL,
	scheme         INTEGER NOT NULL CHECK (scheme BETWEEN 0 AND 65535),
	public_key     BLOB    NOT NULL,
	not_before_ms  INTEGER NOT NULL,
	not_after_ms   INTEGER NOT NULL,
	fetched_ms     INTEGER NOT NULL,
	cache_until_ms INTEGER NOT NULL,
	PRIMARY KEY (domain, key_id)
) WITHOUT ROWID;
CREATE INDEX peer_keys_expires ON peer_keys (cache_until_ms);

CREATE TABLE peer_key_failures (
	domain    TEXT    NOT NULL PRIMARY KEY,
	failed_ms INTEGER NOT NULL,
	retry_ms  INTEGER NOT NULL,
	reason    TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX peer_key_failures_expires ON peer_key_failures (retry_ms);
`

// latestVersion is the schema version this code writes.
func latestVersion() int { return migrations[len(migrations)-1].version }

// migrate brings the schema to the latest version in one transaction, so
// a crash leaves either the old or the new schema.
func migrate(ctx context.Context, db *sql.DB, now time.Time) error {
	return migrateTo(ctx, db, migrations, now)
}

func migrateTo(ctx context.Context, db *sql.DB, steps []migration, now time.Time) error {
	tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: see the writer DSN
	if err != nil {
		return fmt.Errorf("migrating schema: %w", err)
	}
	defer rollback(tx)
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER NOT NULL PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_ms INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("migrating schema: creating schema_version: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_version").Scan(&current); err != nil {
		return fmt.Errorf("migrating schema: reading version: %w", err)
	}
	latest := steps[len(steps)-1].version
	if current > latest {
		return fmt.Errorf("migrating schema: database is at version %d, this program knows up to %d: %w",
			current, latest, store.ErrSchemaTooNew)
	}
	if current == latest {
		return nil
	}
	for _, m := range steps {
		if m.version <= current {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("migrating schema to version %d (%s): %w", m.version, m.name, err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO schema_version (version, name, applied_ms) VALUES (?1, ?2, ?3)",
			m.version, m.name, now.UnixMilli()); err != nil {
			return fmt.Errorf("migrating schema to version %d: recording version: %w", m.version, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrating schema: committing: %w", err)
	}
	return nil
}

// schemaV2 drops the HTTP status of cached replay answers: an answer is the
// encoded DSResponse, which names its own outcome (an error's DSError code),
// and statuses are the HTTP layer's business. SQLite cannot drop a column
// that a CHECK constraint names, so the table is rebuilt; completed entries
// keep their bodies, pending ones stay pending (NULL body).
const schemaV2 = `
CREATE TABLE replay_requests_v2 (
	sender     TEXT    NOT NULL,
	request_id BLOB    NOT NULL,
	digest     BLOB    NOT NULL CHECK (length(digest) = 32),
	expires_ms INTEGER NOT NULL,
	-- body is NULL while the request is being processed, then the answer.
	body       BLOB,
	PRIMARY KEY (sender, request_id)
) WITHOUT ROWID;
INSERT INTO replay_requests_v2 (sender, request_id, digest, expires_ms, body)
	SELECT sender, request_id, digest, expires_ms, body FROM replay_requests;
DROP TABLE replay_requests;
ALTER TABLE replay_requests_v2 RENAME TO replay_requests;
CREATE INDEX replay_requests_expires ON replay_requests (expires_ms);
`

// schemaV3 holds the group state of store.GroupStore.
//
// group_hubs names the hub of every group this provider knows, hosted here
// or not. A hosted group has a row in mls_groups (the epoch's head: the
// encoded GroupContext, interim transcript hash, confirmation tag, tree
// width and the epoch's GroupInfo) and one row per tree position in mls_group_nodes (the encoded node,
// NULL when blank, with its tree hash, and the epoch it was written in), so
// a commit rewrites the positions it changed and nothing else. When a
// retained Welcome epoch (mls_group_welcomes) still needs a position's
// version that a commit replaces, the old version moves to
// mls_group_node_history with the epoch range it was current in; the tree
// of epoch e is then the current positions written at or before e plus the
// history rows whose range holds e. mls_groups.id is AUTOINCREMENT so that
// a group deleted and created again never reuses a row id (the in-memory
// state cache relies on it); PostgreSQL's identity columns never reuse
// either. Deleting a group_hubs row cascades to everything of the group.
const schemaV3 = `
CREATE TABLE group_hubs (
	group_id   BLOB    NOT NULL PRIMARY KEY,
	hub        TEXT    NOT NULL,
	hosted     INTEGER NOT NULL CHECK (hosted IN (0, 1)),
	created_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE mls_groups (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	group_id   BLOB    NOT NULL UNIQUE REFERENCES group_hubs (group_id) ON DELETE CASCADE,
	epoch      INTEGER NOT NULL CHECK (epoch >= 0),
	context    BLOB    NOT NULL,
	interim    BLOB    NOT NULL,
	conf_tag   BLOB    NOT NULL,
	width      INTEGER NOT NULL CHECK (width > 0),
	-- the GroupInfo of the current epoch, NULL when none was stored
	group_info BLOB,
	updated_ms INTEGER NOT NULL
);

CREATE TABLE mls_group_nodes (
	gid        INTEGER NOT NULL REFERENCES mls_groups (id) ON DELETE CASCADE,
	node_index INTEGER NOT NULL,
	from_epoch INTEGER NOT NULL,
	node       BLOB,
	hash       BLOB    NOT NULL,
	PRIMARY KEY (gid, node_index)
) WITHOUT ROWID;

CREATE TABLE mls_group_node_history (
	gid        INTEGER NOT NULL REFERENCES mls_groups (id) ON DELETE CASCADE,
	node_index INTEGER NOT NULL,
	from_epoch INTEGER NOT NULL,
	to_epoch   INTEGER NOT NULL,
	node       BLOB,
	PRIMARY KEY (gid, node_index, from_epoch)
) WITHOUT ROWID;
CREATE INDEX mls_group_node_history_to ON mls_group_node_history (gid, to_epoch);

CREATE TABLE mls_group_welcomes (
	gid        INTEGER NOT NULL REFERENCES mls_groups (id) ON DELETE CASCADE,
	epoch      INTEGER NOT NULL,
	expires_ms INTEGER NOT NULL,
	PRIMARY KEY (gid, epoch)
) WITHOUT ROWID;
CREATE INDEX mls_group_welcomes_expires ON mls_group_welcomes (expires_ms);

CREATE TABLE mls_group_proposals (
	gid     INTEGER NOT NULL REFERENCES mls_groups (id) ON DELETE CASCADE,
	ref     BLOB    NOT NULL,
	epoch   INTEGER NOT NULL,
	seq     INTEGER NOT NULL,
	message BLOB    NOT NULL,
	PRIMARY KEY (gid, ref)
) WITHOUT ROWID;
`

// schemaV4 holds store.KeyPackages and store.Queues.
//
// key_packages has a row per published KeyPackage, keyed by its ref.
// claimed_ms is NULL while the package is available and set when it left
// the client's available packages (claimed, or a last-resort package
// replaced); expires_ms is its not_after while available and at most the
// claim plus store.ClaimedKeyPackageRetention after, and DeleteExpired
// removes it from then on. The partial unique index allows one available
// last-resort package per client and suite (PostgreSQL has partial indexes
// too).
//
// A queue is a queue_heads row (the last sequence number given, never
// lowered, and the number and bytes of the messages it holds, so that
// Append checks its limits without counting) and a queue_messages row per
// message, whose bytes are a queue_bodies row shared by every recipient of
// one Append; refs counts the entries that point at a body, which is
// deleted with its last entry. Heads stay when their queue empties, so a
// queue never reuses a sequence number.
const schemaV4 = `
CREATE TABLE key_packages (
	ref          BLOB    NOT NULL PRIMARY KEY,
	client       TEXT    NOT NULL,
	suite        INTEGER NOT NULL CHECK (suite BETWEEN 1 AND 65535),
	key_package  BLOB    NOT NULL,
	not_after_ms INTEGER NOT NULL,
	last_resort  INTEGER NOT NULL CHECK (last_resort IN (0, 1)),
	published_ms INTEGER NOT NULL,
	claimed_ms   INTEGER,
	expires_ms   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX key_packages_available ON key_packages (client, suite, last_resort, not_after_ms)
	WHERE claimed_ms IS NULL;
CREATE UNIQUE INDEX key_packages_last_resort ON key_packages (client, suite)
	WHERE last_resort = 1 AND claimed_ms IS NULL;
CREATE INDEX key_packages_expires ON key_packages (expires_ms);

CREATE TABLE queue_heads (
	client   TEXT    NOT NULL PRIMARY KEY,
	last_seq INTEGER NOT NULL CHECK (last_seq >= 0),
	messages INTEGER NOT NULL CHECK (messages >= 0),
	bytes    INTEGER NOT NULL CHECK (bytes >= 0)
) WITHOUT ROWID;

CREATE TABLE queue_bodies (
	id      INTEGER PRIMARY KEY,
	message BLOB    NOT NULL,
	refs    INTEGER NOT NULL CHECK (refs >= 0)
);

CREATE TABLE queue_messages (
	client     TEXT    NOT NULL,
	seq        INTEGER NOT NULL CHECK (seq > 0),
	body_id    INTEGER NOT NULL REFERENCES queue_bodies (id),
	size       INTEGER NOT NULL,
	group_id   BLOB    NOT NULL,
	sender     TEXT    NOT NULL,
	arrived_ms INTEGER NOT NULL,
	expires_ms INTEGER NOT NULL,
	PRIMARY KEY (client, seq)
) WITHOUT ROWID;
CREATE INDEX queue_messages_expires ON queue_messages (expires_ms);
`

// schemaV5 holds the joiners of store.EpochCommit: a row per KeyPackage
// that the commit starting a retained Welcome epoch added, with the
// signature key of its leaf (store.GroupStore.JoinerKey). Its foreign key
// on the mls_group_welcomes row cascades, so a joiner goes exactly when
// its Welcome tree goes: when a commit ends the tree's epochs, when
// DeleteExpired sweeps it, and with the group.
const schemaV5 = `
CREATE TABLE mls_group_joiners (
	gid           INTEGER NOT NULL,
	epoch         INTEGER NOT NULL,
	ref           BLOB    NOT NULL,
	signature_key BLOB    NOT NULL,
	PRIMARY KEY (gid, epoch, ref),
	FOREIGN KEY (gid, epoch) REFERENCES mls_group_welcomes (gid, epoch) ON DELETE CASCADE
) WITHOUT ROWID;
`

// schemaV6 is the outbox (store.Outbox): the messages accepted here for
// other providers' clients, written in the transaction that accepted them.
// AUTOINCREMENT keeps ids from ever being reused, so an id names one
// message for good and orders a destination's messages.
const schemaV6 = `
CREATE TABLE outbox (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	sender      TEXT    NOT NULL,
	destination TEXT    NOT NULL,
	group_id    BLOB    NOT NULL,
	-- a JSON array of client URIs (text[] in PostgreSQL)
	recipients  TEXT    NOT NULL,
	message     BLOB    NOT NULL,
	enqueued_ms INTEGER NOT NULL
);
CREATE INDEX outbox_destination ON outbox (destination, id);
`

// schemaV7 writes a message to a hosted group's local members once, to the
// group's log, instead of once per member (store.GroupPost).
//
// queue_sequence is the one global sequence, a single row bumped once per
// Append and per group post: personal entries (queue_messages) and group
// log posts take their numbers from it, so a client's stream is ordered
// across both. It starts above every number a queue gave under version 6,
// so that existing cursors stay below new messages. queue_heads.last_seq
// now holds the global number of the queue's last Append.
//
// group_log holds a post per row, its bytes inline (written once). Its
// except_client is ” for none. group_members holds, per local client and
// group, the ranges of the global sequence in which the client is a
// member: it sees the posts with from_seq < seq <= to_seq, to_seq NULL
// while it is a member; the partial unique index allows one open range per
// (group, client). The group id is the MLS group id, not mls_groups.id: a
// member still reads the posts of a deleted group until they expire.
//
// mls_groups.members_known is 1 for a group whose local members
// group_members records (every group CreateGroup stores from version 7
// on) and 0 for one created before: a post to it must bring them
// (store.GroupPost.Members).
//
// queue_cursors holds each client's acknowledged cursor: Fetch skips the
// group log posts at or below it, which Ack cannot delete (other members
// read them); DeleteExpired removes them.
const schemaV7 = `
CREATE TABLE queue_sequence (
	id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	last INTEGER NOT NULL CHECK (last >= 0)
);
INSERT INTO queue_sequence (id, last) SELECT 1, COALESCE(MAX(last_seq), 0) FROM queue_heads;

ALTER TABLE mls_groups ADD COLUMN members_known INTEGER NOT NULL DEFAULT 0 CHECK (members_known IN (0, 1));

CREATE TABLE queue_cursors (
	client TEXT    NOT NULL PRIMARY KEY,
	acked  INTEGER NOT NULL CHECK (acked >= 0)
) WITHOUT ROWID;

CREATE TABLE group_log (
	seq           INTEGER NOT NULL PRIMARY KEY CHECK (seq > 0),
	group_id      BLOB    NOT NULL,
	sender        TEXT    NOT NULL,
	except_client TEXT    NOT NULL,
	message       BLOB    NOT NULL,
	size          INTEGER NOT NULL,
	arrived_ms    INTEGER NOT NULL,
	expires_ms    INTEGER NOT NULL
);
CREATE INDEX group_log_group ON group_log (group_id, seq);
CREATE INDEX group_log_expires ON group_log (expires_ms);

CREATE TABLE group_members (
	client   TEXT    NOT NULL,
	group_id BLOB    NOT NULL,
	from_seq INTEGER NOT NULL CHECK (from_seq >= 0),
	to_seq   INTEGER CHECK (to_seq > from_seq),
	PRIMARY KEY (client, group_id, from_seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX group_members_current ON group_members (group_id, client) WHERE to_seq IS NULL;
`

// schemaOutboxHeads bounds the outbox's backlog per destination
// (store.OutboxBound). It is self-contained, whatever its version number:
// it creates its table and fills it from the outbox rows there are.
//
// outbox.size is what a row counts against the bound
// (store.OutboxMessage.Size): the bytes of its message, group id and
// recipients (each as UTF-8, without the JSON around them). outbox_heads holds, per
// destination, the number and the total size of its rows in outbox, kept
// exact by every write that adds or removes rows (in the same transaction),
// so that a write checks the bound without counting; and the messages
// dropped for it, by reason, which only ever grow. A head stays when its
// destination's backlog empties, keeping its drop counts.
const schemaOutboxHeads = `
ALTER TABLE outbox ADD COLUMN size INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0);
UPDATE outbox SET size = length(message) + length(group_id)
	+ (SELECT COALESCE(SUM(length(CAST(value AS BLOB))), 0) FROM json_each(outbox.recipients));

CREATE TABLE outbox_heads (
	destination   TEXT    NOT NULL PRIMARY KEY,
	messages      INTEGER NOT NULL CHECK (messages >= 0),
	bytes         INTEGER NOT NULL CHECK (bytes >= 0),
	dropped_full  INTEGER NOT NULL DEFAULT 0 CHECK (dropped_full >= 0),
	dropped_reset INTEGER NOT NULL DEFAULT 0 CHECK (dropped_reset >= 0)
) WITHOUT ROWID;
INSERT INTO outbox_heads (destination, messages, bytes)
	SELECT destination, COUNT(*), SUM(size) FROM outbox GROUP BY destination;
`

// schemaV10 drops the expiry indexes of the tables that every hot write
// inserts into: each cost a B-tree insert per row on the writer. Their
// expired rows are found by scans on a read connection instead (see
// scansweep.go).
const schemaV10 = `
DROP INDEX replay_requests_expires;
DROP INDEX seen_signatures_expires;
DROP INDEX spent_tokens_expires;
DROP INDEX queue_messages_expires;
`

// schemaSealedKeys lets several gateways on one database sign as one
// provider (store.SigningKey.Sealed, store.Leases). It is self-contained,
// whatever its version number.
//
// signing_keys.sealed is a key's private key encrypted by the key ring,
// NULL for a key kept in a file. leases holds one row per named lease: its
// holder and when it expires; a row is never deleted, a released lease has
// expires_ms 0.
const schemaSealedKeys = `
ALTER TABLE signing_keys ADD COLUMN sealed BLOB;

CREATE TABLE leases (
	name       TEXT    NOT NULL PRIMARY KEY,
	holder     TEXT    NOT NULL,
	expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
`

// schemaTokenChallenges holds store.TokenChallenges: the digests of the
// Privacy Pass challenges minted with random redemption contexts, until they
// expire. It is self-contained, whatever its version number.
const schemaTokenChallenges = `
CREATE TABLE token_challenges (
	digest     BLOB    NOT NULL PRIMARY KEY CHECK (length(digest) = 32),
	token_type INTEGER NOT NULL CHECK (token_type BETWEEN 0 AND 65535),
	expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX token_challenges_expires ON token_challenges (expires_ms);
`

// schemaDeletedGroups holds the id of every group deleted on this DS
// (store.GroupStore.DeleteGroup), so that the id is never used again: not
// by a new group, and not as the id of a group another provider claims to
// host. A row is never deleted. It is self-contained, whatever its version
// number.
const schemaDeletedGroups = `
CREATE TABLE deleted_groups (
	group_id   BLOB    NOT NULL PRIMARY KEY,
	deleted_ms INTEGER NOT NULL
) WITHOUT ROWID;
`

// schemaOutboxRetries keeps the outbox sender's backoffs per destination
// (store.OutboxRetries), so that a restart resumes them: one row per
// destination that is failing, its group backoffs encoded in groups
// (internal/retryenc). It is self-contained, whatever its version number.
const schemaOutboxRetries = `
CREATE TABLE outbox_retries (
	destination     TEXT    NOT NULL PRIMARY KEY,
	failures        INTEGER NOT NULL,
	last_error      TEXT    NOT NULL,
	last_attempt_ms INTEGER NOT NULL,
	level_ms        INTEGER NOT NULL,
	next_ms         INTEGER NOT NULL,
	groups          BLOB    NOT NULL
) WITHOUT ROWID;
`

// schemaSignatureAnswers adds to a seen signature the answer of its
// request once it succeeded (store.SignatureAnswer): NULL while it is in
// progress, after it failed, and for a delivery's dedup key. It goes with
// its row, so it expires with it.
const schemaSignatureAnswers = `
ALTER TABLE seen_signatures ADD COLUMN answer BLOB;
`

// schemaKeyPackagesHandedOut records whether a claim ever answered a
// last-resort KeyPackage (key_packages.handed_out, set in the claim's
// write): a replaced one that was never handed out cannot be named by a
// Welcome, so its replacement deletes it instead of keeping it for
// store.ClaimedKeyPackageRetention. Single-use packages leave it 0 (their
// claim retires them). The last-resort packages stored before it may have
// been handed out, so they count as handed out. It is self-contained,
// whatever its version number.
const schemaKeyPackagesHandedOut = `
ALTER TABLE key_packages ADD COLUMN handed_out INTEGER NOT NULL DEFAULT 0 CHECK (handed_out IN (0, 1));
UPDATE key_packages SET handed_out = 1 WHERE last_resort = 1;
`

// schemaKeyPackagesRetained keeps the row of a claimed KeyPackage (or of
// a replaced last-resort one a claim handed out) until its NotAfter
// (expires_ms), so that publishing it again is refused as long as it
// could be available (one init key is handed out once), and its bytes
// only for store.ClaimedKeyPackageRetention: retained_ms is when they go,
// NULL while the package is available and once DeleteExpired dropped them
// (emptying key_package and client). Rows claimed before it get the same.
// It is self-contained, whatever its version number.
const schemaKeyPackagesRetained = `
ALTER TABLE key_packages ADD COLUMN retained_ms INTEGER;
UPDATE key_packages SET retained_ms = expires_ms, expires_ms = not_after_ms WHERE claimed_ms IS NOT NULL;
CREATE INDEX key_packages_retained ON key_packages (retained_ms) WHERE retained_ms IS NOT NULL;
`

// schemaObjectKeep adds to an attachment object the time until which its
// row is kept once unreferenced (store.Attachment.KeepObject): the
// deadline of its upload plus the time a backend may still take to make
// the bytes visible after the gateway stopped waiting. A sweep before then
// deletes the bytes but keeps the row, so bytes that land later are
// deleted by the next sweep, never left listed by nothing. Rows written
// before get 0: kept no longer than before. It is self-contained,
// whatever its version number.
const schemaObjectKeep = `
ALTER TABLE attachment_objects ADD COLUMN keep_ms INTEGER NOT NULL DEFAULT 0;
`

// schemaGroupLogView replaces the group log's (group_id, seq) index with
// one that also holds every column a member's Fetch and Ack read of a
// post but its bytes. A group_log row holds its message before its size,
// so a query that read the row to learn a post's size, sender or expiry
// read its whole message, overflow pages and all: a client catching up
// on a backlog of large posts made SQLite read every post up to the
// Fetch's count bound (200 MiB for 200 posts of 1 MiB) to answer 4 MiB
// of them. With the index, a Fetch merges and cuts the list on it and
// reads the bytes of the posts it answers only. Building it reads the log
// once, at the upgrade. It is self-contained, whatever its version number.
const schemaGroupLogView = `
CREATE INDEX group_log_view ON group_log (group_id, seq, expires_ms, except_client, size, sender, arrived_ms);
DROP INDEX group_log_group;
`

// schemaOutboxRetryRateLimited records whether a destination's stored
// backoff is a 429's (store.OutboxRetry.RateLimited), so that a restarted
// sender keeps it when the destination's requests arrive, as the sender
// that stored it did. Rows stored before it get 0: their backoff ends at
// the destination's first request, as before. It is self-contained,
// whatever its version number.
const schemaOutboxRetryRateLimited = `
ALTER TABLE outbox_retries ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0 CHECK (rate_limited IN (0, 1));
`

// schemaGroupReInit records, per hosted group, whether a commit covering a
// ReInit proposal was stored (store.EpochCommit.ReInit): such a group
// takes no commit, proposal or message any more (store.ErrReInitialized).
// Groups stored before it are not marked, even one whose last commit
// covered a ReInit: the store keeps no commit to tell. It is
// self-contained, whatever its version number.
const schemaGroupReInit = `
ALTER TABLE mls_groups ADD COLUMN reinit INTEGER NOT NULL DEFAULT 0 CHECK (reinit IN (0, 1));
`

// schemaGroupReInitProposal keeps, with the mark of a reinitialized group
// (schemaGroupReInit), the ReInit proposal its commit covered
// (store.EpochCommit.ReInit, encoded as RFC 9420 §12.1.5 has it), which
// store.GroupStore.ReInitOf returns with the group's epoch. Groups marked
// before it keep NULL: ReInitOf does not find them, so the reinit PSK of
// such a group is refused. It is self-contained, whatever its version
// number.
const schemaGroupReInitProposal = `
ALTER TABLE mls_groups ADD COLUMN reinit_proposal BLOB CHECK (reinit_proposal IS NULL OR reinit = 1);
`

// schemaOutboxBodies stores an outbox message's bytes once per write
// instead of once per destination: a message fanned out to N providers is
// N outbox rows referencing one outbox_bodies row (the rows of one write
// whose Message bytes are equal share it). refs counts the outbox rows
// that reference a body; the trigger outbox_release_body, run for every
// outbox row deleted however it goes (delivered, reset, given up), takes
// it off its body's refs and deletes the body with its last row, in the
// deleting statement's transaction. There is no foreign key: SQLite would
// check it by scanning outbox for every body deleted, since nothing else
// needs an index on body_id; the trigger and refs keep the link. Existing
// rows each get a body of their own, with the row's id. The outbox is
// then rebuilt without its message column (a new table, the rows copied,
// its AUTOINCREMENT sequence and index kept), not by ALTER TABLE DROP
// COLUMN: that rewrites every row in place under a statement journal,
// which temp_store(MEMORY) holds in memory, about twice the outbox at once
// (TestMigrationOutboxBodiesMemory). outbox.size, what
// the destination's bound counts, is unchanged: each destination's bound
// is about its own backlog, whatever the disk holds. It is self-contained,
// whatever its version number.
const schemaOutboxBodies = `
CREATE TABLE outbox_bodies (
	id      INTEGER PRIMARY KEY,
	message BLOB    NOT NULL,
	refs    INTEGER NOT NULL CHECK (refs > 0)
);
INSERT INTO outbox_bodies (id, message, refs) SELECT id, message, 1 FROM outbox;
CREATE TABLE outbox_new (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	sender      TEXT    NOT NULL,
	destination TEXT    NOT NULL,
	group_id    BLOB    NOT NULL,
	recipients  TEXT    NOT NULL,
	enqueued_ms INTEGER NOT NULL,
	size        INTEGER NOT NULL DEFAULT 0 CHECK (size >= 0),
	body_id     INTEGER NOT NULL DEFAULT 0
);
INSERT INTO outbox_new (id, sender, destination, group_id, recipients, enqueued_ms, size, body_id)
	SELECT id, sender, destination, group_id, recipients, enqueued_ms, size, id FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_destination ON outbox (destination, id);
CREATE TRIGGER outbox_release_body AFTER DELETE ON outbox BEGIN
	DELETE FROM outbox_bodies WHERE id = OLD.body_id AND refs = 1;
	UPDATE outbox_bodies SET refs = refs - 1 WHERE id = OLD.body_id;
END;
`
