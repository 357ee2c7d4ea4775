package sqlitestore

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/internal/check"
)

// schemaV8 holds attachment metadata (store.Attachments).
//
// attachment_objects has a row per stored object, with the number of
// attachments rows that refer to it; a row at refs 0 is an object whose
// bytes are to be deleted (UnreferencedObjects, then ForgetObject).
// attachments has a row per token, keyed by SHA-256 of the token; state is
// 0 while the upload is pending and 1 once committed. Usage is summed over
// the group and uploader indexes, pending rows included, so that a
// reservation holds its place in the quota.
const schemaV8 = `
CREATE TABLE attachment_objects (
	name       TEXT    NOT NULL PRIMARY KEY,
	refs       INTEGER NOT NULL CHECK (refs >= 0),
	created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX attachment_objects_unreferenced ON attachment_objects (refs) WHERE refs = 0;

CREATE TABLE attachments (
	token_hash   BLOB    NOT NULL PRIMARY KEY CHECK (length(token_hash) = 32),
	group_id     BLOB    NOT NULL,
	object       TEXT    NOT NULL REFERENCES attachment_objects (name),
	size         INTEGER NOT NULL CHECK (size >= 0),
	content_hash BLOB    NOT NULL,
	uploader     TEXT    NOT NULL,
	state        INTEGER NOT NULL CHECK (state IN (0, 1)),
	created_ms   INTEGER NOT NULL,
	expires_ms   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX attachments_group ON attachments (group_id);
CREATE INDEX attachments_uploader ON attachments (uploader);
CREATE INDEX attachments_expires ON attachments (expires_ms);
CREATE INDEX attachments_object ON attachments (object);
`

// attachmentColumns are the columns scanAttachment reads, in order.
const attachmentColumns = `token_hash, group_id, object, size, content_hash, uploader, created_ms, expires_ms`

var _ store.Attachments = (*Store)(nil)

// checkQuota refuses a when its group's or its uploader's usage plus a
// would exceed q. It runs inside the writer's transaction, so the sums and
// the insert that follows are atomic.
func checkQuota(ctx context.Context, tx *sql.Tx, a store.Attachment, q store.AttachmentQuota) error {
	if q.GroupBytes > 0 || q.GroupCount > 0 {
		u, err := usage(ctx, tx, `SELECT COALESCE(SUM(size), 0), COUNT(*) FROM attachments WHERE group_id = ?1`, a.GroupID)
		if err != nil {
			return err
		}
		if over(u, a.Size, q.GroupBytes, q.GroupCount) {
			return fmt.Errorf("group holds %d attachments of %d bytes: %w", u.Count, u.Bytes, store.ErrQuota)
		}
	}
	if q.UploaderBytes > 0 || q.UploaderCount > 0 {
		u, err := usage(ctx, tx, `SELECT COALESCE(SUM(size), 0), COUNT(*) FROM attachments WHERE uploader = ?1`, a.Uploader)
		if err != nil {
			return err
		}
		if over(u, a.Size, q.UploaderBytes, q.UploaderCount) {
			return fmt.Errorf("uploader holds %d attachments of %d bytes: %w", u.Count, u.Bytes, store.ErrQuota)
		}
	}
	return nil
}

// over reports whether adding size bytes to u passes maxBytes or maxCount
// (each 0 for no bound).
func over(u store.AttachmentUsage, size, maxBytes, maxCount int64) bool {
	return (maxBytes > 0 && (size > maxBytes || u.Bytes > maxBytes-size)) ||
		(maxCount > 0 && u.Count >= maxCount)
}

// querier is a transaction or a database.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func usage(ctx context.Context, q querier, query string, arg any) (store.AttachmentUsage, error) {
	var u store.AttachmentUsage
	if err := q.QueryRowContext(ctx, query, arg).Scan(&u.Bytes, &u.Count); err != nil {
		return u, fmt.Errorf("summing attachment usage: %w", err)
	}
	return u, nil
}

// insertAttachment writes a with state, and its object row: a new row of
// one reference, or one more reference to an existing object (a copy).
func insertAttachment(ctx context.Context, tx *sql.Tx, a store.Attachment, state int, newObject bool, now int64) error {
	var exists int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM attachments WHERE token_hash = ?1`, a.TokenHash[:]).Scan(&exists)
	if err == nil {
		return fmt.Errorf("token hash already recorded: %w", store.ErrConflict)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if newObject {
		res, err := tx.ExecContext(ctx, `INSERT INTO attachment_objects (name, refs, created_ms, keep_ms) VALUES (?1, 1, ?2, ?3)
			ON CONFLICT (name) DO NOTHING`, a.Object, now, check.KeepObjectMillis(a))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("object already recorded: %w", store.ErrConflict)
		}
	} else if _, err := tx.ExecContext(ctx, `UPDATE attachment_objects SET refs = refs + 1 WHERE name = ?1`, a.Object); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO attachments (`+attachmentColumns+`, state)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)`,
		a.TokenHash[:], a.GroupID, a.Object, a.Size, a.ContentHash, a.Uploader,
		check.Millis(a.Created), check.ExpiryMillis(a.Expires), state)
	return err
}

