// Package s3store keeps attachment ciphertexts in an S3-compatible object
// store (AWS S3, MinIO, Ceph RGW, Garage, versitygw, R2, B2 and the like),
// through github.com/minio/minio-go/v7.
//
// An object is stored under Prefix + name. Create is given the object's
// size, so the writer knows from the start how it will send it, and
// memory does not grow with the object's size:
//
//   - an object of at most 1 MiB (smallObjectSize) is held in memory and
//     sent by a single PutObject in Commit: before Commit the server has
//     seen none of it. The buffers of such objects take their size from
//     a budget of 64 MiB per process (smallBufferBudget), so that uploads
//     that stall before their last byte cannot exhaust memory: a small
//     object that finds the budget spent is sent as a larger one is;
//   - a larger object is a multipart upload of parts of PartSize (8 MiB by
//     default; the last one shorter), started by the first Write. Each
//     part is streamed: its UploadPart request declares the part's exact
//     Content-Length and its body is fed by Write through an io.Pipe, so
//     no part is buffered; Write returns when the bytes are on their way
//     and, at a part's end, once the server has answered for the part.
//     CompleteMultipartUpload is sent in Commit. S3 makes the object
//     visible only on CompleteMultipartUpload, so nothing is visible
//     before Commit; Abort (and any failure) ends the part under way and
//     sends AbortMultipartUpload, which removes every uploaded part.
//
// A streamed part is sent once: its bytes came from the caller and are
// gone, so minio-go cannot replay them (it retries only requests whose
// body it can seek). When an UploadPart request fails, be it on the
// network or with an error status, Write returns the error and the
// upload is aborted; the caller fails the upload, and its client may try
// again. The other requests (a small object's PutObject, starting,
// completing and aborting the multipart upload) keep minio-go's retries.
// A part's request stays open while its bytes arrive, so a client that
// pauses for longer than the store waits for a request's body (AWS S3
// answers RequestTimeout) makes the part, and so the upload, fail.
//
// Sweep lists the incomplete multipart uploads under Prefix that were
// initiated before the cut-off (uploads of a process that died) and
// aborts them; SweepUnused spares those whose names a callback reports
// in use (the Delivery Service's reservations, which hold each upload's
// own deadline), so that a gateway with a shorter upload deadline does
// not abort another's upload in progress. Operators may in addition set the bucket's lifecycle rule
// AbortIncompleteMultipartUpload; the two do not conflict.
//
// Create refuses a name that exists with a HEAD request, and the request
// that makes the object visible carries If-None-Match: *, so that the
// server refuses (412) to replace an object committed since.
//
// minio-go sends that request again when its answer is lost (a
// connection reset after the server stored the object, a proxy's 5xx),
// and the retry finds the object the first attempt stored: 412, or, for
// CompleteMultipartUpload, NoSuchUpload. So every Writer draws a random
// write id and sends it as the object's user metadata (x-amz-meta-mimi-
// write, in the PUT or in the multipart upload's start). On such a
// refusal, Commit reads the object's metadata: an object of the size
// written that carries the write id was stored by one of this Writer's
// own requests, and Commit succeeds; any other object is ErrExists, and
// when the object cannot be read the outcome is ErrUncertain. A commit
// request whose last attempt is answered a 5xx (other than 501, and
// S3's 503 SlowDown, a refusal) is ErrUncertain too, unless the object
// is already this Writer's: a load balancer's 504, or S3's 500, does not
// say that the store will not store the object after all.
package s3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sync/semaphore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
)

// Part sizes. S3 wants every part but the last to be at least 5 MiB and
// at most 5 GiB, and at most 10,000 parts.
const (
	DefaultPartSize = 8 << 20
	MinPartSize     = 5 << 20
	MaxPartSize     = 1 << 30
	maxParts        = 10_000
	// MaxObjectSize is S3's limit on one object.
	MaxObjectSize = 5 << 40
)

// smallObjectSize is the largest object sent by one PutObject from memory
// rather than streamed as a multipart upload: below it, the two extra
// requests of a multipart upload cost more than the buffer.
const smallObjectSize = 1 << 20

