package pgstore

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// schemaV8 holds store.Attachments, as sqlitestore's version 8 describes
// it: a row per attachment record (pending or committed) and a row per
// stored object with the number of records that refer to it.
const schemaV8 = `
CREATE TABLE attachment_objects (
	name       TEXT   COLLATE "C" NOT NULL PRIMARY KEY,
	refs       BIGINT NOT NULL CHECK (refs >= 0),
	created_ms BIGINT NOT NULL
);
CREATE INDEX attachment_objects_unreferenced ON attachment_objects (refs) WHERE refs = 0;

CREATE TABLE attachments (
	token_hash   BYTEA   NOT NULL PRIMARY KEY CHECK (length(token_hash) = 32),
	group_id     BYTEA   NOT NULL,
	object       TEXT    COLLATE "C" NOT NULL REFERENCES attachment_objects (name),
	size         BIGINT  NOT NULL CHECK (size >= 0),
	content_hash BYTEA   NOT NULL,
	uploader     TEXT    COLLATE "C" NOT NULL,
	committed    BOOLEAN NOT NULL,
	created_ms   BIGINT  NOT NULL,
	expires_ms   BIGINT  NOT NULL
);
CREATE INDEX attachments_group ON attachments (group_id);
CREATE INDEX attachments_uploader ON attachments (uploader);
CREATE INDEX attachments_expires ON attachments (expires_ms);
CREATE INDEX attachments_object ON attachments (object);
`

const attachmentColumns = `token_hash, group_id, object, size, content_hash, uploader, created_ms, expires_ms`

// Quota locks: transaction-scoped advisory locks on a hash of the group
// id and of the uploader, taken before a quota is checked, so that
// concurrent reservations against one quota, in any gateway, check and
// write one at a time. A transaction takes the group's before the
// uploader's.
const (
	groupQuotaLockSQL    = `SELECT pg_advisory_xact_lock(hashtextextended(encode($1::bytea, 'hex'), 11))`
	uploaderQuotaLockSQL = `SELECT pg_advisory_xact_lock(hashtextextended($1, 13))`
)

var _ store.Attachments = (*Store)(nil)

// checkQuota takes the quota locks of a's group and uploader for the
// bounds q sets and checks that a fits them.
func checkQuota(ctx context.Context, tx pgx.Tx, a store.Attachment, q store.AttachmentQuota) error {
	if q.GroupBytes > 0 || q.GroupCount > 0 {
		if _, err := tx.Exec(ctx, groupQuotaLockSQL, a.GroupID); err != nil {
			return fmt.Errorf("locking the group's quota: %w", err)
		}
		u, err := usage(ctx, tx, `SELECT COALESCE(SUM(size), 0), COUNT(*) FROM attachments WHERE group_id = $1`, a.GroupID)
		if err != nil {
			return err
		}
		if over(u, a.Size, q.GroupBytes, q.GroupCount) {
			return fmt.Errorf("group holds %d attachments of %d bytes: %w", u.Count, u.Bytes, store.ErrQuota)
		}
	}
	if q.UploaderBytes > 0 || q.UploaderCount > 0 {
		if _, err := tx.Exec(ctx, uploaderQuotaLockSQL, a.Uploader); err != nil {
			return fmt.Errorf("locking the uploader's quota: %w", err)
		}
		u, err := usage(ctx, tx, `SELECT COALESCE(SUM(size), 0), COUNT(*) FROM attachments WHERE uploader = $1`, a.Uploader)
		if err != nil {
			return err
		}
		if over(u, a.Size, q.UploaderBytes, q.UploaderCount) {
			return fmt.Errorf("uploader holds %d attachments of %d bytes: %w", u.Count, u.Bytes, store.ErrQuota)
		}
	}
	return nil
}

// over reports whether one more attachment of size exceeds the bounds
// (zero: none) given usage u.
func over(u store.AttachmentUsage, size, maxBytes, maxCount int64) bool {
	return (maxBytes > 0 && (size > maxBytes || u.Bytes > maxBytes-size)) ||
		(maxCount > 0 && u.Count >= maxCount)
}

// usage runs sql, a sum and a count of attachments.
func usage(ctx context.Context, q querier, sql string, arg any) (store.AttachmentUsage, error) {
	var u store.AttachmentUsage
	if err := q.QueryRow(ctx, sql, arg).Scan(&u.Bytes, &u.Count); err != nil {
		return u, fmt.Errorf("summing attachment usage: %w", err)
	}
	return u, nil
}

