package ds

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Attachment defaults (docs/protocol.md §6).
const (
	// AttachmentTokenSize is the length of issued tokens: 256 random bits.
	AttachmentTokenSize = 32
	// DefaultAttachmentMaxSize bounds one attachment's ciphertext.
	DefaultAttachmentMaxSize = 100 << 20
	// DefaultAttachmentRetention is how long an attachment is kept.
	DefaultAttachmentRetention = 30 * 24 * time.Hour
	// DefaultUploadDeadline is how long an upload may take from its
	// header to its last byte; a pending upload older than that is
	// removed by the sweeper.
	DefaultUploadDeadline = time.Hour
	// DefaultCommitGrace is how long after an upload's deadline the
	// backend may still make its bytes visible, a commit whose outcome
	// the gateway did not learn (storage.ErrUncertain): well above the
	// backends' own bounds on an answer (s3store's 2 minutes, forward's
	// 30 s).
	DefaultCommitGrace = time.Hour
	// objectNameSize is the number of random bytes in an object name.
	objectNameSize = 16
	// sweepBatch is how many records or objects one sweep step handles.
	sweepBatch = 256
)

// Attachments is the attachment service of the Delivery Service
// (docs/protocol.md §6): metadata in Store, ciphertext in Backend. Set
// Service.Attachments to enable uploads, downloads, deletes and copies;
// its fields are set before first use and not changed afterwards.
type Attachments struct {
	// Store keeps the metadata.
	Store store.Attachments
	// Backend keeps the ciphertexts.
	Backend storage.Backend
	// MaxSize bounds one attachment's content_length in bytes; 0 means
	// DefaultAttachmentMaxSize.
	MaxSize int64
	// Quota bounds what each group and each uploader hold; zero fields
	// mean no bound.
	Quota store.AttachmentQuota
	// Retention is how long an attachment stays after its upload or copy;
	// 0 means DefaultAttachmentRetention.
	Retention time.Duration
	// UploadDeadline bounds the time from an upload's header to its
	// commit; 0 means DefaultUploadDeadline.
	UploadDeadline time.Duration
	// CommitGrace is how long after an upload's deadline a backend commit
	// of its bytes may still land; 0 means DefaultCommitGrace. The
	// object's row is kept that long (store.Attachment.KeepObject), so a
	// sweep deletes the bytes whenever they land.
	CommitGrace time.Duration
	// AllowDeleteByMembers lets any member of the group delete an
	// attachment; otherwise only its uploader (the client URI recorded at
	// upload or copy) may.
	AllowDeleteByMembers bool
	// MaxUploadsInProgress bounds the uploads one uploader (the client
	// URI of the signer's leaf) may have in progress at once, counted in
	// Slots; one more is refused rate_limited before anything is stored.
	// 0 means DefaultMaxUploadsInProgress.
	MaxUploadsInProgress int
	// Slots counts the uploads in progress. Services that share it share
	// the counts (the sites of one gateway, and a config and the one that
	// replaces it on a reload), each applying its own
	// MaxUploadsInProgress. Nil means counts of this service alone.
	Slots *UploadSlots
	// Logger receives failures the client is not told the cause of. Nil
	// discards them.
	Logger *zap.Logger

	// ownSlots are the counts when Slots is nil.
	ownSlots UploadSlots
}

func (a *Attachments) maxSize() int64 {
	if a.MaxSize > 0 {
		return a.MaxSize
	}
	return DefaultAttachmentMaxSize
}

func (a *Attachments) retention() time.Duration {
	if a.Retention > 0 {
		return a.Retention
	}
	return DefaultAttachmentRetention
}

func (a *Attachments) uploadDeadline() time.Duration {
	if a.UploadDeadline > 0 {
		return a.UploadDeadline
	}
	return DefaultUploadDeadline
}

func (a *Attachments) commitGrace() time.Duration {
	if a.CommitGrace > 0 {
		return a.CommitGrace
	}
	return DefaultCommitGrace
}

