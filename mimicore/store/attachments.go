package store

import (
	"context"
	"errors"
	"time"
)

// ErrQuota reports an attachment that does not fit its group's or its
// uploader's quota. Nothing was written.
var ErrQuota = errors.New("attachment quota exceeded")

// Limits on attachment metadata; larger values are ErrInvalid.
const (
	// MaxObjectNameSize bounds a storage object name (storage.MaxNameSize).
	MaxObjectNameSize = 128
	// MaxContentHashSize bounds an attachment's content hash (64 bytes:
	// SHA-512).
	MaxContentHashSize = 64
)

// Attachment is the metadata of one attachment (docs/protocol.md §6): a
// record, bound to one group, that refers to a stored object of
// ciphertext. The token itself is never stored, only TokenHash, SHA-256 of
// it, so that the database does not hold bearer secrets and a lookup by
// hash reveals nothing through timing about the token.
type Attachment struct {
	// TokenHash is SHA-256 of the 32 random bytes handed to the uploader.
	TokenHash [32]byte
	// GroupID is the group the attachment is bound to, 1..MaxIDSize bytes.
	GroupID []byte
	// Object is the storage object name (storage.ValidName) holding the
	// ciphertext; copies share it.
	Object string
	// Size is the ciphertext's length in bytes, at least 0.
	Size int64
	// ContentHash is the group suite's hash of the ciphertext, 1..
	// MaxContentHashSize bytes.
	ContentHash []byte
	// Uploader is the client URI of the member who uploaded (or copied)
	// it, 1..255 bytes: the one who may delete it.
	Uploader string
	// Created is when the upload (or copy) was reserved.
	Created time.Time
	// Expires is when the record stops being visible: while pending, the
	// deadline of the upload; once committed, the end of retention.
	Expires time.Time
	// KeepObject, read by ReserveAttachment only, is the time after which
	// no backend commit of Object's bytes can still land: the upload's
	// deadline plus the longest a backend may take to make an object
	// visible after the gateway stopped waiting. Until then the object's
	// row is not forgotten (ForgetObject), whatever becomes of the
	// record, so that bytes landing after a sweep deleted them are
	// deleted by a later one; CommitAttachment, ReleaseAttachment and
	// RecordObject, called once the commit of the bytes ended, end it.
	// Zero, or a time before Expires, means Expires.
	KeepObject time.Time
}

// AttachmentQuota bounds what one group and one uploader may hold. A zero
// field means no bound. Pending uploads count as if committed, so a
// reservation that passes holds its place.
type AttachmentQuota struct {
	GroupBytes, GroupCount       int64
	UploaderBytes, UploaderCount int64
}

// AttachmentUsage is what a group or an uploader holds: the records alive
// or not yet swept, pending ones included, and their summed sizes (a copy
// counts its full size against its own group).
type AttachmentUsage struct {
	Bytes, Count int64
}