// insertAttachment writes a (committed or pending) with a new object row
// of one reference, or one more reference to its existing object.
func insertAttachment(ctx context.Context, tx pgx.Tx, a store.Attachment, committed, newObject bool, now int64) error {
	if newObject {
		wrote, err := firstUse(ctx, tx, `INSERT INTO attachment_objects (name, refs, created_ms, keep_ms) VALUES ($1, 1, $2, $3)
			ON CONFLICT (name) DO NOTHING RETURNING true`, a.Object, now, check.KeepObjectMillis(a))
		if err != nil {
			return err
		}
		if !wrote {
			return fmt.Errorf("object already recorded: %w", store.ErrConflict)
		}
	} else if _, err := tx.Exec(ctx, `UPDATE attachment_objects SET refs = refs + 1 WHERE name = $1`, a.Object); err != nil {
		return err
	}
	wrote, err := firstUse(ctx, tx, `INSERT INTO attachments (`+attachmentColumns+`, committed)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (token_hash) DO NOTHING RETURNING true`,
		a.TokenHash[:], a.GroupID, a.Object, a.Size, a.ContentHash, a.Uploader,
		check.Millis(a.Created), check.ExpiryMillis(a.Expires), committed)
	if err != nil {
		return err
	}
	if !wrote {
		return fmt.Errorf("token hash already recorded: %w", store.ErrConflict)
	}
	return nil
}

// dropRefs drops n references to object and reports whether none is left.
func dropRefs(ctx context.Context, tx pgx.Tx, object string, n int64) (bool, error) {
	var refs int64
	err := tx.QueryRow(ctx, `UPDATE attachment_objects SET refs = refs - $2 WHERE name = $1 AND refs >= $2
		RETURNING refs`, object, n).Scan(&refs)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("object %s has no reference to drop", object)
	}
	if err != nil {
		return false, err
	}
	return refs == 0, nil
}

// failAttachment is fail, keeping ErrQuota's message.
func (s *Store) failAttachment(doing string, err error) error {
	if errors.Is(err, store.ErrQuota) {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return s.fail(doing, err)
}

// ReserveAttachment implements store.Attachments: under the quota locks,
// the check and the insert are one transaction.
func (s *Store) ReserveAttachment(ctx context.Context, a store.Attachment, q store.AttachmentQuota) error {
	const doing = "reserving attachment"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.Attachment(a, true); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := checkGroupOpen(ctx, tx, a.GroupID); err != nil {
			return err
		}
		if err := checkQuota(ctx, tx, a, q); err != nil {
			return err
		}
		return insertAttachment(ctx, tx, a, false, true, s.nowMs())
	})
	if err != nil {
		return s.failAttachment(doing, err)
	}
	return nil
}

// CommitAttachment implements store.Attachments: one conditional UPDATE.
func (s *Store) CommitAttachment(ctx context.Context, tokenHash [32]byte, expires time.Time, ans store.SignatureAnswer) error {
	const doing = "committing attachment"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.SignatureAnswer(ans); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		now := s.nowMs()
		var object string
		err := tx.QueryRow(ctx, `UPDATE attachments SET committed = true, expires_ms = $2
			WHERE token_hash = $1 AND NOT committed AND expires_ms > $3 RETURNING object`,
			tokenHash[:], check.ExpiryMillis(expires), now).Scan(&object)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("no pending upload with this token: %w", store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		// The bytes are committed: none can land any more.
		if _, err := tx.Exec(ctx, `UPDATE attachment_objects SET keep_ms = 0 WHERE name = $1`, object); err != nil {
			return err
		}
		return recordSignatureAnswer(ctx, tx, ans, now)
	})
	if err != nil {
		return s.failAttachment(doing, err)
	}
	return nil
}

// recordSignatureAnswer records ans with its alive digest in tx; a zero
// ans, or a digest gone from the replay set, records nothing.
func recordSignatureAnswer(ctx context.Context, tx pgx.Tx, ans store.SignatureAnswer, now int64) error {
	if ans.Body == nil {
		return nil
	}
	_, err := tx.Exec(ctx, `UPDATE seen_signatures SET answer = $2 WHERE digest = $1 AND expires_ms > $3`,
		ans.Digest[:], ans.Body, now)
	if err != nil {
		return fmt.Errorf("recording the request's answer: %w", err)
	}
	return nil
}

// ReleaseAttachment implements store.Attachments.
func (s *Store) ReleaseAttachment(ctx context.Context, tokenHash [32]byte) (string, error) {
	const doing = "releasing attachment"
	if err := s.checkOpen(doing); err != nil {
		return "", err
	}
	var object string
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `DELETE FROM attachments WHERE token_hash = $1 AND NOT committed RETURNING object`,
			tokenHash[:]).Scan(&object)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("no pending upload with this token: %w", store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if _, err := dropRefs(ctx, tx, object, 1); err != nil {
			return err
		}
		// The caller's commit of the bytes is settled: the row is kept
		// no longer.
		_, err = tx.Exec(ctx, `UPDATE attachment_objects SET keep_ms = 0 WHERE name = $1`, object)
		return err
	})
	if err != nil {
		return "", s.failAttachment(doing, err)
	}
	return object, nil
}