// smallBufferBudget bounds the bytes that the buffers of small objects
// hold at once in the process, whatever the number of Stores: an upload
// may stall before its last byte for as long as its deadline allows.
const smallBufferBudget = 64 << 20

// smallBuffers is the process's budget of small objects' buffers.
var smallBuffers = semaphore.NewWeighted(smallBufferBudget)

// abortTimeout bounds the requests of Abort, which has no context.
const abortTimeout = 30 * time.Second

// Config says where the objects go and how to reach the store.
type Config struct {
	// Endpoint is the store's host[:port], without a scheme
	// ("s3.eu-west-1.amazonaws.com", "127.0.0.1:9000").
	Endpoint string
	// Bucket holds the objects; it must exist.
	Bucket string
	// Prefix is put in front of every object name ("mimi/attachments/").
	// Empty stores the names at the bucket's root.
	Prefix string
	// Region is the bucket's region; empty lets the client ask the store.
	Region string
	// AccessKey and SecretKey sign the requests. Both empty sends
	// anonymous requests.
	AccessKey, SecretKey string
	// Insecure talks plain HTTP instead of HTTPS: only for a store on
	// loopback or a private network.
	Insecure bool
	// PathStyle addresses the bucket in the path (https://host/bucket/key)
	// instead of the host name (https://bucket.host/key), as most
	// self-hosted stores need. False lets the client choose from the
	// endpoint.
	PathStyle bool
	// PartSize is the size of a multipart upload's parts; 0 means
	// DefaultPartSize. Parts are streamed, not buffered, so it costs no
	// memory: it sets the number of requests (one per part) and the
	// largest amount of data a failed part request loses. An object
	// larger than 10,000 parts gets larger parts.
	PartSize int64
	// Transport, when not nil, carries the requests (tests); the default
	// is a transport of its own with Go's proxy settings and timeouts.
	Transport http.RoundTripper
}

// Store is a storage.Backend on an S3 bucket. It is safe for concurrent
// use.
type Store struct {
	core      minio.Core
	bucket    string
	prefix    string
	partSize  int64
	transport *http.Transport // ours to close, or nil
}

// New checks cfg and returns a Store. It sends no request: a store that
// cannot be reached shows up in the first operation.
func New(cfg Config) (*Store, error) {
	if cfg.Endpoint == "" || strings.Contains(cfg.Endpoint, "/") {
		return nil, fmt.Errorf("s3 endpoint %q: want host[:port] without a scheme", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket")
	}
	if !validPrefix(cfg.Prefix) {
		return nil, fmt.Errorf("s3 prefix %q: want printable UTF-8 without a leading slash or '..' segments", cfg.Prefix)
	}
	if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
		return nil, errors.New("s3: access key and secret key go together")
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	if partSize < MinPartSize || partSize > MaxPartSize {
		return nil, fmt.Errorf("s3 part size %d: want %d to %d bytes", partSize, MinPartSize, MaxPartSize)
	}
	s := &Store{bucket: cfg.Bucket, prefix: cfg.Prefix, partSize: partSize}
	rt := cfg.Transport
	if rt == nil {
		s.transport = newTransport()
		rt = s.transport
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	var creds *credentials.Credentials
	if cfg.AccessKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, "")
	} else {
		creds = credentials.New(&credentials.Static{})
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        creds,
		Secure:       !cfg.Insecure,
		Transport:    rt,
		Region:       cfg.Region,
		BucketLookup: lookup,
		MaxRetries:   3,
	})
	if err != nil {
		return nil, fmt.Errorf("setting up the s3 client for %s: %w", cfg.Endpoint, err)
	}
	s.core = minio.Core{Client: client}
	return s, nil
}

func newTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		// Ciphertexts do not compress: no gzip negotiation, so Content-Length
		// and ranges are those of the stored bytes.
		DisableCompression: true,
	}
}

