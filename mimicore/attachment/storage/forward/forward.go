// Package forward keeps attachment ciphertexts on the provider's legacy
// backend: the gateway hands the bytes over HTTP to a base URL the
// operator configures and keeps only the metadata (in its own store). The
// protocol is in docs/protocol.md §6.2, "Attachment storage on the legacy
// backend", so that a backend in any language can implement it:
//
//	PUT    <base><name>   the ciphertext, Content-Length bytes, Expect: 100-continue
//	HEAD   <base><name>   its size in Content-Length, or 404
//	GET    <base><name>   the bytes, or a Range of them (206)
//	DELETE <base><name>   2xx or 404 both mean gone
//
// each signed like the legacy backend delivery of docs/protocol.md §11: a
// Mimi-Timestamp header and a Mimi-Signature header of an HMAC-SHA256 over
// the timestamp, the method, the name and the PUT's length (Signature,
// Verify).
//
// The upload streams: Create sends the PUT's headers and returns once the
// backend has agreed to take the body (100 Continue) or refused it (409:
// ErrExists); Write passes the bytes to the request body as they come,
// except the object's last byte, which only Commit sends. The backend
// makes an object visible only once its whole body has arrived, so before
// Commit it never has the whole body, and a cut-off PUT (Abort, a wrong
// size, a crash) leaves nothing visible. Commit succeeds when the backend
// answers the completed PUT with 2xx and a HEAD then finds the object of
// its size. The PUT does not end with Create's
// ctx once the last byte is sent: a Commit without an answer (its ctx
// ended, the Timeout passed, the connection was lost), or answered a 5xx
// other than 501 (a reverse proxy's 504 while the backend goes on), is
// storage.ErrUncertain, as the backend may still store the object.
//
// Sweep has nothing to do: the gateway keeps no temporary data, and the
// backend discards an incomplete body when its connection ends.
package forward

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage"
)

// Limits and defaults.
const (
	// MaxObjectSize bounds an object (1 TiB): larger sizes are refused
	// before a request is sent, and a HEAD answer above it is an error.
	MaxObjectSize = 1 << 40
	// MinKeySize is the shortest HMAC key accepted.
	MinKeySize = 32
	// MaxClockSkew is how far a request's timestamp may be from the
	// backend's clock.
	MaxClockSkew = 5 * time.Minute
	// DefaultTimeout bounds a HEAD, a DELETE, and the wait for the
	// answer to a PUT's headers or to its completed body.
	DefaultTimeout = 30 * time.Second
	// HeaderTimestamp is a request's time, in decimal Unix seconds.
	HeaderTimestamp = "Mimi-Timestamp"
	// HeaderSignature is "v1=" and the hex HMAC-SHA256 of the request
	// (Signature).
	HeaderSignature = "Mimi-Signature"
	// SignatureLabel starts the bytes the HMAC covers.
	SignatureLabel = "mimi-attachment-v1"
)

// Config says where the legacy backend is and how to authenticate to it.
type Config struct {
	// BaseURL is the backend's URL that object names are appended to:
	// https://legacy.example/mimi/attachments/ (it must end with '/' and
	// have no query or fragment). Plain http is for a backend on
	// loopback or a private network only: the signature covers no body
	// bytes.
	BaseURL string
	// Key is the HMAC-SHA256 key shared with the backend, at least
	// MinKeySize bytes.
	Key []byte
	// Timeout bounds a HEAD or DELETE, and the wait for each answer of a
	// PUT (to its headers, to its completed body); 0 means
	// DefaultTimeout. The body itself streams as long as it flows.
	Timeout time.Duration
	// Transport, when not nil, carries the requests (tests); the default
	// is a transport of its own that waits up to Timeout for 100 Continue.
	Transport http.RoundTripper
}

// Store is a storage.Backend on the legacy backend. It is safe for
// concurrent use.
type Store struct {
	base      *url.URL
	key       []byte
	timeout   time.Duration
	client    *http.Client
	transport *http.Transport // ours to close, or nil
	now       func() time.Time
}

