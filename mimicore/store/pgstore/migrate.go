package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// migration is one step of the schema. Migrations only ever append: a
// released one is never edited. Versions 1 to 9 are the same logical
// schema as package sqlitestore's; from there the two number apart
// (sqlitestore's version 10 drops an index only it had, so its 11 is
// version 10 here, and so on), and each store's own number is what its
// database records.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations lists every schema step, in order, starting at version 1.
//
// Conventions, those of sqlitestore: times are BIGINT Unix milliseconds
// named *_ms, binary values BYTEA, and expiring tables have an index on
// their expiry for DeleteExpired. Text that is listed in byte order or
// matched by prefix (client URIs, domains) is COLLATE "C", so that order
// and index ranges are bytewise whatever the database's default collation.
var migrations = []migration{
	{1, "replay cache, seen signatures, spent tokens, signing and peer keys", schemaV1},
	{2, "replay answers are DSResponses without an HTTP status", schemaV2},
	{3, "group state: hubs, groups in parts, Welcome trees, pending proposals", schemaV3},
	{4, "KeyPackages of local clients, local client queues", schemaV4},
	{5, "joiners of Welcome epochs", schemaV5},
	{6, "outbox of messages for other providers", schemaV6},
	{7, "one global queue sequence, group logs, group members, ack cursors", schemaV7},
	{8, "attachment metadata and reference-counted objects", schemaV8},
	{9, "outbox backlog counters per destination", schemaV9},
	{10, "sealed signing keys and leases", schemaSealedKeys},
	{11, "Privacy Pass challenges of random redemption contexts", schemaTokenChallenges},
	{12, "the ids of deleted hosted groups", schemaDeletedGroups},
	{13, "unreferenced attachment objects indexed by name", schemaUnreferencedByName},
	{14, "the outbox sender's backoffs per destination", schemaOutboxRetries},
	{15, "answers of client-signed requests that succeeded", schemaSignatureAnswers},
	{16, "whether a last-resort KeyPackage was handed out", schemaKeyPackagesHandedOut},
	{17, "claimed KeyPackage refs kept until their NotAfter", schemaKeyPackagesRetained},
	{18, "attachment objects kept until a late commit of their bytes can no longer land", schemaObjectKeep},
	{19, "whether a destination's stored backoff is a 429's", schemaOutboxRetryRateLimited},
	{20, "whether a hosted group was reinitialized", schemaGroupReInit},
	{21, "the ReInit proposal that reinitialized a hosted group", schemaGroupReInitProposal},
	{22, "outbox message bodies stored once per write", schemaOutboxBodies},
}

// migrationLock is the key of the advisory lock that serialises the
// migrations of gateways starting at once on one database: the bytes
// "mimi-mig" as a big-endian int64.
const migrationLock int64 = 0x6d696d692d6d6967

// latestVersion is the schema version this code writes.
func latestVersion() int { return migrations[len(migrations)-1].version }

// migrate brings the schema to the latest version in one transaction that
// holds the migration lock, so a crash leaves the old or the new schema,
// and of gateways opening one database at once the first applies the
// migrations and the others, once they get the lock, find nothing to do.
func migrate(ctx context.Context, pool *pgxpool.Pool, now time.Time) error {
	return migrateTo(ctx, pool, migrations, now)
}

