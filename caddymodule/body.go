package caddymodule

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/sync/semaphore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// Limits on request bodies in flight. A client that sends a body slowly, or
// stops one byte short, holds a connection but neither memory beyond the
// budget nor time beyond the deadline: 300 connections each stalling one
// byte short of 1 MiB once held 400 MB for as long as they stayed open.
const (
	// bodyBudget bounds the bytes of request bodies held in memory at once
	// by every gateway of the process; a request that cannot get its share
	// before its body deadline is answered backend_unavailable.
	bodyBudget = 64 << 20
	// bodyChunk is how much of a body is first read and taken from the
	// budget; a longer body's buffer then doubles as its bytes arrive, so
	// a body that stalls holds about what it sent, whatever length it
	// announced.
	bodyChunk = 64 << 10
)

var (
	// bodies is the process's body budget, shared by every gateway.
	bodies = semaphore.NewWeighted(bodyBudget)
	// bodyTimeout bounds the time to read one request body, from the
	// first byte the handler asks for. A variable for tests.
	bodyTimeout = 30 * time.Second
)

// readBody reads the request body of x, at most limit bytes, within
// bodyTimeout and the body budget. An empty body is allowed only where
// emptyOK (and then needs no content type); any other body must be
// application/octet-stream, which is checked before a byte is read.
func (g *Gateway) readBody(x *exchange, limit int64, emptyOK bool) ([]byte, error) {
	r := x.r
	if r.ContentLength > limit {
		x.closeAfter()
		return nil, moh.Errorf(moh.CodeTooLarge, "body of %d bytes exceeds the %d byte limit", r.ContentLength, limit)
	}
	if x.rt.body != bodyTokenRequest && !(emptyOK && r.ContentLength <= 0) {
		if err := checkContentType(r, contentType); err != nil {
			return nil, err
		}
	}
	body, err := x.read(limit, true)
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		if emptyOK {
			return body, nil
		}
		return nil, moh.Errorf(moh.CodeMalformed, "empty body")
	}
	if emptyOK && r.ContentLength < 0 {
		// A chunked body of unknown length: its type is known only now.
		if err := checkContentType(r, contentType); err != nil {
			return nil, err
		}
	}
	return body, nil
}

// readPrefix reads at most n bytes of the body of x, with the same deadline
// and budget as readBody; a shorter body is returned whole.
func (g *Gateway) readPrefix(x *exchange, n int64) ([]byte, error) {
	return x.read(n, false)
}

// read reads up to limit bytes of the body; with whole, a body longer than
// limit is too_large, else the rest is left unread. On failure the read
// deadline stays, and an HTTP/1 connection is closed after the answer, so
// the server does not wait on the unread rest of a stalled body before it
// answers.
//
// The deadline is armed lazily: a timer sets the connection's read
// deadline to the past only if the body has not arrived within
// bodyTimeout, which wakes a blocked Read with os.ErrDeadlineExceeded. On
// HTTP/2 every SetReadDeadline is a round trip to the connection's
// goroutine (about 13 us, 4% of a signed request's cost when set and reset
// on each request); a timer that is stopped costs a small fraction of that.
//
// The body is read past Caddy's idle-timeout wrapper (caddyhttp's
// IdleTimeoutReader, on by default), which sets the deadline before and
// clears it after every Read, two more such round trips per request: this
// deadline is stricter (a whole body within bodyTimeout, or the server's
// read_timeout if shorter, however steadily it trickles), and the
// wrapper's own drain bound for HTTP/1 still applies after the handler.
func (x *exchange) read(limit int64, whole bool) ([]byte, error) {
	timeout := bodyTimeout
	if srv, ok := x.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv.ReadTimeout > 0 {
		timeout = min(timeout, time.Duration(srv.ReadTimeout))
	}
	deadline := time.Now().Add(timeout)
	guard := armReadGuard(x.w, timeout)
	body, err := x.readWithin(deadline, timeout, limit, whole)
	fired := guard.disarm()
	if err != nil {
		x.closeAfter()
		return nil, err
	}
	if fired && !whole {
		// The rest of the body is read later, by its own rules. (A body
		// read whole needs no reset: an HTTP/2 stream ends with its
		// handler, and an HTTP/1 server sets the connection's deadline
		// anew for the next request.)
		http.NewResponseController(x.w).SetReadDeadline(time.Time{}) //nolint:errcheck // best effort: the server's own timeouts still apply
	}
	return body, nil
}