// validPrefix refuses prefixes that S3 or a posix-backed store would
// read as something else than a plain key prefix.
func validPrefix(p string) bool {
	if p == "" {
		return true
	}
	if len(p) > 512 || !utf8.ValidString(p) || strings.HasPrefix(p, "/") {
		return false
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return false
		}
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// Close releases the Store's idle connections. Writers and objects still
// open fail.
func (s *Store) Close() error {
	if s.transport != nil {
		s.transport.CloseIdleConnections()
	}
	return nil
}

func (s *Store) key(name string) string { return s.prefix + name }

// Create starts the object name of size bytes. It refuses a name that
// exists (ErrExists), and Commit one committed since (If-None-Match: *). ctx also bounds the parts that the Writer's Write
// calls upload: pass the upload's request context.
func (s *Store) Create(ctx context.Context, name string, size int64) (storage.Writer, error) {
	if !storage.ValidName(name) {
		return nil, storage.ErrInvalidName
	}
	if size < 0 || size > MaxObjectSize {
		return nil, fmt.Errorf("creating s3 object of %d bytes: want 0 to %d: %w", size, int64(MaxObjectSize), storage.ErrSize)
	}
	_, err := s.core.StatObject(ctx, s.bucket, s.key(name), minio.StatObjectOptions{})
	switch {
	case err == nil:
		return nil, storage.ErrExists
	case !isNotFound(err):
		return nil, fmt.Errorf("checking s3 object %s: %w", name, err)
	}
	partSize := s.partSize
	if need := (size + maxParts - 1) / maxParts; need > partSize {
		partSize = (need + 1<<20 - 1) &^ (1<<20 - 1) // whole MiB
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("drawing the write id of s3 object %s: %w", name, err)
	}
	w := &writer{s: s, ctx: ctx, name: name, key: s.key(name), size: size, partSize: partSize, writeID: hex.EncodeToString(id[:])}
	// A small object is buffered when the budget has room for it;
	// otherwise it is a multipart upload of one part, streamed.
	if size <= smallObjectSize && smallBuffers.TryAcquire(size) {
		w.buffered, w.held = true, size
	}
	return w, nil
}

// writeIDKey is the user metadata key (x-amz-meta-mimi-write) that
// carries a Writer's write id.
const writeIDKey = "Mimi-Write"

// isNotFound reports whether err says that the object or upload does not
// exist.
func isNotFound(err error) bool {
	r := minio.ToErrorResponse(err)
	switch r.Code {
	case minio.NoSuchKey, "NotFound", minio.NoSuchUpload:
		return true
	}
	return r.StatusCode == http.StatusNotFound && r.Code != minio.NoSuchBucket
}

// writer is one upload. An object of up to smallObjectSize bytes is
// held in memory, when smallBuffers has room for it, and sent by one
// PutObject in Commit. Any other is a
// multipart upload whose parts are streamed: each part is a PutObjectPart
// request of exactly its size, whose body is an io.Pipe fed by Write, so
// the bytes go from the caller's buffer to the connection without a part
// buffer. The request of a part ends when its last byte is written, and
// Write waits for its answer before the next part starts.
type writer struct {
	s        *Store
	ctx      context.Context
	name     string
	key      string
	size     int64
	partSize int64
	writeID  string // random, sent as the object's metadata (writeIDKey)

	buffered bool   // a small object held in memory, sent by one PutObject
	held     int64  // the bytes taken from smallBuffers, until released
	small    []byte // a buffered object's bytes so far
	written  int64
	uploadID string // of the multipart upload, once started
	parts    []minio.CompletePart
	part     *partUpload // the part being sent, or nil
	done     bool        // committed or aborted
	err      error       // the first failure; every later Write or Commit returns it
}

// partUpload is a part whose request is under way, in a goroutine of its
// own that reads the part's bytes from pw's pipe.
type partUpload struct {
	num    int
	left   int64 // bytes of the part still to write
	pw     *io.PipeWriter
	cancel context.CancelFunc // ends the request
	res    chan partResult    // the request's outcome, sent once
}

type partResult struct {
	etag string
	err  error
}

// errPartEnded closes a part's pipe once its request has returned, so
// that a Write still blocked on the pipe returns.
var errPartEnded = errors.New("s3 part request ended")

// errAborted ends the body of a part whose upload is being aborted.
var errAborted = errors.New("s3 upload aborted")

// Write sends p: into the buffer of a small object, or into the parts
// being uploaded, starting each part when its first byte arrives.
func (w *writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.done {
		return 0, errors.New("writing s3 object: upload is over")
	}
	if int64(len(p)) > w.size-w.written {
		w.fail(fmt.Errorf("writing s3 object %s: more than %d bytes: %w", w.name, w.size, storage.ErrSize))
		return 0, w.err
	}
	if err := w.ctx.Err(); err != nil {
		// The upload's context ended (its client went away): a part's
		// request would notice it only some time later.
		w.fail(fmt.Errorf("writing s3 object %s: %w", w.name, err))
		return 0, w.err
	}
	if w.buffered {
		if w.small == nil {
			w.small = make([]byte, 0, w.size)
		}
		w.small = append(w.small, p...)
		w.written += int64(len(p))
		return len(p), nil
	}
	n := 0
	for len(p) > 0 {
		if w.part == nil {
			if err := w.startPart(); err != nil {
				return n, err
			}
		}
		c := min(int64(len(p)), w.part.left)
		m, err := w.part.pw.Write(p[:c])
		n += m
		w.written += int64(m)
		w.part.left -= int64(m)
		p = p[m:]
		if err != nil || w.part.left == 0 {
			if err := w.endPart(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// startPart starts the multipart upload if need be, then the request of
// the next part, min(partSize, bytes left) long.
func (w *writer) startPart() error {
	if w.uploadID == "" {
		id, err := w.s.core.NewMultipartUpload(w.ctx, w.s.bucket, w.key, w.putOptions(false))
		if err != nil {
			w.fail(fmt.Errorf("starting s3 multipart upload of %s: %w", w.name, err))
			return w.err
		}
		w.uploadID = id
	}
	num := len(w.parts) + 1
	size := min(w.partSize, w.size-w.written)
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(w.ctx)
	res := make(chan partResult, 1)
	core, bucket, key, id := w.s.core, w.s.bucket, w.key, w.uploadID
	go func() {
		defer cancel()
		// The body is neither a Seeker (so minio-go sends it once, never
		// retrying with bytes it no longer has) nor a Closer (so the pipe's
		// error is ours to set).
		part, err := core.PutObjectPart(ctx, bucket, key, id, num, struct{ io.Reader }{pr}, size, minio.PutObjectPartOptions{})
		if err != nil {
			pr.CloseWithError(err)
		} else {
			pr.CloseWithError(errPartEnded)
		}
		res <- partResult{etag: part.ETag, err: err}
	}()
	w.part = &partUpload{num: num, left: size, pw: pw, cancel: cancel, res: res}
	return nil
}

// endPart ends the body of the current part and waits for the answer to
// its request: the part is uploaded, or the upload fails.
func (w *writer) endPart() error {
	p := w.part
	w.part = nil
	p.pw.Close()
	r := <-p.res
	switch {
	case r.err != nil:
		w.fail(fmt.Errorf("uploading part %d of s3 object %s: %w", p.num, w.name, r.err))
		return w.err
	case p.left != 0:
		w.fail(fmt.Errorf("uploading part %d of s3 object %s: the request ended %d bytes before the part's end", p.num, w.name, p.left))
		return w.err
	}
	w.parts = append(w.parts, minio.CompletePart{PartNumber: p.num, ETag: r.etag})
	return nil
}

// fail records err and aborts the upload.
func (w *writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
	w.abort()
}

// abort ends the part under way, removes what the server holds and drops
// a small object's bytes; it returns the abort's error.
func (w *writer) abort() error {
	w.dropBuffer()
	if p := w.part; p != nil {
		w.part = nil
		p.pw.CloseWithError(errAborted)
		p.cancel()
		<-p.res
	}
	if w.uploadID == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), abortTimeout)
	defer cancel()
	err := w.s.core.AbortMultipartUpload(ctx, w.s.bucket, w.key, w.uploadID)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("aborting s3 multipart upload of %s: %w", w.name, err)
	}
	w.uploadID = ""
	return nil
}

// Commit sends a small object in one request, or completes the multipart
// upload, whose every part Write has sent. The object is visible when it
// returns nil.
func (w *writer) Commit(ctx context.Context) error {
	if w.err != nil {
		return w.err
	}
	if w.done {
		return errors.New("committing s3 object: upload is over")
	}
	if w.written != w.size {
		w.fail(fmt.Errorf("committing s3 object %s: %d bytes written of %d: %w", w.name, w.written, w.size, storage.ErrSize))
		return w.err
	}
	if w.buffered {
		_, err := w.s.core.PutObject(ctx, w.s.bucket, w.key, bytes.NewReader(w.small), w.size, "", "", w.putOptions(true))
		if err != nil {
			if err = w.commitResult(ctx, err); err != nil {
				w.fail(fmt.Errorf("putting s3 object %s: %w", w.name, err))
				return w.err
			}
		}
	} else {
		_, err := w.s.core.CompleteMultipartUpload(ctx, w.s.bucket, w.key, w.uploadID, w.parts, w.putOptions(true))
		if err != nil {
			if err = w.commitResult(ctx, err); err != nil {
				w.fail(fmt.Errorf("completing s3 multipart upload of %s: %w", w.name, err))
				return w.err
			}
		}
	}
	w.done = true
	w.uploadID = ""
	w.dropBuffer()
	return nil
}

// dropBuffer drops a small object's bytes and gives their budget back.
func (w *writer) dropBuffer() {
	w.small = nil
	if w.held > 0 {
		smallBuffers.Release(w.held)
		w.held = 0
	}
}

// putOptions returns the options of a request that starts or makes the
// object: the write id as user metadata, and for a request that makes the
// object visible (commit) If-None-Match: *, so that the server refuses
// (412) to replace an object committed under the name since Create.
func (w *writer) putOptions(commit bool) minio.PutObjectOptions {
	opts := minio.PutObjectOptions{UserMetadata: map[string]string{writeIDKey: w.writeID}}
	if commit {
		opts.SetMatchETagExcept("*")
	}
	return opts
}

// commitResult is Commit's outcome of a commit request that failed with
// err. A retry refused because the object exists (412) or the upload is
// consumed (NoSuchUpload) may be minio-go's second attempt of a request
// whose first attempt stored the object, its answer lost: when the object
// under the name is this Writer's (mine), the commit succeeded (nil).
// Otherwise a 412 is ErrExists (another writer committed the name since
// Create). A 5xx other than 501, the last of minio-go's attempts, does
// not say that the store did not or will not store the object either (a
// load balancer's 502 or 504 while the store goes on, S3's 500
// InternalError; S3's 503 SlowDown, a refusal, does): the object is
// looked at as after a 412, and, when it is not this Writer's (yet), the
// outcome is uncertain. The error is marked
// with storage.ErrUncertain when the server did not answer (a timeout,
// ctx ending, a connection lost: it may have received the whole request
// and still make the object visible), after such a 5xx, when the object
// could not be read, and when the upload was consumed but no object of
// this Writer is visible (yet).
func (w *writer) commitResult(ctx context.Context, err error) error {
	r := minio.ToErrorResponse(err)
	// S3's SlowDown refuses the request before processing it: the
	// object is not stored, and an upload refused so releases its
	// reservation rather than holding it to its deadline.
	serverError := r.StatusCode >= 500 && r.StatusCode != http.StatusNotImplemented && r.Code != "SlowDown"
	switch {
	case r.StatusCode == http.StatusPreconditionFailed || r.Code == minio.NoSuchUpload || serverError:
		mine, statErr := w.mine(ctx)
		switch {
		case statErr != nil:
			return fmt.Errorf("%w: %w: %w", storage.ErrUncertain, err, statErr)
		case mine:
			return nil
		case r.StatusCode == http.StatusPreconditionFailed:
			return storage.ErrExists
		}
		return fmt.Errorf("%w: %w", storage.ErrUncertain, err)
	case r.StatusCode == 0:
		return fmt.Errorf("%w: %w", storage.ErrUncertain, err)
	}
	return err
}

// mine reports whether the object under the writer's name was stored by
// one of this writer's requests: it has the size written and carries the
// writer's id, which no other writer has.
func (w *writer) mine(ctx context.Context) (bool, error) {
	info, err := w.s.core.StatObject(ctx, w.s.bucket, w.key, minio.StatObjectOptions{})
	if err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("reading s3 object %s: %w", w.name, err)
	}
	id := info.UserMetadata[writeIDKey]
	return info.Size == w.size && subtle.ConstantTimeCompare([]byte(id), []byte(w.writeID)) == 1, nil
}

// Abort discards the upload. After a successful Commit it does nothing.
func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	if w.err == nil {
		w.err = errAborted
	}
	return w.abort()
}