// dropRef removes one reference to object and reports whether it was the
// last.
func dropRef(ctx context.Context, tx *sql.Tx, object string) (bool, error) {
	return dropRefs(ctx, tx, object, 1)
}

// dropRefs removes n references to object and reports whether they were
// the last.
func dropRefs(ctx context.Context, tx *sql.Tx, object string, n int64) (bool, error) {
	var refs int64
	err := tx.QueryRowContext(ctx, `UPDATE attachment_objects SET refs = refs - ?2 WHERE name = ?1 AND refs >= ?2
		RETURNING refs`, object, n).Scan(&refs)
	if errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("object %s has fewer than %d references to drop", object, n)
	}
	if err != nil {
		return false, err
	}
	return refs == 0, nil
}

// deleteRecords runs del, a DELETE of attachment records RETURNING their
// object, with args, drops the references the deleted records held, and
// returns how many it deleted.
func deleteRecords(ctx context.Context, tx *sql.Tx, del string, args ...any) (int, error) {
	rows, err := tx.QueryContext(ctx, del, args...)
	if err != nil {
		return 0, err
	}
	refs := map[string]int64{}
	n := 0
	for rows.Next() {
		var o string
		if err := rows.Scan(&o); err != nil {
			rows.Close()
			return 0, err
		}
		refs[o]++
		n++
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, err
	}
	for o, k := range refs {
		if _, err := dropRefs(ctx, tx, o, k); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// checkGroupOpen fails with ErrNotFound when the hosted group groupID was
// deleted (deleted_groups), so that no record is written into a group
// whose attachments DeleteGroup has dropped, and with ErrReInitialized
// when it was reinitialized (mls_groups.reinit), whose members must not
// use it any more. Both are looked up in one statement, by the indexes of
// the two tables. It runs in the writer's transaction, so no DeleteGroup
// or reinitializing CommitEpoch comes between it and the write.
func checkGroupOpen(ctx context.Context, tx *sql.Tx, groupID []byte) error {
	var deleted, reinit bool
	err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM deleted_groups WHERE group_id = ?1),
		COALESCE((SELECT reinit FROM mls_groups WHERE group_id = ?1), 0)`, groupID).Scan(&deleted, &reinit)
	switch {
	case err != nil:
		return fmt.Errorf("looking up whether the group is deleted or reinitialized: %w", err)
	case deleted:
		return fmt.Errorf("the group was deleted: %w", store.ErrNotFound)
	case reinit:
		return store.ErrReInitialized
	}
	return nil
}

// dropGroupAttachments removes every record of groupID, pending or
// committed, with its reference to its object, as ExpireAttachments
// removes expired ones: no request reaches a deleted group's attachments,
// so their objects left without references go to UnreferencedObjects now,
// and their sizes stop counting against their uploaders' quotas. Copies in
// other groups keep their references, and so their objects.
func dropGroupAttachments(ctx context.Context, tx *sql.Tx, groupID []byte) error {
	_, err := deleteRecords(ctx, tx, `DELETE FROM attachments WHERE group_id = ?1 RETURNING object`, groupID)
	return err
}

// ReserveAttachment implements store.Attachments.
func (s *Store) ReserveAttachment(ctx context.Context, a store.Attachment, q store.AttachmentQuota) error {
	const doing = "reserving attachment"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.Attachment(a, true); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := checkGroupOpen(ctx, tx, a.GroupID); err != nil {
			return err
		}
		if err := checkQuota(ctx, tx, a, q); err != nil {
			return err
		}
		return insertAttachment(ctx, tx, a, 0, true, check.Millis(s.now()))
	})
	if err != nil {
		return s.failAttachment(doing, err)
	}
	return nil
}

// CommitAttachment implements store.Attachments.
func (s *Store) CommitAttachment(ctx context.Context, tokenHash [32]byte, expires time.Time, ans store.SignatureAnswer) error {
	const doing = "committing attachment"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if err := check.SignatureAnswer(ans); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	exp := check.ExpiryMillis(expires)
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := check.Millis(s.now())
		var object string
		err := tx.QueryRowContext(ctx, `UPDATE attachments SET state = 1, expires_ms = ?2
			WHERE token_hash = ?1 AND state = 0 AND expires_ms > ?3 RETURNING object`, tokenHash[:], exp, now).Scan(&object)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("no pending upload with this token: %w", store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		// The bytes are committed: none can land any more.
		if _, err := tx.ExecContext(ctx, `UPDATE attachment_objects SET keep_ms = 0 WHERE name = ?1`, object); err != nil {
			return err
		}
		return recordSignatureAnswer(ctx, tx, ans, now)
	})
	if err != nil {
		return s.failAttachment(doing, err)
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
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `DELETE FROM attachments WHERE token_hash = ?1 AND state = 0 RETURNING object`,
			tokenHash[:]).Scan(&object)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("no pending upload with this token: %w", store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if _, err := dropRef(ctx, tx, object); err != nil {
			return err
		}
		// The caller's commit of the bytes is settled: the row is kept
		// no longer.
		_, err = tx.ExecContext(ctx, `UPDATE attachment_objects SET keep_ms = 0 WHERE name = ?1`, object)
		return err
	})
	if err != nil {
		return "", s.failAttachment(doing, err)
	}
	return object, nil
}

// scanAttachment reads the columns of attachmentColumns.
func scanAttachment(row *sql.Row) (store.Attachment, error) {
	var a store.Attachment
	var hash []byte
	var created, expires int64
	err := row.Scan(&hash, &a.GroupID, &a.Object, &a.Size, &a.ContentHash, &a.Uploader, &created, &expires)
	if err != nil {
		return a, err
	}
	copy(a.TokenHash[:], hash)
	a.Created, a.Expires = check.Time(created), check.Time(expires)
	return a, nil
}

// findCommitted reads the committed, unexpired record tokenHash of groupID.
// The group is compared in constant time after the lookup by hash, so an
// answer takes as long whichever of the two does not match.
func findCommitted(ctx context.Context, q querier, groupID []byte, tokenHash [32]byte, now int64) (store.Attachment, error) {
	a, err := scanAttachment(q.QueryRowContext(ctx, `SELECT `+attachmentColumns+` FROM attachments
		WHERE token_hash = ?1 AND state = 1 AND expires_ms > ?2`, tokenHash[:], now))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Attachment{}, fmt.Errorf("no such attachment: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.Attachment{}, fmt.Errorf("reading attachment: %w", err)
	}
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
	a, err := findCommitted(ctx, s.r, groupID, tokenHash, check.Millis(s.now()))
	if err != nil {
		return store.Attachment{}, s.failAttachment(doing, err)
	}
	return a, nil
}

// DeleteAttachment implements store.Attachments.
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
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		if a, err = findCommitted(ctx, tx, groupID, tokenHash, check.Millis(s.now())); err != nil {
			return err
		}
		if uploader != "" && a.Uploader != uploader {
			return fmt.Errorf("the attachment was uploaded by another client: %w", store.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM attachments WHERE token_hash = ?1`, tokenHash[:]); err != nil {
			return err
		}
		last, err = dropRef(ctx, tx, a.Object)
		return err
	})
	if err != nil {
		return store.Attachment{}, false, s.failAttachment(doing, err)
	}
	return a, last, nil
}