// body returns the request body, unwrapped from Caddy's idle-timeout
// reader (see read).
func (x *exchange) body() io.Reader {
	if ir, ok := x.r.Body.(*caddyhttp.IdleTimeoutReader); ok {
		return ir.ReadCloser
	}
	return x.r.Body
}

// readGuard interrupts a body read that outlasts its time: when its timer
// fires before disarm, it sets the read deadline of the request's
// connection (HTTP/1) or stream (HTTP/2) to the present.
type readGuard struct {
	w     http.ResponseWriter
	timer *time.Timer

	mu     sync.Mutex
	done   bool // disarmed: the handler may be gone, w must not be used
	expire bool // the deadline was set
}

// armReadGuard starts a guard that fires after d.
func armReadGuard(w http.ResponseWriter, d time.Duration) *readGuard {
	g := &readGuard{w: w}
	g.timer = time.AfterFunc(d, g.fire)
	return g
}

// fire sets the read deadline, unless the guard was disarmed first.
func (g *readGuard) fire() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done {
		return
	}
	// A controller that cannot set deadlines leaves the server's own
	// timeouts in charge.
	if http.NewResponseController(g.w).SetReadDeadline(time.Now()) == nil {
		g.expire = true
	}
}

// disarm stops the guard and reports whether it set the deadline. After
// disarm returns, the guard never touches the request again.
func (g *readGuard) disarm() (fired bool) {
	g.timer.Stop()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.done = true
	return g.expire
}

// closeAfter asks for the connection to be closed after the answer when
// the body may be left unread (HTTP/1 only: an HTTP/2 stream ends alone).
func (x *exchange) closeAfter() {
	if x.r.ProtoMajor == 1 {
		x.w.Header().Set("Connection", "close")
	}
}

// readWithin is read's loop, bounded by deadline and the body budget. The
// buffer, and the budget it holds, grows with what arrived: first
// bodyChunk (or the announced length, when shorter), then doubling up to
// the announced length or limit.
func (x *exchange) readWithin(deadline time.Time, timeout time.Duration, limit int64, whole bool) ([]byte, error) {
	target := limit
	if n := x.r.ContentLength; n >= 0 {
		target = min(n, limit)
	}
	size := min(target, bodyChunk)
	var buf []byte
	for {
		if x.r.ContentLength >= 0 && int64(len(buf)) == x.r.ContentLength {
			return buf, nil // the server ends a body at its Content-Length
		}
		if int64(cap(buf)) < size {
			if err := x.hold(deadline, size-int64(cap(buf))); err != nil {
				return nil, err
			}
			grown := make([]byte, len(buf), size)
			copy(grown, buf)
			buf = grown
		}
		n, err := x.body().Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case errors.Is(err, io.EOF):
			return buf, nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, moh.Errorf(moh.CodeBodyTimeout, "the body did not arrive within %s", timeout)
		case err != nil:
			return nil, &moh.Error{Code: moh.CodeMalformed, Message: "the body could not be read", Err: err}
		}
		if int64(len(buf)) < int64(cap(buf)) {
			continue
		}
		if int64(len(buf)) >= limit {
			if !whole {
				return buf, nil
			}
			// Full: one more byte tells a body of exactly limit bytes
			// from a longer one.
			var one [1]byte
			m, err := io.ReadFull(x.body(), one[:])
			if m == 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				return buf, nil
			}
			return nil, moh.Errorf(moh.CodeTooLarge, "body exceeds the %d byte limit", limit)
		}
		size = min(2*int64(cap(buf)), target)
	}
}

// hold takes n bytes from the body budget for x, waiting until deadline
// when none are free. The common case, memory free, sets no timer.
func (x *exchange) hold(deadline time.Time, n int64) error {
	if !bodies.TryAcquire(n) {
		ctx, cancel := context.WithDeadline(x.r.Context(), deadline)
		err := bodies.Acquire(ctx, n)
		cancel()
		if err != nil {
			return &moh.Error{Code: moh.CodeBackendUnavailable, Message: "too many request bodies in flight; retry later", Err: err}
		}
	}
	x.held += n
	return nil
}

// release returns the body memory of x to the budget.
func (x *exchange) release() {
	if x.held > 0 {
		bodies.Release(x.held)
		x.held = 0
	}
}