func scanAttachment(row pgx.Row) (store.Attachment, error) {
	var a store.Attachment
	var hash []byte
	var created, expires int64
	if err := row.Scan(&hash, &a.GroupID, &a.Object, &a.Size, &a.ContentHash, &a.Uploader, &created, &expires); err != nil {
		return a, err
	}
	copy(a.TokenHash[:], hash)
	a.Created, a.Expires = check.Time(created), check.Time(expires)
	return a, nil
}

// findCommitted reads the committed, unexpired record tokenHash of
// groupID, with lock (" FOR SHARE", " FOR UPDATE" or "") appended, so
// that a copy or a delete holds it until its commit.
func findCommitted(ctx context.Context, q querier, groupID []byte, tokenHash [32]byte, now int64, lock string) (store.Attachment, error) {
	a, err := scanAttachment(q.QueryRow(ctx, `SELECT `+attachmentColumns+` FROM attachments
		WHERE token_hash = $1 AND committed AND expires_ms > $2`+lock, tokenHash[:], now))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Attachment{}, fmt.Errorf("no such attachment: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.Attachment{}, fmt.Errorf("reading attachment: %w", err)
	}
	// Compared in constant time, so that the answer's timing does not
	// tell whether the token exists in another group.
	if subtle.ConstantTimeCompare(a.GroupID, groupID) != 1 {
		return store.Attachment{}, fmt.Errorf("no such attachment: %w", store.ErrNotFound)
	}
	return a, nil
}

// LookupAttachment implements store.Attachments.
func (s *Store) LookupAttachment(ctx context.Context, groupID []byte, tokenHash [32]byte) (store.Attachment, error) {
	const doing = "looking up attachment"
	if err := s.checkOpen(doing); err != nil {
		return store.Attachment{}, err
	}
	if err := check.GroupID(groupID); err != nil {
		return store.Attachment{}, fmt.Errorf("%s: %w", doing, err)
	}
	a, err := findCommitted(ctx, s.pool, groupID, tokenHash, s.nowMs(), "")
	if err != nil {
		return store.Attachment{}, s.failAttachment(doing, err)
	}
	return a, nil
}