// New checks cfg and returns a Store. It sends no request.
func New(cfg Config) (*Store, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("forward base URL: %w", err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil ||
		u.RawQuery != "" || u.Fragment != "" || !strings.HasSuffix(u.Path, "/") {
		return nil, fmt.Errorf("forward base URL %q: want http(s)://host[:port]/path/ ending in '/', without user, query or fragment", cfg.BaseURL)
	}
	if len(cfg.Key) < MinKeySize {
		return nil, fmt.Errorf("forward key: %d bytes, want at least %d", len(cfg.Key), MinKeySize)
	}
	s := &Store{base: u, key: append([]byte(nil), cfg.Key...), timeout: cfg.Timeout, now: time.Now}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	rt := cfg.Transport
	if rt == nil {
		s.transport = &http.Transport{
			Proxy: http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{
				Timeout:   10 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: s.timeout,
			ResponseHeaderTimeout: s.timeout,
			DisableCompression:    true,
		}
		rt = s.transport
	}
	s.client = &http.Client{
		Transport: rt,
		// A redirect would carry a signed request elsewhere: the
		// backend answers where it was asked.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return s, nil
}

// Close releases the Store's idle connections.
func (s *Store) Close() error {
	if s.transport != nil {
		s.transport.CloseIdleConnections()
	}
	return nil
}

// Signature returns the Mimi-Signature value of a request: "v1=" and the
// lowercase hex HMAC-SHA256 under key of SignatureLabel, the timestamp,
// the method, the name and the length, each in decimal or as written and
// separated by line feeds (none after the length). length is the
// Content-Length of a PUT and 0 for HEAD, GET and DELETE.
func Signature(key []byte, timestamp int64, method, name string, length int64) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(SignatureLabel + "\n" + strconv.FormatInt(timestamp, 10) + "\n" + method + "\n" + name + "\n" + strconv.FormatInt(length, 10)))
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// sign sets the signature headers of a request.
func (s *Store) sign(h http.Header, method, name string, length int64) {
	t := s.now().Unix()
	h.Set(HeaderTimestamp, strconv.FormatInt(t, 10))
	h.Set(HeaderSignature, Signature(s.key, t, method, name, length))
}

// Errors of Verify.
var (
	// ErrUnauthorized reports a request without a valid signature.
	ErrUnauthorized = errors.New("forward: bad or missing signature")
	// ErrStale reports a timestamp more than MaxClockSkew from now.
	ErrStale = errors.New("forward: timestamp out of range")
)

// Verify checks the signature headers of a request to a legacy backend,
// for a backend written in Go: name is the object name the backend took
// from the path (after the base), length the PUT's Content-Length (0 for
// other methods), now the backend's clock. The signature is compared in
// constant time.
func Verify(r *http.Request, key []byte, name string, length int64, now time.Time) error {
	ts := r.Header.Get(HeaderTimestamp)
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || ts != strconv.FormatInt(t, 10) {
		return ErrUnauthorized
	}
	want := Signature(key, t, r.Method, name, length)
	if !hmac.Equal([]byte(r.Header.Get(HeaderSignature)), []byte(want)) {
		return ErrUnauthorized
	}
	if d := now.Sub(time.Unix(t, 0)); d > MaxClockSkew || d < -MaxClockSkew {
		return ErrStale
	}
	return nil
}

// url returns the object's URL: the base and the name, which ValidName
// has checked (lowercase hex needs no escaping).
func (s *Store) url(name string) string {
	return s.base.String() + name
}

func (s *Store) newRequest(ctx context.Context, method, name string, body io.Reader, length int64) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, s.url(name), body)
	if err != nil {
		return nil, fmt.Errorf("forward %s %s: %w", method, name, err)
	}
	s.sign(req.Header, method, name, length)
	return req, nil
}

// statusError describes an unexpected answer. The body is not read into
// the error: it is the backend's, and may say anything.
func statusError(op, name string, resp *http.Response) error {
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("forward %s %s: the legacy backend refused the signature (%s): check the shared key and the clocks", op, name, resp.Status)
	}
	return fmt.Errorf("forward %s %s: the legacy backend answered %s", op, name, resp.Status)
}

// drain discards a little of a body so its connection can be reused, then
// closes it.
func drain(body io.ReadCloser) {
	io.CopyN(io.Discard, body, 4<<10)
	body.Close()
}