// CopyAttachment implements store.Attachments.
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
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		now := check.Millis(s.now())
		// The target group first, as pgstore checks it.
		if err := checkGroupOpen(ctx, tx, dst.GroupID); err != nil {
			return err
		}
		src, err := findCommitted(ctx, tx, srcGroup, srcHash, now)
		if err != nil {
			return err
		}
		dst.Object, dst.Size, dst.ContentHash = src.Object, src.Size, src.ContentHash
		if err := checkQuota(ctx, tx, dst, q); err != nil {
			return err
		}
		if err := insertAttachment(ctx, tx, dst, 1, false, now); err != nil {
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
	u, err := usage(ctx, s.r, `SELECT COALESCE(SUM(size), 0), COUNT(*) FROM attachments WHERE group_id = ?1`, groupID)
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
	u, err := usage(ctx, s.r, `SELECT COALESCE(SUM(size), 0), COUNT(*) FROM attachments WHERE uploader = ?1`, uploader)
	if err != nil {
		return u, s.fail(doing, err)
	}
	return u, nil
}

// ExpireAttachments implements store.Attachments: one op of the writer
// that deletes at most limit expired records and drops their references.
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
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var err error
		n, err = deleteRecords(ctx, tx, `DELETE FROM attachments WHERE token_hash IN
			(SELECT token_hash FROM attachments WHERE expires_ms <= ?1 LIMIT ?2) RETURNING object`,
			check.Millis(now), limit)
		return err
	})
	if err != nil {
		return 0, s.fail(doing, err)
	}
	return n, nil
}