func (a *Attachments) maxUploadsInProgress() int {
	if a.MaxUploadsInProgress > 0 {
		return a.MaxUploadsInProgress
	}
	return DefaultMaxUploadsInProgress
}

func (a *Attachments) slots() *UploadSlots {
	if a.Slots != nil {
		return a.Slots
	}
	return &a.ownSlots
}

func (a *Attachments) logger() *zap.Logger {
	if a.Logger == nil {
		return zap.NewNop()
	}
	return a.Logger
}

// errNoAttachments answers the attachment types when the service is off.
func errNoAttachments() error {
	return moh.Errorf(moh.CodeNotImplemented, "attachments are not enabled on this Delivery Service")
}

// unavailable is a backend_unavailable answer whose cause is logged, never
// sent.
func unavailable(doing string, err error) error {
	return moh.Errorf(moh.CodeBackendUnavailable, "%s: %w", doing, err)
}

// sender returns the client URI of the request's signer: the identity of
// its leaf in the group state the signature was verified against.
func (r *Request) sender() (string, error) {
	if r.state == nil {
		return "", errNotFound()
	}
	leaf, ok := r.state.Member(r.Body.Auth.SenderIndex)
	if !ok || leaf.IsBlank() {
		return "", errNotFound()
	}
	id := leaf.Credential().Identity
	if len(id) == 0 || len(id) > store.MaxClientURISize {
		return "", moh.Errorf(moh.CodeForbidden, "the sender's credential names no client URI")
	}
	return string(id), nil
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Upload stores an attachment: r is the authenticated upload header
// (Authenticate or AuthenticatePrefix), content is what follows it in the
// body. In order, before a byte of content is read: the replay set, the
// size limit (too_large), the content_hash length for the group's suite
// (malformed), the uploader's uploads in progress (MaxUploadsInProgress,
// rate_limited; this upload's slot is held until Upload returns), then
// in the store's write of the pending record a group reinitialized by
// re_initialize_group (forbidden, errReInitialized), and the quotas,
// reserved with the record (quota_exceeded). Then exactly content_length bytes are streamed into
// the backend while hashed with the group suite's Hash; a short or long
// body or another hash is content_mismatch, and a body that fails to
// arrive is answered with the reader's error. An upload whose reservation
// is gone when it ends is body_timeout past its deadline, not_found
// before it (delete_group removed it with the group). A byte-identical retry of an
// upload that succeeded is answered the first token, read from the
// replay set, where the record's commit wrote it (checkReplayAnswered),
// before any of the above and without reading content. On every failure the
// temporary data and the reservation are removed, so nothing becomes
// visible; the record is committed (visible) only after the backend
// committed the bytes. A commit of the record that fails with an error
// that does not say whether it was written is looked up (release): a
// record found committed is answered as a success; one the store cannot
// tell about is left, with its bytes, to expire. The answer is
// attachment_token(7).
func (s *Service) Upload(ctx context.Context, r *Request, content io.Reader) (*moh.DSResponse, error) {
	a := s.Attachments
	if a == nil {
		return nil, errNoAttachments()
	}
	if r.Body.Body.Type != moh.AttachmentUpload {
		return nil, moh.Errorf(moh.CodeWrongRequestType, "request type %s is not an upload", r.Body.Body.Type)
	}
	ta, first, err := s.checkReplayAnswered(ctx, r.Body)
	if err != nil || first != nil {
		// A retry of an upload that succeeded: its answer, with no byte
		// of the content read and nothing charged.
		return first, err
	}
	h := &r.Body.Body.Upload
	if h.ContentLength > uint64(a.maxSize()) {
		return nil, moh.Errorf(moh.CodeTooLarge, "content_length %d is above this Delivery Service's limit of %d bytes", h.ContentLength, a.maxSize())
	}
	size := int64(h.ContentLength)
	cs := r.state.CipherSuite()
	hasher, err := cs.NewHash()
	if err != nil {
		return nil, moh.Errorf(moh.CodeMalformed, "the group's cipher suite has no hash: %w", err)
	}
	if len(h.ContentHash) != hasher.Size() {
		return nil, moh.Errorf(moh.CodeMalformed, "content_hash is %d bytes, the group suite's hash has %d", len(h.ContentHash), hasher.Size())
	}
	uploader, err := r.sender()
	if err != nil {
		return nil, err
	}
	// The uploader's slot, before anything is stored, held until the
	// upload is answered (the commit included), whatever the way out.
	release, ok := a.slots().Acquire(uploader, a.maxUploadsInProgress())
	if !ok {
		return nil, moh.Errorf(moh.CodeRateLimited, "this client's uploads in progress are at this Delivery Service's limit of %d; retry once one has ended",
			a.maxUploadsInProgress())
	}
	defer release()

	token := make([]byte, AttachmentTokenSize)
	rand.Read(token)
	// The deadline of the upload, and of its commit, is the
	// reservation's expiry, measured from before it: never after it,
	// so that no commit the gateway waits for lands after a sweep could
	// take the reservation.
	deadline := time.Now().Add(a.uploadDeadline())
	now := s.now()
	rec := store.Attachment{
		TokenHash:   sha256.Sum256(token),
		GroupID:     r.GroupID,
		Object:      randomHex(objectNameSize),
		Size:        size,
		ContentHash: h.ContentHash,
		Uploader:    uploader,
		Created:     now,
		Expires:     now.Add(a.uploadDeadline()),
		KeepObject:  now.Add(a.uploadDeadline() + a.commitGrace()),
	}
	if err := a.Store.ReserveAttachment(ctx, rec, a.Quota); err != nil {
		if errors.Is(err, store.ErrReInitialized) {
			// re_initialize_group closed the group, possibly after the
			// request was authenticated.
			return nil, errReInitialized("attachment_upload")
		}
		if errors.Is(err, store.ErrQuota) {
			return nil, moh.Errorf(moh.CodeQuotaExceeded, "the attachment does not fit the group's or the uploader's quota")
		}
		if errors.Is(err, store.ErrNotFound) {
			// delete_group committed after the request was
			// authenticated.
			return nil, errNotFound()
		}
		return nil, unavailable("reserving the attachment", err)
	}
	// From here every failure undoes the reservation, also when the
	// client went away and ctx ended.
	cleanup := context.WithoutCancel(ctx)
	settled := false // committed, or released already
	defer func() {
		if !settled {
			a.release(cleanup, &rec, false)
		}
	}()

	// The upload deadline bounds the backend too: a Write blocked on a
	// backend that stopped reading returns when it passes.
	upCtx, cancelUp := context.WithDeadline(ctx, deadline)
	defer cancelUp()
	w, err := a.Backend.Create(upCtx, rec.Object, size)
	if err != nil {
		return nil, unavailable("creating the attachment object", err)
	}
	if err := a.stream(w, hasher, content, size, h.ContentHash); err != nil {
		w.Abort() //nolint:errcheck // a sweep removes what Abort leaves
		if errors.Is(upCtx.Err(), context.DeadlineExceeded) {
			return nil, moh.Errorf(moh.CodeBodyTimeout, "the upload outlasted its deadline of %s", a.uploadDeadline())
		}
		return nil, err
	}
	// The client cannot cancel the commit once its last byte is in: the
	// backend may be storing the object, which Abort's delete and a
	// release would race. The wait is bounded by the upload deadline.
	commitCtx, cancel := context.WithDeadline(cleanup, deadline)
	err = w.Commit(commitCtx)
	cancel()
	if err != nil {
		w.Abort() //nolint:errcheck // a sweep removes what Abort leaves
		if errors.Is(err, storage.ErrUncertain) {
			// The backend may still make the object visible, after any
			// delete sent now: the reservation stays pending, counted
			// against the quotas, until its deadline passes and the
			// sweeper removes it; the object's row stays until
			// KeepObject, so a sweep deletes the bytes once they land.
			settled = true
			a.logger().Warn("the attachment object's commit has an unknown outcome: its reservation is left to expire", zap.String("object", rec.Object), zap.Error(err))
		}
		return nil, unavailable("committing the attachment object", err)
	}
	if err := a.Store.CommitAttachment(cleanup, rec.TokenHash, s.now().Add(a.retention()), ta.record(token)); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			if s.now().Before(rec.Expires) {
				// Within its deadline, the reservation went only with
				// its group (delete_group): not_found, as any request
				// for the deleted group.
				return nil, errNotFound()
			}
			return nil, moh.Errorf(moh.CodeBodyTimeout, "the upload outlasted its deadline of %s", a.uploadDeadline())
		}
		// The store may have written the commit and failed to say so (a
		// connection lost after COMMIT): release tells the two apart
		// before it deletes a byte.
		settled = true
		if !a.release(cleanup, &rec, true) {
			return nil, unavailable("committing the attachment record", err)
		}
		a.logger().Warn("the attachment record was committed although the store answered an error", zap.Error(err))
	}
	settled = true
	return &moh.DSResponse{Type: moh.ResponseAttachmentToken, Token: token}, nil
}