// head returns the size of the committed object name, or ErrNotFound.
func (s *Store) head(ctx context.Context, name string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := s.newRequest(ctx, http.MethodHead, name, nil, 0)
	if err != nil {
		return 0, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("forward HEAD %s: %w", name, err)
	}
	drain(resp.Body)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return 0, storage.ErrNotFound
	case resp.StatusCode != http.StatusOK:
		return 0, statusError("HEAD", name, resp)
	case resp.ContentLength < 0 || resp.ContentLength > MaxObjectSize:
		return 0, fmt.Errorf("forward HEAD %s: the legacy backend gave no valid Content-Length", name)
	}
	return resp.ContentLength, nil
}

// errAborted ends the body of an aborted upload.
var errAborted = errors.New("forward: upload aborted")

// errAnswered ends the body of a PUT that the backend answered before
// reading all of it.
var errAnswered = errors.New("forward: the legacy backend answered before the end of the body")

// Create sends the PUT's headers and returns once the backend takes the
// body (or, for an empty object, once a HEAD found no object: its PUT
// waits for Commit, as it has no last byte to hold back). ctx bounds the
// whole PUT, body included: pass the upload's request context. A Write
// waits while the backend does not read, until ctx ends.
func (s *Store) Create(ctx context.Context, name string, size int64) (storage.Writer, error) {
	if !storage.ValidName(name) {
		return nil, storage.ErrInvalidName
	}
	if size < 0 || size > MaxObjectSize {
		return nil, fmt.Errorf("creating forwarded object of %d bytes: want 0 to %d: %w", size, int64(MaxObjectSize), storage.ErrSize)
	}
	w := &writer{s: s, name: name, size: size}
	if size == 0 {
		if _, err := s.head(ctx, name); err == nil {
			return nil, storage.ErrExists
		} else if !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
		return w, nil
	}
	if err := w.start(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

// writer is one PUT in flight. Write and Commit or Abort come from one
// goroutine; the request runs in another.
type writer struct {
	s    *Store
	name string
	size int64

	pw      *io.PipeWriter
	cancel  context.CancelFunc
	unbind  func() bool   // detaches the request from Create's ctx
	done    chan struct{} // closed when the request has ended
	resp    *http.Response
	respErr error

	written int64
	last    []byte // the held-back last byte, once written
	sentAll bool   // every byte went to the backend
	over    bool   // committed or aborted
	err     error  // the first failure
}

// bodyReader signals its first Read: the backend took the body.
type bodyReader struct {
	r    *io.PipeReader
	once sync.Once
	read chan struct{}
}

func (b *bodyReader) Read(p []byte) (int, error) {
	b.once.Do(func() { close(b.read) })
	return b.r.Read(p)
}

func (b *bodyReader) Close() error { return b.r.Close() }

// start sends the PUT and waits for 100 Continue (the transport's first
// read of the body) or an early answer.
//
// The request does not run on ctx: once Commit has sent the last byte,
// the outcome is Commit's to wait for, whatever becomes of the uploading
// client (whose request context ctx usually is). Until then ctx ending
// cuts the request off and ends a Write blocked on the pipe.
func (w *writer) start(ctx context.Context) error {
	reqCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	pr, pw := io.Pipe()
	body := &bodyReader{r: pr, read: make(chan struct{})}
	req, err := w.s.newRequest(reqCtx, http.MethodPut, w.name, body, w.size)
	if err != nil {
		cancel()
		return err
	}
	req.ContentLength = w.size
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Expect", "100-continue")
	w.pw, w.cancel, w.done = pw, cancel, make(chan struct{})
	w.unbind = context.AfterFunc(ctx, func() {
		pr.CloseWithError(ctx.Err())
		cancel()
	})
	go func() {
		defer close(w.done)
		w.resp, w.respErr = w.s.client.Do(req)
		if w.resp != nil {
			drain(w.resp.Body)
		}
		// An answer before the whole body (a refusal, a failure)
		// unblocks Write.
		pr.CloseWithError(errAnswered)
	}()
	// The transport sends the body anyway after its ExpectContinueTimeout
	// (Timeout): the timer only catches a backend that never answers.
	timer := time.NewTimer(2 * w.s.timeout)
	defer timer.Stop()
	select {
	case <-body.read:
		return nil
	case <-w.done:
	case <-timer.C:
		w.stop(errors.New("timed out"))
		return fmt.Errorf("forward PUT %s: no answer to the headers in %v", w.name, 2*w.s.timeout)
	case <-ctx.Done():
		w.stop(ctx.Err())
		return fmt.Errorf("forward PUT %s: %w", w.name, ctx.Err())
	}
	// Answered before taking the body.
	w.stop(nil)
	return w.answerError(true)
}

// stop ends the request and waits for it.
func (w *writer) stop(cause error) {
	if cause == nil {
		cause = errAborted
	}
	w.unbind()
	w.pw.CloseWithError(cause)
	w.cancel()
	<-w.done
}

// answerError turns the request's outcome into Create's or Commit's
// error; nil for a 2xx.
func (w *writer) answerError(early bool) error {
	if w.respErr != nil {
		return fmt.Errorf("forward PUT %s: %w", w.name, w.respErr)
	}
	switch c := w.resp.StatusCode; {
	case c == http.StatusConflict:
		return storage.ErrExists
	case c >= 200 && c < 300 && early:
		// A backend must not answer 2xx to a body it has not read.
		return fmt.Errorf("forward PUT %s: the legacy backend answered %s before the body", w.name, w.resp.Status)
	case c >= 200 && c < 300:
		return nil
	}
	return statusError("PUT", w.name, w.resp)
}

// fail records err and cuts the request off: the backend sees an
// incomplete body and keeps nothing.
func (w *writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	if w.pw != nil {
		w.stop(nil)
	}
	return w.err
}

// Write passes p to the request body, except the object's last byte.
func (w *writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.over {
		return 0, errors.New("writing forwarded object: upload is over")
	}
	if int64(len(p)) > w.size-w.written {
		return 0, w.fail(fmt.Errorf("writing forwarded object %s: more than %d bytes: %w", w.name, w.size, storage.ErrSize))
	}
	send := p
	if w.written+int64(len(p)) == w.size && len(p) > 0 {
		send = p[:len(p)-1]
		w.last = []byte{p[len(p)-1]}
	}
	if len(send) > 0 {
		if _, err := w.pw.Write(send); err != nil {
			return 0, w.fail(w.bodyError(err))
		}
	}
	w.written += int64(len(p))
	return len(p), nil
}

// bodyError explains a failed body write: the answer the backend gave
// early, or the transport's error. The transport stops reading the body
// when an answer arrives, either through errAnswered or by closing the
// pipe itself (io.ErrClosedPipe), so in both cases the PUT's outcome is
// awaited: its round trip ends once the body is no longer read.
func (w *writer) bodyError(err error) error {
	if errors.Is(err, errAnswered) || errors.Is(err, io.ErrClosedPipe) {
		<-w.done
		if e := w.answerError(true); e != nil {
			return e
		}
	}
	return fmt.Errorf("forward PUT %s: sending the body: %w", w.name, err)
}

// Commit sends the last byte and waits for the backend's answer to the
// completed PUT: 2xx commits.
func (w *writer) Commit(ctx context.Context) error {
	if w.err != nil {
		return w.err
	}
	if w.over {
		return errors.New("committing forwarded object: upload is over")
	}
	if w.written != w.size {
		return w.fail(fmt.Errorf("committing forwarded object %s: %d bytes written of %d: %w", w.name, w.written, w.size, storage.ErrSize))
	}
	if w.size == 0 {
		return w.putEmpty(ctx)
	}
	if !w.unbind() {
		// Create's ctx ended and cut the request off before its last byte.
		return w.fail(fmt.Errorf("forward PUT %s: the upload ended before its last byte", w.name))
	}
	if err := w.sendLast(ctx); err != nil {
		return w.fail(err)
	}
	w.sentAll = true
	w.pw.Close()
	timer := time.NewTimer(w.s.timeout)
	defer timer.Stop()
	// From here the backend has the whole body and may store it whatever
	// the gateway does: an answer that does not come is ErrUncertain.
	select {
	case <-w.done:
	case <-ctx.Done():
		return w.fail(fmt.Errorf("forward PUT %s: waiting for the answer: %w: %w", w.name, storage.ErrUncertain, ctx.Err()))
	case <-timer.C:
		return w.fail(fmt.Errorf("forward PUT %s: no answer in %v: %w", w.name, w.s.timeout, storage.ErrUncertain))
	}
	if w.respErr != nil {
		w.err = fmt.Errorf("forward PUT %s: %w: %w", w.name, storage.ErrUncertain, w.respErr)
		return w.err
	}
	if err := w.answerError(false); err != nil {
		w.err = w.uncertainStatus(err)
		return w.err
	}
	w.cancel()
	// A 2xx may have come before the backend read the whole body (an
	// HTTP/1.1 connection kept alive, on which Go's transport sends the
	// body after an early answer): only an object of the whole size
	// counts.
	switch n, err := w.s.head(ctx, w.name); {
	case errors.Is(err, storage.ErrNotFound):
		w.err = fmt.Errorf("forward PUT %s: the legacy backend answered %s but has no object", w.name, w.resp.Status)
		return w.err
	case err != nil:
		w.err = fmt.Errorf("forward PUT %s: checking the stored object: %w: %w", w.name, storage.ErrUncertain, err)
		return w.err
	case n != w.size:
		w.err = fmt.Errorf("forward PUT %s: the legacy backend answered %s but holds %d bytes of %d", w.name, w.resp.Status, n, w.size)
		return w.err
	}
	w.over = true
	return nil
}

// sendLast passes the held-back last byte to the request body, waiting
// for the transport to take it at most until ctx ends: a backend that
// stopped reading (its HTTP/2 flow-control window or the connection's
// buffers full) leaves the transport blocked on the bytes before, and the
// write would wait for it for ever, past the upload deadline. A byte not
// taken never reached the backend, so that failure is certain.
func (w *writer) sendLast(ctx context.Context) error {
	res := make(chan error, 1)
	go func() {
		_, err := w.pw.Write(w.last)
		res <- err
	}()
	var err error
	select {
	case err = <-res:
	case <-ctx.Done():
		w.pw.CloseWithError(errAborted)
		if err = <-res; err == nil {
			return nil // taken after all: the wait for the answer sees ctx's end
		}
		return fmt.Errorf("forward PUT %s: the legacy backend did not take the body's last byte: %w", w.name, ctx.Err())
	}
	if err != nil {
		return w.bodyError(err)
	}
	return nil
}

// putEmpty sends the PUT of an empty object.
func (w *writer) putEmpty(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.s.timeout)
	defer cancel()
	req, err := w.s.newRequest(ctx, http.MethodPut, w.name, http.NoBody, 0)
	if err != nil {
		return err
	}
	// No Expect: 100-continue, which a request without content must not
	// carry (RFC 9110 §10.1.1).
	req.Header.Set("Content-Type", "application/octet-stream")
	w.sentAll = true
	resp, err := w.s.client.Do(req)
	if err != nil {
		w.err = fmt.Errorf("forward PUT %s: %w: %w", w.name, storage.ErrUncertain, err)
		return w.err
	}
	drain(resp.Body)
	w.resp = resp
	if err := w.answerError(false); err != nil {
		w.err = w.uncertainStatus(err)
		return w.err
	}
	w.over = true
	return nil
}

// uncertainStatus marks err, the failure of a completed PUT, with
// storage.ErrUncertain when the answer was a 5xx other than 501: a
// reverse proxy's 502 or 504, or a backend's 500, does not say that the
// backend will not store the body it received (a proxy that timed out
// while the backend goes on), so the object may become visible later.
func (w *writer) uncertainStatus(err error) error {
	if c := w.resp.StatusCode; c >= 500 && c != http.StatusNotImplemented {
		return fmt.Errorf("%w: %w", storage.ErrUncertain, err)
	}
	return err
}

// Abort cuts the PUT off. After a Commit that sent every byte and failed
// otherwise than by a 409 (no answer, another status, a HEAD that found no
// object of the size), the backend may have kept the object, so Abort
// deletes it.
// After a successful Commit it does nothing.
func (w *writer) Abort() error {
	if w.over {
		return nil
	}
	w.over = true
	if w.err == nil {
		w.err = errAborted
	}
	if w.pw != nil {
		w.stop(nil)
	}
	if w.sentAll && !errors.Is(w.err, storage.ErrExists) {
		ctx, cancel := context.WithTimeout(context.Background(), w.s.timeout)
		defer cancel()
		if err := w.s.Delete(ctx, w.name); err != nil {
			return fmt.Errorf("aborting forwarded object %s: %w", w.name, err)
		}
	}
	return nil
}

// Open asks the backend for the object's size (HEAD); reads are ranged
// GETs.
func (s *Store) Open(ctx context.Context, name string) (storage.Object, error) {
	if !storage.ValidName(name) {
		return nil, storage.ErrInvalidName
	}
	size, err := s.head(ctx, name)
	if err != nil {
		return nil, err
	}
	return &object{s: s, ctx: ctx, name: name, size: size}, nil
}

// Delete removes the object; 404 counts as removed.
func (s *Store) Delete(ctx context.Context, name string) error {
	if !storage.ValidName(name) {
		return storage.ErrInvalidName
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := s.newRequest(ctx, http.MethodDelete, name, nil, 0)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("forward DELETE %s: %w", name, err)
	}
	drain(resp.Body)
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode/100 == 2 {
		return nil
	}
	return statusError("DELETE", name, resp)
}

// Sweep returns 0: the gateway keeps no temporary data of its uploads,
// and the backend discards a body whose connection ended before its end.
func (s *Store) Sweep(context.Context, time.Time) (int, error) { return 0, nil }

// object reads a committed object with ranged GETs: ReadAt asks for its
// bytes only, Read streams from the offset until a Seek moves it.
type object struct {
	s    *Store
	ctx  context.Context
	name string
	size int64

	mu   sync.Mutex // Read, Seek and Close
	pos  int64
	body io.ReadCloser // streaming from pos, or nil
}

func (o *object) Size() int64 { return o.size }

// get sends a GET of the bytes [from, to] and checks that the answer is
// those bytes.
func (o *object) get(from, to int64) (io.ReadCloser, error) {
	req, err := o.s.newRequest(o.ctx, http.MethodGet, o.name, nil, 0)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	resp, err := o.s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("forward GET %s: %w", o.name, err)
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		want := fmt.Sprintf("bytes %d-%d/%d", from, to, o.size)
		if cr := resp.Header.Get("Content-Range"); cr != want {
			drain(resp.Body)
			return nil, fmt.Errorf("forward GET %s: Content-Range %q, want %q", o.name, cr, want)
		}
	case http.StatusOK:
		// A backend that ignores Range sends the whole object: usable
		// only when the whole object was asked for.
		if from != 0 || to != o.size-1 || resp.ContentLength != o.size {
			drain(resp.Body)
			return nil, fmt.Errorf("forward GET %s: the legacy backend ignored the Range header", o.name)
		}
	case http.StatusNotFound:
		drain(resp.Body)
		return nil, fmt.Errorf("forward GET %s: %w", o.name, storage.ErrNotFound)
	default:
		drain(resp.Body)
		return nil, statusError("GET", o.name, resp)
	}
	return resp.Body, nil
}