// UnreferencedObjects implements store.Attachments.
func (s *Store) UnreferencedObjects(ctx context.Context, after string, limit int) ([]string, error) {
	const doing = "listing unreferenced attachment objects"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, nil
	}
	rows, err := s.r.QueryContext(ctx, `SELECT name FROM attachment_objects WHERE refs = 0 AND name > ?1 ORDER BY name LIMIT ?2`,
		after, limit)
	if err != nil {
		return nil, s.fail(doing, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, s.fail(doing, err)
		}
		out = append(out, name)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(doing, err)
	}
	return out, nil
}

// objectsInUseBatch is how many names one query of ObjectsInUse asks
// about, within SQLite's limit on a statement's parameters.
const objectsInUseBatch = 500

// ObjectsInUse implements store.Attachments.
func (s *Store) ObjectsInUse(ctx context.Context, names []string) (map[string]bool, error) {
	const doing = "looking up attachment objects in use"
	if err := s.checkOpen(doing); err != nil {
		return nil, err
	}
	out := make(map[string]bool)
	for len(names) > 0 {
		batch := names[:min(len(names), objectsInUseBatch)]
		names = names[len(batch):]
		args := make([]any, len(batch))
		for i, n := range batch {
			args[i] = n
		}
		q := `SELECT name FROM attachment_objects WHERE refs > 0 AND name IN (?` + strings.Repeat(`, ?`, len(batch)-1) + `)`
		rows, err := s.r.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, s.fail(doing, err)
		}
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				rows.Close()
				return nil, s.fail(doing, err)
			}
			out[name] = true
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, s.fail(doing, err)
		}
	}
	return out, nil
}

// RecordObject implements store.Attachments.
func (s *Store) RecordObject(ctx context.Context, name string) error {
	const doing = "recording attachment object"
	if err := s.checkOpen(doing); err != nil {
		return err
	}
	if name == "" || len(name) > store.MaxObjectNameSize {
		return fmt.Errorf("%s: object name is %d bytes, want 1..%d: %w", doing, len(name), store.MaxObjectNameSize, store.ErrInvalid)
	}
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO attachment_objects (name, refs, created_ms, keep_ms) VALUES (?1, 0, ?2, 0)
			ON CONFLICT (name) DO UPDATE SET keep_ms = 0`, name, check.Millis(s.now()))
		return err
	})
	if err != nil {
		return s.fail(doing, err)
	}
	return nil
}

// ForgetObject implements store.Attachments.
func (s *Store) ForgetObject(ctx context.Context, name string, deleted time.Time) (bool, error) {
	const doing = "forgetting attachment object"
	if err := s.checkOpen(doing); err != nil {
		return false, err
	}
	var forgotten bool
	err := s.wr.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		forgotten = false // do may run the function again
		var refs int64
		err := tx.QueryRowContext(ctx, `SELECT refs FROM attachment_objects WHERE name = ?1`, name).Scan(&refs)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if refs > 0 {
			return fmt.Errorf("object still has %d references: %w", refs, store.ErrConflict)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM attachment_objects WHERE name = ?1 AND refs = 0 AND keep_ms <= ?2`,
			name, check.DeletedMillis(deleted))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		forgotten = n == 1
		return nil
	})
	if err != nil {
		return false, s.fail(doing, err)
	}
	return forgotten, nil
}

// failAttachment is fail, keeping ErrQuota, an answer of the store's
// semantics like ErrNotFound.
func (s *Store) failAttachment(doing string, err error) error {
	if errors.Is(err, store.ErrQuota) {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return s.fail(doing, err)
}

// recordSignatureAnswer records ans with its alive digest in tx; a zero
// ans, or a digest gone from the replay set, records nothing.
func recordSignatureAnswer(ctx context.Context, tx *sql.Tx, ans store.SignatureAnswer, now int64) error {
	if ans.Body == nil {
		return nil
	}
	_, err := tx.ExecContext(ctx, `UPDATE seen_signatures SET answer = ?2 WHERE digest = ?1 AND expires_ms > ?3`,
		ans.Digest[:], ans.Body, now)
	if err != nil {
		return fmt.Errorf("recording the request's answer: %w", err)
	}
	return nil
}