// DeleteAttachment implements store.Attachments: the record, locked, is
// checked and deleted, and its reference dropped, in one transaction.
func (s *Store) DeleteAttachment(ctx context.Context, groupID []byte, tokenHash [32]byte, uploader string) (store.Attachment, bool, error) {
	const doing = "deleting attachment"
	if err := s.checkOpen(doing); err != nil {
		return store.Attachment{}, false, err
	}
	if err := check.GroupID(groupID); err != nil {
		return store.Attachment{}, false, fmt.Errorf("%s: %w", doing, err)
	}
	var a store.Attachment
	var last bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if a, err = findCommitted(ctx, tx, groupID, tokenHash, s.nowMs(), " FOR UPDATE"); err != nil {
			return err
		}
		if uploader != "" && a.Uploader != uploader {
			return fmt.Errorf("the attachment was uploaded by another client: %w", store.ErrConflict)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM attachments WHERE token_hash = $1`, tokenHash[:]); err != nil {
			return err
		}
		last, err = dropRefs(ctx, tx, a.Object, 1)
		return err
	})
	if err != nil {
		return store.Attachment{}, false, s.failAttachment(doing, err)
	}
	return a, last, nil
}

// CopyAttachment implements store.Attachments: the source is read with a
// share lock (a concurrent delete of it waits, so its object keeps a
// reference throughout), the quota checked under its locks, and the copy
// written, in one transaction.
func (s *Store) CopyAttachment(ctx context.Context, srcGroup []byte, srcHash [32]byte, dst store.Attachment, q store.AttachmentQuota, ans store.SignatureAnswer) (store.Attachment, error) {
	const doing = "copying attachment"
	if err := s.checkOpen(doing); err != nil {
		return store.Attachment{}, err
	}
	if err := check.GroupID(srcGroup); err != nil {
		return store.Attachment{}, fmt.Errorf("%s: %w", doing, err)
	}
	if err := check.Attachment(dst, false); err != nil {
		return store.Attachment{}, fmt.Errorf("%s: %w", doing, err)
	}
	if err := check.SignatureAnswer(ans); err != nil {
		return store.Attachment{}, fmt.Errorf("%s: %w", doing, err)
	}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		now := s.nowMs()
		// The target group's hub row first, as DeleteGroup takes it
		// before the group's attachment rows: locked the other way round,
		// a copy within a group being deleted would deadlock with it.
		if err := checkGroupOpen(ctx, tx, dst.GroupID); err != nil {
			return err
		}
		src, err := findCommitted(ctx, tx, srcGroup, srcHash, now, " FOR SHARE")
		if err != nil {
			return err
		}
		dst.Object, dst.Size, dst.ContentHash = src.Object, src.Size, src.ContentHash
		if err := checkQuota(ctx, tx, dst, q); err != nil {
			return err
		}
		if err := insertAttachment(ctx, tx, dst, true, false, now); err != nil {
			return err
		}
		return recordSignatureAnswer(ctx, tx, ans, now)
	})
	if err != nil {
		return store.Attachment{}, s.failAttachment(doing, err)
	}
	dst.Created = check.Time(check.Millis(dst.Created))
	dst.Expires = check.Time(check.ExpiryMillis(dst.Expires))
	return dst, nil
}

// GroupAttachmentUsage implements store.Attachments.
func (s *Store) GroupAttachmentUsage(ctx context.Context, groupID []byte) (store.AttachmentUsage, error) {
	const doing = "reading group attachment usage"
	if err := s.checkOpen(doing); err != nil {
		return store.AttachmentUsage{}, err
	}
	if err := check.GroupID(groupID); err != nil {
		return store.AttachmentUsage{}, fmt.Errorf("%s: %w", doing, err)
	}
	u, err := usage(ctx, s.pool, `SELECT COALESCE(SUM(size), 0), COUNT(*) FROM attachments WHERE group_id = $1`, groupID)
	if err != nil {
		return u, s.fail(doing, err)
	}
	return u, nil
}

// UploaderAttachmentUsage implements store.Attachments.
func (s *Store) UploaderAttachmentUsage(ctx context.Context, uploader string) (store.AttachmentUsage, error) {
	const doing = "reading uploader attachment usage"
	if err := s.checkOpen(doing); err != nil {
		return store.AttachmentUsage{}, err
	}
	if err := check.ClientURI("uploader", uploader); err != nil {
		return store.AttachmentUsage{}, fmt.Errorf("%s: %w", doing, err)
	}
	u, err := usage(ctx, s.pool, `SELECT COALESCE(SUM(size), 0), COUNT(*) FROM attachments WHERE uploader = $1`, uploader)
	if err != nil {
		return u, s.fail(doing, err)
	}
	return u, nil
}

// checkGroupOpen fails with ErrNotFound when the hosted group groupID was
// deleted (deleted_groups), so that no record is written into a group
// whose attachments DeleteGroup has dropped, and with ErrReInitialized
// when it was reinitialized (mls_groups.reinit), whose members must not
// use it any more. It first locks the group's hub row, if any, FOR SHARE:
// a DeleteGroup that removed the row and has not committed makes it wait,
// and the lookup that follows, a statement of its own under READ
// COMMITTED, then sees the deletion; a DeleteGroup that comes after waits
// for this transaction, and its removal of the group's attachments then
// sees the record written. The reinit flag is read in that same lookup,
// without a lock: a reinitializing commit that this read does not see
// had not committed when it ran, so the record counts as written before
// the group closed, as an upload reserved before it does.
func checkGroupOpen(ctx context.Context, tx pgx.Tx, groupID []byte) error {
	rows, err := tx.Query(ctx, `SELECT 1 FROM group_hubs WHERE group_id = $1 FOR SHARE`, groupID)
	if err != nil {
		return fmt.Errorf("locking the group: %w", err)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("locking the group: %w", err)
	}
	var deleted, reinit bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM deleted_groups WHERE group_id = $1),
		COALESCE((SELECT reinit FROM mls_groups WHERE group_id = $1), false)`, groupID).Scan(&deleted, &reinit); err != nil {
		return fmt.Errorf("looking up whether the group is deleted or reinitialized: %w", err)
	}
	if deleted {
		return fmt.Errorf("the group was deleted: %w", store.ErrNotFound)
	}
	if reinit {
		return store.ErrReInitialized
	}
	return nil
}