// uploadBufferSize is the size of the buffers uploads are streamed
// through: a write to the backend (and a read of the body) per 256 KiB
// rather than per io.Copy's 32 KiB.
const uploadBufferSize = 256 << 10

// uploadBuffers holds the buffers of stream.
var uploadBuffers = sync.Pool{New: func() any { b := make([]byte, uploadBufferSize); return &b }}

// stream copies exactly size bytes of content into w and the hasher, then
// checks that content ends there and that the hash is want.
func (a *Attachments) stream(w io.Writer, hasher interface {
	io.Writer
	Sum([]byte) []byte
}, content io.Reader, size int64, want []byte) error {
	buf := uploadBuffers.Get().(*[]byte)
	defer uploadBuffers.Put(buf)
	n, err := io.CopyBuffer(io.MultiWriter(w, hasher), io.LimitReader(content, size), *buf)
	if err != nil {
		var coded *moh.Error
		if errors.As(err, &coded) {
			return err // the body's own failure (timeout, limit)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return moh.Errorf(moh.CodeContentMismatch, "the content ended after %d of %d bytes", n, size)
		}
		return moh.Errorf(moh.CodeBackendUnavailable, "streaming the attachment content: %w", err)
	}
	if n < size {
		return moh.Errorf(moh.CodeContentMismatch, "the content ended after %d of %d bytes", n, size)
	}
	var one [1]byte
	switch m, err := io.ReadFull(content, one[:]); {
	case m > 0:
		return moh.Errorf(moh.CodeContentMismatch, "the content is longer than content_length %d", size)
	case err != nil && err != io.EOF:
		var coded *moh.Error
		if errors.As(err, &coded) {
			return err
		}
	}
	if subtle.ConstantTimeCompare(hasher.Sum(nil), want) != 1 {
		return moh.Errorf(moh.CodeContentMismatch, "the content does not hash to content_hash")
	}
	return nil
}