// Attachments keeps attachment metadata. The bytes live in a storage
// backend (package attachment/storage); an object row counts the records
// that refer to it, and an object no record refers to any more is listed
// by UnreferencedObjects until its bytes are deleted and ForgetObject drops
// it. So bytes are removed only after the last record that could reach
// them, and a crash at any point leaves at worst an unreferenced object
// that the next sweep removes.
//
// The life of an upload:
//
//	err := s.ReserveAttachment(ctx, a, quota) // pending; quota checked and held
//	// stream the bytes to the backend, commit the object there
//	err = s.CommitAttachment(ctx, a.TokenHash, retentionEnd, ans) // visible
//	// on any failure: s.ReleaseAttachment(ctx, a.TokenHash), then delete
//	// the object's bytes and ForgetObject; a reservation already gone
//	// has its object recorded again (RecordObject) first
//
// A pending record is never visible to LookupAttachment; one whose Expires
// passed before it was committed cannot be committed and is removed by
// ExpireAttachments, like an expired committed record.
type Attachments interface {
	// ReserveAttachment records a as pending, with a new object row of
	// one reference kept until a.KeepObject (ForgetObject), if the group's and the uploader's usage plus a stay
	// within q; otherwise it fails with ErrQuota and writes nothing. The
	// check and the write are atomic: of concurrent reservations that
	// together exceed a quota, only those that fit succeed. A TokenHash or
	// an Object already recorded is ErrConflict. A hosted group deleted
	// here (DeleteGroup) is ErrNotFound, atomically with the write: no
	// record is written into a group whose attachments DeleteGroup
	// dropped. A group reinitialized here (EpochCommit.ReInit) is
	// ErrReInitialized, checked in the same write, before the quotas:
	// its members must not use it any more. Both write nothing.
	ReserveAttachment(ctx context.Context, a Attachment, q AttachmentQuota) error
	// CommitAttachment makes the pending record tokenHash visible until
	// expires. It fails with ErrNotFound when no pending, unexpired record
	// has that hash (the upload took longer than its deadline, or was
	// released). The caller's backend commit of the bytes succeeded, so
	// the object's row is kept no longer (its KeepObject ends): once its
	// last record goes, ForgetObject drops it. The same transaction
	// records ans (SignatureAnswer).
	CommitAttachment(ctx context.Context, tokenHash [32]byte, expires time.Time, ans SignatureAnswer) error
	// ReleaseAttachment drops the pending record tokenHash and its
	// reference to its object, and returns the object's name (which is
	// then unreferenced). The caller's backend commit of the bytes has
	// ended (or was never started), so the object's row is kept no
	// longer (its KeepObject ends). It fails with ErrNotFound when no
	// pending record has that hash.
	ReleaseAttachment(ctx context.Context, tokenHash [32]byte) (object string, err error)
	// LookupAttachment returns the committed, unexpired record tokenHash
	// of groupID. A record of another group is ErrNotFound, like an
	// absent, pending or expired one.
	LookupAttachment(ctx context.Context, groupID []byte, tokenHash [32]byte) (Attachment, error)
	// DeleteAttachment removes the committed record tokenHash of groupID
	// (ErrNotFound as LookupAttachment) and its reference to its object,
	// and reports whether that was the object's last reference. When
	// uploader is not empty, only a record whose Uploader equals it is
	// removed; any other is ErrConflict and stays.
	DeleteAttachment(ctx context.Context, groupID []byte, tokenHash [32]byte, uploader string) (a Attachment, lastRef bool, err error)
	// CopyAttachment records dst as a committed copy of the committed,
	// unexpired record srcHash of srcGroup (ErrNotFound otherwise): dst
	// takes the source's Object, Size and ContentHash and one more
	// reference to the object; its TokenHash, GroupID, Uploader, Created
	// and Expires are dst's own. The copy counts against q for dst's
	// group and uploader (ErrQuota, nothing written), atomically as in
	// ReserveAttachment; a deleted target group is ErrNotFound and a
	// reinitialized one ErrReInitialized, as in ReserveAttachment,
	// checked before the source. A reinitialized source group is no
	// obstacle: its members carry its attachments to the group that
	// succeeds it. The same transaction records ans (SignatureAnswer). It
	// returns the stored copy.
	CopyAttachment(ctx context.Context, srcGroup []byte, srcHash [32]byte, dst Attachment, q AttachmentQuota, ans SignatureAnswer) (Attachment, error)
	// GroupAttachmentUsage returns what groupID holds.
	GroupAttachmentUsage(ctx context.Context, groupID []byte) (AttachmentUsage, error)
	// UploaderAttachmentUsage returns what uploader holds, in every group.
	UploaderAttachmentUsage(ctx context.Context, uploader string) (AttachmentUsage, error)
	// ExpireAttachments removes at most limit records, pending or
	// committed, whose Expires is at or before now, with their
	// references, and returns how many it removed. The objects left
	// without references are then listed by UnreferencedObjects.
	ExpireAttachments(ctx context.Context, now time.Time, limit int) (int, error)
	// UnreferencedObjects lists at most limit objects that no record
	// refers to, in name order, those whose names sort after after (all
	// of them from ""): their bytes are to be deleted, then ForgetObject
	// called. A sweep pages on from the last name it was given, so that
	// objects whose bytes cannot be deleted do not hide the others.
	UnreferencedObjects(ctx context.Context, after string, limit int) ([]string, error)
	// ObjectsInUse reports which of names have an object row with
	// references: a pending record (an upload within its own deadline,
	// until ExpireAttachments removes it) or a committed one. A sweep of
	// a backend's temporary uploads leaves those alone, whatever
	// deadline the sweeping gateway has. Names without a row, or with
	// one without references, are absent from the map.
	ObjectsInUse(ctx context.Context, names []string) (map[string]bool, error)
	// RecordObject adds an object row name with no references, unless
	// the name has a row, which keeps its references. The caller's
	// backend commit of the bytes has ended, so either way the row is
	// kept no longer (its KeepObject ends). Bytes stored under a name
	// whose row is gone (the sweeper expired an upload's reservation and
	// forgot its object before the backend committed the bytes) are then
	// listed by UnreferencedObjects until deleted and forgotten. A name
	// longer than MaxObjectNameSize, or empty, is ErrInvalid.
	RecordObject(ctx context.Context, name string) error
	// ForgetObject drops the object row name once its bytes are deleted,
	// and reports whether this call dropped it. deleted is when that
	// delete was sent: a row whose KeepObject time is after it stays,
	// without an error (forgotten is false), and UnreferencedObjects keeps
	// listing it, since a commit of the bytes may still land after the
	// delete. A zero deleted says that no commit of the bytes can land any
	// more (none was started, or it ended), and drops the row whatever
	// its KeepObject. A name with references is ErrConflict and stays; an
	// unknown name is not an error (forgotten is false), so a sweep can
	// repeat it, and of concurrent calls for one row only one reports it
	// forgotten.
	ForgetObject(ctx context.Context, name string, deleted time.Time) (forgotten bool, err error)
}