// ReadAt reads len(p) bytes at off with one ranged GET.
func (o *object) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("reading forwarded object: negative offset")
	}
	if off >= o.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := min(off+int64(len(p)), o.size)
	body, err := o.get(off, end-1)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	n, err := io.ReadFull(body, p[:end-off])
	if err != nil {
		return n, fmt.Errorf("forward GET %s: %w", o.name, err)
	}
	if end-off < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// Read streams from the current offset.
func (o *object) Read(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.pos >= o.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if o.body == nil {
		body, err := o.get(o.pos, o.size-1)
		if err != nil {
			return 0, err
		}
		o.body = body
	}
	if rest := o.size - o.pos; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := o.body.Read(p)
	o.pos += int64(n)
	if err == io.EOF && o.pos < o.size {
		err = fmt.Errorf("forward GET %s: %w", o.name, io.ErrUnexpectedEOF)
	}
	if o.pos == o.size {
		o.body.Close()
		o.body = nil
		if err == nil || err == io.EOF {
			err = nil
		}
	}
	return n, err
}

// Seek moves the offset; the next Read starts a GET from there.
func (o *object) Seek(offset int64, whence int) (int64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	pos, err := storage.SeekTarget(o.pos, o.size, offset, whence)
	if err != nil {
		return o.pos, fmt.Errorf("seeking forwarded object: %w", err)
	}
	if pos != o.pos && o.body != nil {
		o.body.Close()
		o.body = nil
	}
	o.pos = pos
	return pos, nil
}

// Close ends a GET in progress.
func (o *object) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.body != nil {
		o.body.Close()
		o.body = nil
	}
	return nil
}

// Interface guard.
var _ storage.Backend = (*Store)(nil)