// release drops a pending upload's reservation and its object, whose
// bytes were never committed or must go. A reservation already gone (the
// upload outlasted its deadline and the sweeper removed it, possibly
// before the bytes were committed) still has its bytes deleted: the object
// name is this upload's alone. The sweeper may have forgotten the object
// too, so it is recorded again first (unreferenced): should the delete
// fail, or the process die before it, the sweeper deletes the bytes.
//
// uncertain is set when the record's commit failed with an error that
// does not say whether it was written. A reservation gone is then looked
// up: a committed record keeps its bytes, and release reports true (it
// kept the record). When the store cannot tell, nothing is deleted: the
// object is recorded again, which does nothing to a committed record's
// object and leaves the bytes of a swept one to the sweeper. Other
// failures are logged: the record's deadline lets the sweeper finish the
// job, and the object recorded again, should it be gone, its bytes.
func (a *Attachments) release(ctx context.Context, rec *store.Attachment, uncertain bool) (kept bool) {
	_, err := a.Store.ReleaseAttachment(ctx, rec.TokenHash)
	switch {
	case err == nil:
		a.removeObject(ctx, rec.Object)
		return false
	case !errors.Is(err, store.ErrNotFound):
		a.logger().Error("releasing a failed upload", zap.Error(err))
		a.recordObject(ctx, rec.Object)
		return false
	}
	// Not pending any more: swept, or (uncertain) committed. A record
	// once committed stays so until its retention ends or its uploader,
	// who has not got the token, deletes it; so the lookup after the
	// release cannot miss a commit that lands late.
	if uncertain {
		_, err := a.Store.LookupAttachment(ctx, rec.GroupID, rec.TokenHash)
		switch {
		case err == nil:
			return true
		case !errors.Is(err, store.ErrNotFound):
			a.logger().Error("looking up an upload whose commit failed", zap.String("object", rec.Object), zap.Error(err))
			a.recordObject(ctx, rec.Object)
			return false
		}
	}
	a.recordObject(ctx, rec.Object)
	a.removeObject(ctx, rec.Object)
	return false
}