func migrateTo(ctx context.Context, pool *pgxpool.Pool, steps []migration, now time.Time) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
			return fmt.Errorf("taking the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
			version    INTEGER NOT NULL PRIMARY KEY,
			name       TEXT    NOT NULL,
			applied_ms BIGINT  NOT NULL
		)`); err != nil {
			return fmt.Errorf("creating schema_version: %w", err)
		}
		var current int
		if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_version").Scan(&current); err != nil {
			return fmt.Errorf("reading the version: %w", err)
		}
		latest := steps[len(steps)-1].version
		if current > latest {
			return fmt.Errorf("database is at version %d, this program knows up to %d: %w",
				current, latest, store.ErrSchemaTooNew)
		}
		for _, m := range steps {
			if m.version <= current {
				continue
			}
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("migrating to version %d (%s): %w", m.version, m.name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO schema_version (version, name, applied_ms) VALUES ($1, $2, $3)",
				m.version, m.name, now.UnixMilli()); err != nil {
				return fmt.Errorf("migrating to version %d: recording the version: %w", m.version, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrating schema: %w", err)
	}
	return nil
}

const schemaV1 = `
CREATE TABLE replay_requests (
	sender     TEXT    COLLATE "C" NOT NULL,
	request_id BYTEA   NOT NULL,
	digest     BYTEA   NOT NULL CHECK (length(digest) = 32),
	expires_ms BIGINT  NOT NULL,
	-- status and body are NULL while the request is being processed.
	status     INTEGER CHECK (status BETWEEN 100 AND 599),
	body       BYTEA,
	CHECK ((status IS NULL) = (body IS NULL)),
	PRIMARY KEY (sender, request_id)
);
CREATE INDEX replay_requests_expires ON replay_requests (expires_ms);

CREATE TABLE seen_signatures (
	digest     BYTEA  NOT NULL PRIMARY KEY CHECK (length(digest) = 32),
	expires_ms BIGINT NOT NULL
);
CREATE INDEX seen_signatures_expires ON seen_signatures (expires_ms);

CREATE TABLE spent_tokens (
	key        BYTEA  NOT NULL PRIMARY KEY,
	expires_ms BIGINT NOT NULL
);
CREATE INDEX spent_tokens_expires ON spent_tokens (expires_ms);

CREATE TABLE signing_keys (
	key_id        BYTEA   NOT NULL PRIMARY KEY,
	scheme        INTEGER NOT NULL CHECK (scheme BETWEEN 0 AND 65535),
	public_key    BYTEA   NOT NULL,
	not_before_ms BIGINT  NOT NULL,
	not_after_ms  BIGINT  NOT NULL,
	retired_ms    BIGINT,
	file_name     TEXT    NOT NULL UNIQUE
);

CREATE TABLE peer_keys (
	domain         TEXT    COLLATE "C" NOT NULL,
	key_id         BYTEA   NOT NULL,
	scheme         INTEGER NOT NULL CHECK (scheme BETWEEN 0 AND 65535),
	public_key     BYTEA   NOT NULL,
	not_before_ms  BIGINT  NOT NULL,
	not_after_ms   BIGINT  NOT NULL,
	fetched_ms     BIGINT  NOT NULL,
	cache_until_ms BIGINT  NOT NULL,
	PRIMARY KEY (domain, key_id)
);
CREATE INDEX peer_keys_expires ON peer_keys (cache_until_ms);

CREATE TABLE peer_key_failures (
	domain    TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
	failed_ms BIGINT NOT NULL,
	retry_ms  BIGINT NOT NULL,
	reason    TEXT   NOT NULL
);
CREATE INDEX peer_key_failures_expires ON peer_key_failures (retry_ms);
`

// schemaV2 drops the HTTP status of cached replay answers (the CHECK that
// names it goes with it): an answer is the encoded DSResponse. A NULL body
// still means pending.
const schemaV2 = `
ALTER TABLE replay_requests DROP COLUMN status;
`

// schemaV3 holds the group state of store.GroupStore, as sqlitestore's
// version 3 describes it. mls_groups.id is an identity column, which never
// reuses an id.
const schemaV3 = `
CREATE TABLE group_hubs (
	group_id   BYTEA   NOT NULL PRIMARY KEY,
	hub        TEXT    COLLATE "C" NOT NULL,
	hosted     BOOLEAN NOT NULL,
	created_ms BIGINT  NOT NULL
);