// dropGroupAttachments removes every record of groupID, pending or
// committed, with its reference to its object, as ExpireAttachments
// removes expired ones: no request reaches a deleted group's attachments,
// so their objects left without references go to UnreferencedObjects now,
// and their sizes stop counting against their uploaders' quotas. Copies in
// other groups keep their references, and so their objects. The DELETE
// locks the records (waiting for a write that holds one, a copy from
// the group or a sweep), and the objects are then locked in name order,
// as ExpireAttachments does.
func dropGroupAttachments(ctx context.Context, tx pgx.Tx, groupID []byte) error {
	rows, _ := tx.Query(ctx, `DELETE FROM attachments WHERE group_id = $1 RETURNING object`, groupID)
	objects, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	return dropObjectRefs(ctx, tx, objects)
}

// dropObjectRefs releases the references of deleted records to objects
// (an object named once per record), locking the objects in name order,
// so that concurrent sweeps and group deletions lock them in one order.
func dropObjectRefs(ctx context.Context, tx pgx.Tx, objects []string) error {
	refs := map[string]int64{}
	for _, o := range objects {
		refs[o]++
	}
	for _, o := range slices.Sorted(maps.Keys(refs)) {
		if _, err := dropRefs(ctx, tx, o, refs[o]); err != nil {
			return err
		}
	}
	return nil
}

// ExpireAttachments implements store.Attachments: one bounded DELETE
// (rows a write holds are left to the next call) and the release of the
// references, in one transaction.
func (s *Store) ExpireAttachments(ctx context.Context, now time.Time, limit int) (int, error) {
	const doing = "expiring attachments"
	if err := s.checkOpen(doing); err != nil {
		return 0, err
	}
	if limit < 1 {
		return 0, nil
	}
	limit = min(limit, sweepBatch)
	var n int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `DELETE FROM attachments WHERE token_hash IN
			(SELECT token_hash FROM attachments WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING object`,
			check.Millis(now), limit)
		objects, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if err := dropObjectRefs(ctx, tx, objects); err != nil {
			return err
		}
		n = len(objects)
		return nil
	})
	if err != nil {
		return 0, s.fail(doing, err)
	}
	return n, nil
}

// unreferencedSQL lists at most $2 unreferenced objects named after $1,
// in name order: a range of the index attachment_objects_unreferenced_names
// (schemaUnreferencedByName).
const unreferencedSQL = `SELECT name FROM attachment_objects WHERE refs = 0 AND name > $1 ORDER BY name LIMIT $2`

// UnreferencedObjects implements store.Attachments.
func (s *Store) UnreferencedObjects(ctx context.Context, after string, limit int) ([]string, error) {
	const doing = "listing unreferenced attachment objects"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, nil
	}
	rows, _ := s.pool.Query(ctx, unreferencedSQL, after, limit)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.fail(doing, err)
	}
	return out, nil
}

// ObjectsInUse implements store.Attachments: one query by the primary
// key.
func (s *Store) ObjectsInUse(ctx context.Context, names []string) (map[string]bool, error) {
	const doing = "looking up attachment objects in use"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	out := make(map[string]bool)
	if len(names) == 0 {
		return out, nil
	}
	rows, _ := s.pool.Query(ctx, `SELECT name FROM attachment_objects WHERE refs > 0 AND name = ANY($1)`, names)
	inUse, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.fail(doing, err)
	}
	for _, n := range inUse {
		out[n] = true
	}
	return out, nil
}

// RecordObject implements store.Attachments: one INSERT that leaves an
// existing row alone.
func (s *Store) RecordObject(ctx context.Context, name string) error {
	const doing = "recording attachment object"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if name == "" || len(name) > store.MaxObjectNameSize {
		return fmt.Errorf("%s: object name is %d bytes, want 1..%d: %w", doing, len(name), store.MaxObjectNameSize, store.ErrInvalid)
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO attachment_objects (name, refs, created_ms, keep_ms) VALUES ($1, 0, $2, 0)
		ON CONFLICT (name) DO UPDATE SET keep_ms = 0`, name, s.nowMs()); err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// ForgetObject implements store.Attachments: one conditional DELETE, and
// a read to tell an object with references from an unknown or a kept one.
func (s *Store) ForgetObject(ctx context.Context, name string, deleted time.Time) (bool, error) {
	const doing = "forgetting attachment object"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM attachment_objects WHERE name = $1 AND refs = 0 AND keep_ms <= $2`,
		name, check.DeletedMillis(deleted))
	if err != nil {
		return false, s.fail(doing, err)
	}
	if tag.RowsAffected() == 1 {
		return true, nil
	}
	var refs int64
	err = s.pool.QueryRow(ctx, `SELECT refs FROM attachment_objects WHERE name = $1`, name).Scan(&refs)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, s.fail(doing, err)
	case refs > 0:
		return false, fmt.Errorf("%s: object still has %d references: %w", doing, refs, store.ErrConflict)
	}
	return false, nil
}
