// Package s3store keeps attachment ciphertexts in an S3-compatible object
// store (AWS S3, MinIO, Ceph RGW, Garage, versitygw, R2, B2 and the like),
// through github.com/minio/minio-go/v7.
//
// An object is stored under Prefix + name. An upload is held in a buffer
// of one part (PartSize, 8 MiB by default) at a time, so memory does not
// grow with the object's size:
//
//   - an object that fits in one part is sent by a single PutObject in
//     Commit: before Commit the server has seen none of it;
//   - a larger object is a multipart upload, started when the first part
//     is full. Each full part is uploaded as the next bytes arrive, and
//     the last part and CompleteMultipartUpload are sent in Commit. S3
//     makes the object visible only on CompleteMultipartUpload, so nothing
//     is visible before Commit; Abort sends AbortMultipartUpload, which
//     removes every uploaded part.
//
// Sweep lists the incomplete multipart uploads under Prefix that were
// initiated before the cut-off (uploads of a process that died) and
// aborts them. Operators may in addition set the bucket's lifecycle rule
// AbortIncompleteMultipartUpload; the two do not conflict.
//
// Create refuses a name that exists with a HEAD request. Two uploads of
// one name racing past that check would both succeed, the later
// replacing the earlier: names are 32 random bytes drawn by the gateway,
// so they never race.
package s3store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

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
	// PartSize is the size of a multipart upload's parts, and so the
	// memory an upload holds; 0 means DefaultPartSize. An object larger
	// than 10,000 parts gets larger parts.
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
	bufs      sync.Pool       // *[]byte of partSize
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
	s.bufs.New = func() any { b := make([]byte, 0, s.partSize); return &b }
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
// exists (ErrExists). ctx also bounds the parts that the Writer's Write
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
	return &writer{s: s, ctx: ctx, name: name, key: s.key(name), size: size, partSize: partSize}, nil
}

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

// writer is one upload. Its buffer holds the part being filled; full
// parts are uploaded only when the byte after them arrives, so the last
// part always waits for Commit.
type writer struct {
	s        *Store
	ctx      context.Context
	name     string
	key      string
	size     int64
	partSize int64

	buf      *[]byte // from s.bufs, nil before the first byte and after the end
	written  int64
	uploadID string // of the multipart upload, once started
	parts    []minio.CompletePart
	done     bool  // committed or aborted
	err      error // the first failure; every later Write or Commit returns it
}

// Write buffers p, uploading each part that fills up.
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
	n := 0
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = w.s.bufs.Get().(*[]byte)
			*w.buf = (*w.buf)[:0]
			w.ensureCap()
		}
		b := *w.buf
		if int64(len(b)) == w.partSize {
			if err := w.uploadPart(w.ctx); err != nil {
				return n, err
			}
			b = *w.buf
		}
		c := copy(b[len(b):w.partSize], p)
		*w.buf = b[:len(b)+c]
		p = p[c:]
		n += c
		w.written += int64(c)
	}
	return n, nil
}

// ensureCap makes the buffer hold partSize bytes: the pool's buffers are
// s.partSize long, larger parts get their own.
func (w *writer) ensureCap() {
	if int64(cap(*w.buf)) < w.partSize {
		b := make([]byte, len(*w.buf), w.partSize)
		copy(b, *w.buf)
		w.s.bufs.Put(w.buf)
		w.buf = &b
	}
}

// uploadPart sends the buffer as the next part, starting the multipart
// upload first if need be.
func (w *writer) uploadPart(ctx context.Context) error {
	if w.uploadID == "" {
		id, err := w.s.core.NewMultipartUpload(ctx, w.s.bucket, w.key, minio.PutObjectOptions{})
		if err != nil {
			w.fail(fmt.Errorf("starting s3 multipart upload of %s: %w", w.name, err))
			return w.err
		}
		w.uploadID = id
	}
	num := len(w.parts) + 1
	b := *w.buf
	part, err := w.s.core.PutObjectPart(ctx, w.s.bucket, w.key, w.uploadID, num,
		bytes.NewReader(b), int64(len(b)), minio.PutObjectPartOptions{})
	if err != nil {
		w.fail(fmt.Errorf("uploading part %d of s3 object %s: %w", num, w.name, err))
		return w.err
	}
	w.parts = append(w.parts, minio.CompletePart{PartNumber: num, ETag: part.ETag})
	*w.buf = b[:0]
	return nil
}

// fail records err, aborts the multipart upload and drops the buffer.
func (w *writer) fail(err error) {
	if w.err == nil {
		w.err = err
	}
	w.abort()
}

// abort removes what the server holds and releases the buffer; it returns
// the abort's error.
func (w *writer) abort() error {
	w.release()
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

func (w *writer) release() {
	if w.buf != nil {
		if int64(cap(*w.buf)) == w.s.partSize {
			w.s.bufs.Put(w.buf)
		}
		w.buf = nil
	}
}

// Commit sends the last part and completes the upload (or sends a small
// object in one request). The object is visible when it returns nil.
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
	var data []byte
	if w.buf != nil {
		data = *w.buf
	}
	if w.uploadID == "" {
		_, err := w.s.core.PutObject(ctx, w.s.bucket, w.key, bytes.NewReader(data), int64(len(data)), "", "", minio.PutObjectOptions{})
		if err != nil {
			w.fail(fmt.Errorf("putting s3 object %s: %w", w.name, err))
			return w.err
		}
	} else {
		if len(data) > 0 {
			if err := w.uploadPart(ctx); err != nil {
				return err
			}
		}
		_, err := w.s.core.CompleteMultipartUpload(ctx, w.s.bucket, w.key, w.uploadID, w.parts, minio.PutObjectOptions{})
		if err != nil {
			w.fail(fmt.Errorf("completing s3 multipart upload of %s: %w", w.name, err))
			return w.err
		}
	}
	w.done = true
	w.uploadID = ""
	w.release()
	return nil
}

// Abort discards the upload. After a successful Commit it does nothing.
func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	if w.err == nil {
		w.err = errors.New("s3 upload aborted")
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
	n := 0
	keyMarker, idMarker := "", ""
	for {
		res, err := s.core.ListMultipartUploads(ctx, s.bucket, s.prefix, keyMarker, idMarker, "", 1000)
		if err != nil {
			return n, fmt.Errorf("listing s3 multipart uploads: %w", err)
		}
		for _, u := range res.Uploads {
			name, ok := strings.CutPrefix(u.Key, s.prefix)
			if !ok || !storage.ValidName(name) || !u.Initiated.Before(olderThan) {
				continue
			}
			err := s.core.AbortMultipartUpload(ctx, s.bucket, u.Key, u.UploadID)
			if err != nil && !isNotFound(err) {
				return n, fmt.Errorf("aborting s3 multipart upload of %s: %w", name, err)
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

// Interface guard.
var _ storage.Backend = (*Store)(nil)