CREATE TABLE mls_groups (
	id         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	group_id   BYTEA   NOT NULL UNIQUE REFERENCES group_hubs (group_id) ON DELETE CASCADE,
	epoch      BIGINT  NOT NULL CHECK (epoch >= 0),
	context    BYTEA   NOT NULL,
	interim    BYTEA   NOT NULL,
	conf_tag   BYTEA   NOT NULL,
	width      INTEGER NOT NULL CHECK (width > 0),
	-- the GroupInfo of the current epoch, NULL when none was stored
	group_info BYTEA,
	updated_ms BIGINT  NOT NULL
);

CREATE TABLE mls_group_nodes (
	gid        BIGINT  NOT NULL REFERENCES mls_groups (id) ON DELETE CASCADE,
	node_index INTEGER NOT NULL,
	from_epoch BIGINT  NOT NULL,
	node       BYTEA,
	hash       BYTEA   NOT NULL,
	PRIMARY KEY (gid, node_index)
);

CREATE TABLE mls_group_node_history (
	gid        BIGINT  NOT NULL REFERENCES mls_groups (id) ON DELETE CASCADE,
	node_index INTEGER NOT NULL,
	from_epoch BIGINT  NOT NULL,
	to_epoch   BIGINT  NOT NULL,
	node       BYTEA,
	PRIMARY KEY (gid, node_index, from_epoch)
);
CREATE INDEX mls_group_node_history_to ON mls_group_node_history (gid, to_epoch);

CREATE TABLE mls_group_welcomes (
	gid        BIGINT NOT NULL REFERENCES mls_groups (id) ON DELETE CASCADE,
	epoch      BIGINT NOT NULL,
	expires_ms BIGINT NOT NULL,
	PRIMARY KEY (gid, epoch)
);
CREATE INDEX mls_group_welcomes_expires ON mls_group_welcomes (expires_ms);

CREATE TABLE mls_group_proposals (
	gid     BIGINT NOT NULL REFERENCES mls_groups (id) ON DELETE CASCADE,
	ref     BYTEA  NOT NULL,
	epoch   BIGINT NOT NULL,
	seq     BIGINT NOT NULL,
	message BYTEA  NOT NULL,
	PRIMARY KEY (gid, ref)
);
`

// schemaV4 holds store.KeyPackages and store.Queues, as sqlitestore's
// version 4 describes them.
const schemaV4 = `
CREATE TABLE key_packages (
	ref          BYTEA   NOT NULL PRIMARY KEY,
	client       TEXT    COLLATE "C" NOT NULL,
	suite        INTEGER NOT NULL CHECK (suite BETWEEN 1 AND 65535),
	key_package  BYTEA   NOT NULL,
	not_after_ms BIGINT  NOT NULL,
	last_resort  BOOLEAN NOT NULL,
	published_ms BIGINT  NOT NULL,
	claimed_ms   BIGINT,
	expires_ms   BIGINT  NOT NULL
);
CREATE INDEX key_packages_available ON key_packages (client, suite, last_resort, not_after_ms)
	WHERE claimed_ms IS NULL;
CREATE UNIQUE INDEX key_packages_last_resort ON key_packages (client, suite)
	WHERE last_resort AND claimed_ms IS NULL;
CREATE INDEX key_packages_expires ON key_packages (expires_ms);

CREATE TABLE queue_heads (
	client   TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
	last_seq BIGINT NOT NULL CHECK (last_seq >= 0),
	messages BIGINT NOT NULL CHECK (messages >= 0),
	bytes    BIGINT NOT NULL CHECK (bytes >= 0)
);

CREATE TABLE queue_bodies (
	id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message BYTEA  NOT NULL,
	refs    BIGINT NOT NULL CHECK (refs >= 0)
);