// recordObject records the object of an upload again, unreferenced,
// unless it has a row (store.Attachments.RecordObject); a failure is
// logged.
func (a *Attachments) recordObject(ctx context.Context, object string) {
	if err := a.Store.RecordObject(ctx, object); err != nil {
		a.logger().Error("recording the object of a failed upload", zap.String("object", object), zap.Error(err))
	}
}

// removeObject deletes an unreferenced object's bytes, then its row. A
// failure leaves the row for the sweeper to try again. The caller knows
// that no commit of the bytes can land any more (none was started, or it
// ended), so the row goes whatever its KeepObject.
func (a *Attachments) removeObject(ctx context.Context, object string) {
	if err := a.Backend.Delete(ctx, object); err != nil {
		a.logger().Error("deleting attachment bytes", zap.String("object", object), zap.Error(err))
		return
	}
	if _, err := a.Store.ForgetObject(ctx, object, time.Time{}); err != nil && !errors.Is(err, store.ErrConflict) {
		a.logger().Error("forgetting attachment object", zap.Error(err))
	}
}

// Download is an attachment opened for reading: the HTTP layer streams
// Object (whole, framed as attachment_content(8), or a range of it) and
// closes it.
type Download struct {
	// Object is the ciphertext, Size bytes.
	Object storage.Object
	// Size is the ciphertext's length.
	Size int64
	// ContentHash is the group suite's hash of the ciphertext, as the
	// uploader declared and the Delivery Service checked it.
	ContentHash []byte
}

// Download opens the attachment of an authenticated attachment_download.
// The signer is a current member of the group (Authenticate); a token of
// another group, an unknown, expired or deleted token all answer
// not_found with the message of a non-member's refusal, so nobody learns
// whether a token exists elsewhere.
func (s *Service) Download(ctx context.Context, r *Request) (*Download, error) {
	a := s.Attachments
	if a == nil {
		return nil, errNoAttachments()
	}
	if r.Body.Body.Type != moh.AttachmentDownload {
		return nil, moh.Errorf(moh.CodeWrongRequestType, "request type %s is not a download", r.Body.Body.Type)
	}
	ref := &r.Body.Body.Attachment
	rec, err := a.Store.LookupAttachment(ctx, ref.GroupID, sha256.Sum256(ref.Token))
	if errors.Is(err, store.ErrNotFound) {
		return nil, errNotFound()
	}
	if err != nil {
		return nil, unavailable("looking up the attachment", err)
	}
	obj, err := a.Backend.Open(ctx, rec.Object)
	if errors.Is(err, storage.ErrNotFound) {
		a.logger().Error("attachment record without bytes", zap.String("object", rec.Object))
		return nil, errNotFound()
	}
	if err != nil {
		return nil, unavailable("opening the attachment", err)
	}
	return &Download{Object: obj, Size: obj.Size(), ContentHash: rec.ContentHash}, nil
}