// Open returns the committed object name. Reads are ranged GETs from the
// offset asked for (a ReadAt asks for exactly its bytes; a Read after a
// Seek streams from there), so a download never holds the object.
func (s *Store) Open(ctx context.Context, name string) (storage.Object, error) {
	if !storage.ValidName(name) {
		return nil, storage.ErrInvalidName
	}
	obj, err := s.core.Client.GetObject(ctx, s.bucket, s.key(name), minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("opening s3 object %s: %w", name, err)
	}
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		if isNotFound(err) {
			return nil, storage.ErrNotFound
		}
		return nil, fmt.Errorf("opening s3 object %s: %w", name, err)
	}
	return &object{Object: obj, size: info.Size}, nil
}

// object is a committed object: minio's *Object does the ranged reads.
type object struct {
	*minio.Object
	size int64
}

func (o *object) Size() int64 { return o.size }

// ReadAt reads len(p) bytes at off. Past the end it returns io.EOF, as
// io.ReaderAt asks.
func (o *object) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, io.EOF
	}
	if off < 0 {
		return 0, errors.New("reading s3 object: negative offset")
	}
	return o.Object.ReadAt(p, off)
}

// Read reads the next bytes; an empty object ends at once.
func (o *object) Read(p []byte) (int, error) {
	if o.size == 0 {
		return 0, io.EOF
	}
	return o.Object.Read(p)
}