CREATE TABLE queue_messages (
	client     TEXT    COLLATE "C" NOT NULL,
	seq        BIGINT  NOT NULL CHECK (seq > 0),
	body_id    BIGINT  NOT NULL REFERENCES queue_bodies (id),
	size       INTEGER NOT NULL,
	group_id   BYTEA   NOT NULL,
	sender     TEXT    NOT NULL,
	arrived_ms BIGINT  NOT NULL,
	expires_ms BIGINT  NOT NULL,
	PRIMARY KEY (client, seq)
);
CREATE INDEX queue_messages_expires ON queue_messages (expires_ms);
`

// schemaV5 holds the joiners of store.EpochCommit, as sqlitestore's
// version 5 describes them.
const schemaV5 = `
CREATE TABLE mls_group_joiners (
	gid           BIGINT NOT NULL,
	epoch         BIGINT NOT NULL,
	ref           BYTEA  NOT NULL,
	signature_key BYTEA  NOT NULL,
	PRIMARY KEY (gid, epoch, ref),
	FOREIGN KEY (gid, epoch) REFERENCES mls_group_welcomes (gid, epoch) ON DELETE CASCADE
);
`

// schemaV6 is the outbox (store.Outbox). Its ids come from an identity
// column, which PostgreSQL hands out when a row is inserted, not when it
// commits; the writes that add to the outbox take an advisory lock first
// (see outboxLock), so ids also commit in order and a reader that saw id n
// never later finds a smaller one.
const schemaV6 = `
CREATE TABLE outbox (
	id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	sender      TEXT   COLLATE "C" NOT NULL,
	destination TEXT   COLLATE "C" NOT NULL,
	group_id    BYTEA  NOT NULL,
	recipients  TEXT[] NOT NULL,
	message     BYTEA  NOT NULL,
	enqueued_ms BIGINT NOT NULL
);
CREATE INDEX outbox_destination ON outbox (destination, id);
`

// schemaV7 writes a message to a hosted group's local members once, to the
// group's log, as sqlitestore's version 7 describes it. queue_sequence's
// one row is the global sequence: the writes that take a number lock it
// (UPDATE ... RETURNING), so numbers commit in order.
const schemaV7 = `
CREATE TABLE queue_sequence (
	id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
	last BIGINT  NOT NULL CHECK (last >= 0)
);
INSERT INTO queue_sequence (id, last) SELECT 1, COALESCE(MAX(last_seq), 0) FROM queue_heads;

ALTER TABLE mls_groups ADD COLUMN members_known BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE queue_cursors (
	client TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
	acked  BIGINT NOT NULL CHECK (acked >= 0)
);

CREATE TABLE group_log (
	seq           BIGINT  NOT NULL PRIMARY KEY CHECK (seq > 0),
	group_id      BYTEA   NOT NULL,
	sender        TEXT    NOT NULL,
	except_client TEXT    COLLATE "C" NOT NULL,
	message       BYTEA   NOT NULL,
	size          INTEGER NOT NULL,
	arrived_ms    BIGINT  NOT NULL,
	expires_ms    BIGINT  NOT NULL
);
CREATE INDEX group_log_group ON group_log (group_id, seq);
CREATE INDEX group_log_expires ON group_log (expires_ms);

CREATE TABLE group_members (
	client   TEXT   COLLATE "C" NOT NULL,
	group_id BYTEA  NOT NULL,
	from_seq BIGINT NOT NULL CHECK (from_seq >= 0),
	to_seq   BIGINT CHECK (to_seq > from_seq),
	PRIMARY KEY (client, group_id, from_seq)
);
CREATE UNIQUE INDEX group_members_current ON group_members (group_id, client) WHERE to_seq IS NULL;
`

// schemaV9 bounds each destination's outbox backlog, as sqlitestore's
// version 9 describes it: each outbox row's size (OutboxMessage.Size) and,
// per destination, a head with the number and bytes of its rows, kept
// exact by every write that adds or removes rows, and the counts of the
// messages dropped for it.
const schemaV9 = `
ALTER TABLE outbox ADD COLUMN size BIGINT NOT NULL DEFAULT 0 CHECK (size >= 0);
UPDATE outbox SET size = length(message) + length(group_id)
	+ COALESCE((SELECT SUM(octet_length(r)) FROM unnest(recipients) AS r), 0);