// handleAttachment serves attachment_delete, whose signature Handle has
// recorded.
func (s *Service) handleAttachment(ctx context.Context, r *Request) (*moh.DSResponse, error) {
	a := s.Attachments
	if a == nil {
		return nil, errNoAttachments()
	}
	if r.Body.Body.Type == moh.AttachmentDelete {
		return s.deleteAttachment(ctx, a, r)
	}
	return nil, moh.Errorf(moh.CodeWrongRequestType, "request type %s is not served here", r.Body.Body.Type)
}

// deleteAttachment removes the record; the bytes go with the last
// reference (a copy keeps them).
func (s *Service) deleteAttachment(ctx context.Context, a *Attachments, r *Request) (*moh.DSResponse, error) {
	ref := &r.Body.Body.Attachment
	uploader := ""
	if !a.AllowDeleteByMembers {
		var err error
		if uploader, err = r.sender(); err != nil {
			return nil, err
		}
	}
	rec, last, err := a.Store.DeleteAttachment(ctx, ref.GroupID, sha256.Sum256(ref.Token), uploader)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, errNotFound()
	case errors.Is(err, store.ErrConflict):
		return nil, moh.Errorf(moh.CodeForbidden, "only the uploader may delete this attachment")
	case err != nil:
		return nil, unavailable("deleting the attachment", err)
	}
	if last {
		a.removeObject(context.WithoutCancel(ctx), rec.Object)
	}
	return &moh.DSResponse{Type: moh.ResponseOK}, nil
}

// copyAttachment records a copy in the target group (Authenticate checked
// that the signer is a member of both) and answers its new token, which
// the same store transaction records with the request's signature (ta,
// from checkReplayAnswered) for a byte-identical retry. A target group
// reinitialized by re_initialize_group is forbidden (errReInitialized),
// checked in that transaction; a reinitialized source group is not.
func (s *Service) copyAttachment(ctx context.Context, a *Attachments, r *Request, ta tokenAnswer) (*moh.DSResponse, error) {
	c := &r.Body.Body.Copy
	copier, err := r.sender()
	if err != nil {
		return nil, err
	}
	token := make([]byte, AttachmentTokenSize)
	rand.Read(token)
	now := s.now()
	dst := store.Attachment{TokenHash: sha256.Sum256(token), GroupID: c.TargetGroupID, Uploader: copier,
		Created: now, Expires: now.Add(a.retention())}
	_, err = a.Store.CopyAttachment(ctx, c.GroupID, sha256.Sum256(c.Token), dst, a.Quota, ta.record(token))
	switch {
	case errors.Is(err, store.ErrReInitialized):
		// The target group: a copy out of a reinitialized group is
		// how its members carry its attachments to its successor.
		return nil, errReInitialized("attachment_copy")
	case errors.Is(err, store.ErrNotFound):
		return nil, errNotFound()
	case errors.Is(err, store.ErrQuota):
		return nil, moh.Errorf(moh.CodeQuotaExceeded, "the copy does not fit the target group's or the copier's quota")
	case err != nil:
		return nil, unavailable("copying the attachment", err)
	}
	return &moh.DSResponse{Type: moh.ResponseAttachmentToken, Token: token}, nil
}

// SweepStats reports what one Sweep removed.
type SweepStats struct {
	// Expired is the number of records past their retention or upload
	// deadline.
	Expired int
	// Objects is the number of objects whose bytes were deleted and
	// whose rows were dropped: an object kept listed after a delete
	// (store.Attachment.KeepObject), whose bytes each sweep deletes
	// again until then, counts once, in the sweep that drops its row.
	Objects int
	// Temporary is the number of temporary uploads the backend removed.
	Temporary int
}