// Delete removes the object name; a missing name is not an error.
func (s *Store) Delete(ctx context.Context, name string) error {
	if !storage.ValidName(name) {
		return storage.ErrInvalidName
	}
	err := s.core.RemoveObject(ctx, s.bucket, s.key(name), minio.RemoveObjectOptions{})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting s3 object %s: %w", name, err)
	}
	return nil
}

// Sweep aborts the incomplete multipart uploads under the prefix that
// were initiated before olderThan, and returns how many it aborted.
// Uploads of keys that are not prefix + a valid name are left alone: they
// are not ours.
func (s *Store) Sweep(ctx context.Context, olderThan time.Time) (int, error) {
	return s.SweepUnused(ctx, olderThan, nil)
}

// SweepUnused is Sweep, but leaves alone the uploads whose names inUse
// (when not nil) reports: those within their own gateway's deadline,
// which may be longer than the sweeping one's.
func (s *Store) SweepUnused(ctx context.Context, olderThan time.Time, inUse storage.InUseFunc) (int, error) {
	n := 0
	keyMarker, idMarker := "", ""
	for {
		res, err := s.core.ListMultipartUploads(ctx, s.bucket, s.prefix, keyMarker, idMarker, "", 1000)
		if err != nil {
			return n, fmt.Errorf("listing s3 multipart uploads: %w", err)
		}
		type upload struct{ name, key, id string }
		var old []upload
		var names []string
		for _, u := range res.Uploads {
			name, ok := strings.CutPrefix(u.Key, s.prefix)
			if !ok || !storage.ValidName(name) || !u.Initiated.Before(olderThan) {
				continue
			}
			old = append(old, upload{name, u.Key, u.UploadID})
			names = append(names, name)
		}
		var used map[string]bool
		if inUse != nil && len(names) > 0 {
			if used, err = inUse(ctx, names); err != nil {
				return n, fmt.Errorf("looking up the objects of s3 multipart uploads: %w", err)
			}
		}
		for _, u := range old {
			if used[u.name] {
				continue
			}
			err := s.core.AbortMultipartUpload(ctx, s.bucket, u.key, u.id)
			if err != nil && !isNotFound(err) {
				return n, fmt.Errorf("aborting s3 multipart upload of %s: %w", u.name, err)
			}
			if err == nil {
				n++
			}
		}
		if !res.IsTruncated || (res.NextKeyMarker == keyMarker && res.NextUploadIDMarker == idMarker) {
			return n, nil
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
}

// Interface guards.
var (
	_ storage.Backend       = (*Store)(nil)
	_ storage.UploadSweeper = (*Store)(nil)
)