CREATE TABLE outbox_heads (
	destination   TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
	messages      BIGINT NOT NULL CHECK (messages >= 0),
	bytes         BIGINT NOT NULL CHECK (bytes >= 0),
	dropped_full  BIGINT NOT NULL DEFAULT 0 CHECK (dropped_full >= 0),
	dropped_reset BIGINT NOT NULL DEFAULT 0 CHECK (dropped_reset >= 0)
);
INSERT INTO outbox_heads (destination, messages, bytes)
	SELECT destination, COUNT(*), SUM(size) FROM outbox GROUP BY destination;
`

// schemaSealedKeys holds sealed signing keys and leases, as sqlitestore's
// schemaSealedKeys describes them.
const schemaSealedKeys = `
ALTER TABLE signing_keys ADD COLUMN sealed BYTEA;

CREATE TABLE leases (
	name       TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
	holder     TEXT   COLLATE "C" NOT NULL,
	expires_ms BIGINT NOT NULL
);
`

// schemaTokenChallenges holds store.TokenChallenges, as sqlitestore's
// schemaTokenChallenges describes it.
const schemaTokenChallenges = `
CREATE TABLE token_challenges (
	digest     BYTEA   NOT NULL PRIMARY KEY CHECK (length(digest) = 32),
	token_type INTEGER NOT NULL CHECK (token_type BETWEEN 0 AND 65535),
	expires_ms BIGINT  NOT NULL
);
CREATE INDEX token_challenges_expires ON token_challenges (expires_ms);
`

// schemaDeletedGroups holds the ids of deleted hosted groups, as
// sqlitestore's schemaDeletedGroups describes it.
const schemaDeletedGroups = `
CREATE TABLE deleted_groups (
	group_id   BYTEA  NOT NULL PRIMARY KEY,
	deleted_ms BIGINT NOT NULL
);
`

// schemaUnreferencedByName replaces the index of unreferenced attachment
// objects on refs, whose entries hold no name, by one on their names:
// UnreferencedObjects lists them in name order from a name on, which the
// old index answered by reading every unreferenced object and sorting
// them, at every page of every sweep (with a million objects of which 1%
// unreferenced, 10,000 rows read and sorted for each page of 256). The
// new index answers a page by reading it, in order. (SQLite's index on
// refs of a WITHOUT ROWID table holds the name already, and is ordered by
// it.)
const schemaUnreferencedByName = `
CREATE INDEX attachment_objects_unreferenced_names ON attachment_objects (name) WHERE refs = 0;
DROP INDEX attachment_objects_unreferenced;
`

// schemaOutboxRetries keeps the outbox sender's backoffs per destination,
// as sqlitestore's schemaOutboxRetries describes it.
const schemaOutboxRetries = `
CREATE TABLE outbox_retries (
	destination     TEXT   NOT NULL PRIMARY KEY,
	failures        BIGINT NOT NULL,
	last_error      TEXT   NOT NULL,
	last_attempt_ms BIGINT NOT NULL,
	level_ms        BIGINT NOT NULL,
	next_ms         BIGINT NOT NULL,
	groups          BYTEA  NOT NULL
);
`

// schemaSignatureAnswers adds the answer of a seen signature's request, as
// sqlitestore's schemaSignatureAnswers describes it.
const schemaSignatureAnswers = `
ALTER TABLE seen_signatures ADD COLUMN answer BYTEA;
`

// schemaKeyPackagesHandedOut records whether a claim ever answered a
// last-resort KeyPackage, as sqlitestore's schemaKeyPackagesHandedOut
// describes it.
const schemaKeyPackagesHandedOut = `
ALTER TABLE key_packages ADD COLUMN handed_out BOOLEAN NOT NULL DEFAULT false;
UPDATE key_packages SET handed_out = true WHERE last_resort;
`

// schemaKeyPackagesRetained keeps the row of a claimed KeyPackage until
// its NotAfter and its bytes for the retention, as sqlitestore's
// schemaKeyPackagesRetained describes it.
const schemaKeyPackagesRetained = `
ALTER TABLE key_packages ADD COLUMN retained_ms BIGINT;
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
ALTER TABLE attachment_objects ADD COLUMN keep_ms BIGINT NOT NULL DEFAULT 0;
`

// schemaOutboxRetryRateLimited records whether a destination's stored
// backoff is a 429's, as sqlitestore's schemaOutboxRetryRateLimited
// describes it.
const schemaOutboxRetryRateLimited = `
ALTER TABLE outbox_retries ADD COLUMN rate_limited BOOLEAN NOT NULL DEFAULT false;
`

// schemaGroupReInit records, per hosted group, whether a commit covering a
// ReInit proposal was stored (store.EpochCommit.ReInit): such a group
// takes no commit, proposal or message any more (store.ErrReInitialized).
// Groups stored before it are not marked, even one whose last commit
// covered a ReInit: the store keeps no commit to tell. It is
// self-contained, whatever its version number.
const schemaGroupReInit = `
ALTER TABLE mls_groups ADD COLUMN reinit BOOLEAN NOT NULL DEFAULT false;
`

// schemaGroupReInitProposal keeps, with the mark of a reinitialized group
// (schemaGroupReInit), the ReInit proposal its commit covered
// (store.EpochCommit.ReInit, encoded as RFC 9420 §12.1.5 has it), which
// store.GroupStore.ReInitOf returns with the group's epoch. Groups marked
// before it keep NULL: ReInitOf does not find them, so the reinit PSK of
// such a group is refused. It is self-contained, whatever its version
// number.
const schemaGroupReInitProposal = `
ALTER TABLE mls_groups ADD COLUMN reinit_proposal BYTEA CHECK (reinit_proposal IS NULL OR reinit);
`

// schemaOutboxBodies stores an outbox message's bytes once per write, as
// sqlitestore's schemaOutboxBodies describes it: outbox rows reference an
// outbox_bodies row, whose refs counts them, and the statement trigger
// outbox_release_bodies, run after every DELETE on outbox however the
// rows go (delivered, released with a lease, reset, given up), takes the
// deleted rows off their bodies' refs and deletes the bodies left with
// none, in the deleting statement's transaction. Two transactions that
// delete rows of one body (two destinations' senders) both update its
// refs: the trigger locks the bodies first, in id order, so they take
// turns and never deadlock, and its later statements, each with a
// snapshot of its own under READ COMMITTED, see the refs the other
// committed. There is no foreign key, whose check on a body's deletion
// would need an index on outbox.body_id. Existing rows each get a body of
// their own, with the row's id. The message column is dropped before the
// rows are updated, so that their new versions no longer hold its bytes:
// the old versions' go at the next vacuum, not only once the rows are
// delivered. It is self-contained, whatever its version number.
const schemaOutboxBodies = `
CREATE TABLE outbox_bodies (
	id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	message BYTEA  NOT NULL,
	refs    BIGINT NOT NULL CHECK (refs >= 0)
);
INSERT INTO outbox_bodies (id, message, refs) OVERRIDING SYSTEM VALUE SELECT id, message, 1 FROM outbox;
SELECT setval(pg_get_serial_sequence('outbox_bodies', 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM outbox_bodies;
ALTER TABLE outbox ADD COLUMN body_id BIGINT, DROP COLUMN message;
UPDATE outbox SET body_id = id;
ALTER TABLE outbox ALTER COLUMN body_id SET NOT NULL;

CREATE FUNCTION outbox_release_bodies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM 1 FROM outbox_bodies WHERE id IN (SELECT body_id FROM released) ORDER BY id FOR UPDATE;
	UPDATE outbox_bodies b SET refs = b.refs - r.n
		FROM (SELECT body_id, count(*) AS n FROM released GROUP BY body_id) r WHERE b.id = r.body_id;
	DELETE FROM outbox_bodies WHERE id IN (SELECT body_id FROM released) AND refs = 0;
	RETURN NULL;
END
$$;
CREATE TRIGGER outbox_release_bodies AFTER DELETE ON outbox
	REFERENCING OLD TABLE AS released FOR EACH STATEMENT EXECUTE FUNCTION outbox_release_bodies();
`