// Sweep removes expired attachments and then their bytes (those of a
// shared object only with its last reference), the objects that refused
// or failed uploads left, and the backend's temporary data older than the
// upload deadline. Its state is all in the store and the backend, so a
// sweep after a restart finishes what a crash interrupted. A step that
// fails does not keep the others from running: an object whose bytes
// cannot be deleted is logged and passed over (it stays listed for the
// next sweep), and the error returned says how many were.
func (a *Attachments) Sweep(ctx context.Context, now time.Time) (SweepStats, error) {
	var st SweepStats
	var errs []error
	for {
		n, err := a.Store.ExpireAttachments(ctx, now, sweepBatch)
		st.Expired += n
		if err != nil {
			errs = append(errs, err)
			break
		}
		if n < sweepBatch {
			break
		}
	}
	if err := a.sweepObjects(ctx, now, &st); err != nil {
		errs = append(errs, err)
	}
	// An upload whose reservation still holds is within its own
	// gateway's deadline, which may be longer than this one's (a rolling
	// upload_deadline change): a backend that can tell uploads apart by
	// name leaves those alone. The store's record went first (above), so
	// an upload past its own deadline is not kept.
	var n int
	var err error
	if us, ok := a.Backend.(storage.UploadSweeper); ok {
		n, err = us.SweepUnused(ctx, now.Add(-a.uploadDeadline()), a.Store.ObjectsInUse)
	} else {
		n, err = a.Backend.Sweep(ctx, now.Add(-a.uploadDeadline()))
	}
	st.Temporary = n
	if err != nil {
		errs = append(errs, fmt.Errorf("temporary data: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return st, fmt.Errorf("sweeping attachments: %w", err)
	}
	return st, nil
}

// sweepObjects deletes the bytes of every unreferenced object, then its
// row, unless the row is kept past now (store.Attachment.KeepObject). It pages through them in name order, so that objects whose bytes
// cannot be deleted, which stay listed, do not hide the ones after them.
func (a *Attachments) sweepObjects(ctx context.Context, now time.Time, st *SweepStats) error {
	tried, failed := 0, 0
	var last error
	after := ""
	for {
		names, err := a.Store.UnreferencedObjects(ctx, after, sweepBatch)
		if err != nil {
			return errors.Join(err, failedObjects(failed, tried, last))
		}
		for _, name := range names {
			if err := ctx.Err(); err != nil {
				return errors.Join(err, failedObjects(failed, tried, last))
			}
			tried++
			if err := a.Backend.Delete(ctx, name); err != nil {
				failed, last = failed+1, fmt.Errorf("deleting bytes: %w", err)
				a.logger().Error("sweeping attachments: deleting bytes", zap.String("object", name), zap.Error(err))
				continue
			}
			// now is before the delete was sent: a row kept past it
			// (a commit of the bytes may still land) stays listed, and
			// a later sweep deletes the bytes again. The object counts
			// once, in the sweep that forgets it, not in each sweep
			// that deletes its bytes meanwhile.
			forgotten, err := a.Store.ForgetObject(ctx, name, now)
			if err != nil && !errors.Is(err, store.ErrConflict) {
				failed, last = failed+1, err
				a.logger().Error("sweeping attachments: forgetting attachment object", zap.String("object", name), zap.Error(err))
				continue
			}
			if forgotten {
				st.Objects++
			}
		}
		if len(names) < sweepBatch {
			return failedObjects(failed, tried, last)
		}
		after = names[len(names)-1]
	}
}

// failedObjects is the error of a sweep that could not delete failed of
// the tried unreferenced objects, the last for the reason last; nil when
// none failed.
func failedObjects(failed, tried int, last error) error {
	if failed == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d unreferenced objects not deleted (they stay for the next sweep), the last: %w", failed, tried, last)
}
