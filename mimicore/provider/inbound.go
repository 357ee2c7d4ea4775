package provider

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ReplayWindow is how long a provider request's id is remembered: longer
// than the ±300 s timestamp window, so a captured request cannot be replayed
// while its timestamp is still accepted (docs/protocol.md §4, step 8).
const ReplayWindow = 11 * time.Minute

// Processor runs a verified provider request and returns its answer, or an
// error carrying the DSError to answer with (a *moh.Error; any other error
// is answered as backend_unavailable without its text).
type Processor func(ctx context.Context, v *Verified) (*moh.DSResponse, error)

// Inbound receives provider-signed requests in two steps, so that the
// caller's admission policy runs between them without any callback:
//
//	v, err := in.Verify(ctx, raw, typ, opts) // checks 1-7 of docs/protocol.md §4
//	// admit v (rate limits keyed on the verified sender, ...)
//	answer, err := in.Handle(ctx, v, process) // check 8 (replay), then process
//
// Each request is processed at most once, and a byte-identical retry gets
// the first answer. The answer is recorded with one durable write
// (store.ReplayLog) and sent only once that write committed; see
// store.ReplayLog for why a crash at any point neither loses an
// acknowledged answer nor processes a request twice. Concurrent copies of
// one request id in this process are joined in memory: the first handles
// it, copies of the same bytes share its outcome.
type Inbound struct {
	Verifier *Verifier
	Replay   store.ReplayLog

	claims claims
}

// Verify decodes raw as a request of type typ and runs every check but the
// replay check (Verifier.VerifyWith; opts.Source charges a key fetch to the
// request's source). Every failure is a *moh.Error with the code to answer.
func (in *Inbound) Verify(ctx context.Context, raw []byte, typ moh.ProviderRequestType, opts VerifyOptions) (*Verified, error) {
	return in.Verifier.VerifyWith(ctx, raw, typ, opts)
}

// Handle runs v's request unless it ran before, and returns the encoded
// DSResponse to send:
//
//   - answer != nil, err == nil: a success, or the recorded answer of a
//     byte-identical retry;
//   - answer != nil, err != nil: the request was refused by process, and
//     answer encodes err's DSError (err is for the log); the refusal is
//     recorded like a success;
//   - answer == nil: err carries the DSError to send: in_progress, replay,
//     or backend_unavailable when the replay log failed or process failed
//     transiently; nothing is recorded then, and a retry of the same bytes
//     is processed afresh.
func (in *Inbound) Handle(ctx context.Context, v *Verified, process Processor) (answer []byte, err error) {
	req := v.Request
	sender := string(req.Sender)
	key := claimKey(sender, req.RequestID)
	f, first := in.claims.join(key, v.Digest)
	if !first {
		// Another copy of this request id is being handled here: the same
		// bytes share its outcome, other bytes are a replay.
		if f.digest != v.Digest {
			return nil, moh.Errorf(moh.CodeReplay, "request_id was used for another request")
		}
		select {
		case <-f.done:
			return f.answer, f.err
		case <-ctx.Done():
			return nil, moh.Errorf(moh.CodeInProgress, "request_id is still being processed")
		}
	}
	defer func() { in.claims.finish(key, f, answer, err) }()
	return in.handle(ctx, v, process)
}

// handle is Handle for the first copy of a request id in this process.
func (in *Inbound) handle(ctx context.Context, v *Verified, process Processor) ([]byte, error) {
	req := v.Request
	sender := string(req.Sender)
	if answer, err := in.recorded(ctx, sender, v); answer != nil || err != nil {
		return answer, err
	}
	v.inline = &inlineReplay{sender: sender, expires: in.Verifier.now().Add(ReplayWindow)}
	resp, procErr := process(ctx, v)
	inline := v.inline
	v.inline = nil
	switch {
	case inline.recorded:
		// The processor wrote the answer with its effects.
		return inline.answer, nil
	case procErr != nil && inline.offered && errors.Is(procErr, store.ErrConflict):
		// The processor's write met an entry of this request id that
		// another process recorded first: its answer stands. With no
		// such entry the conflict was another (a destination's backlog
		// at its bound, store.ErrOutboxFull): the processor's error is
		// handled below like any other.
		if answer, err := in.recorded(ctx, sender, v); answer != nil || err != nil {
			return answer, err
		}
	}
	if procErr != nil && moh.DSErrorOf(procErr).Code == moh.CodeBackendUnavailable {
		// A transient failure must not stick to the request id: nothing
		// is recorded, and a retry of the same bytes runs afresh.
		return nil, procErr
	}
	var answer []byte
	if procErr != nil {
		answer = moh.ErrorAnswer(procErr)
	} else if enc, err := wire.Marshal(resp); err != nil {
		// The request ran; its answer cannot be encoded. Record the
		// failure so a retry does not run it again.
		procErr = fmt.Errorf("encoding the answer: %w", err)
		answer = moh.ErrorAnswer(procErr)
	} else {
		answer = enc
	}
	if inline.idempotent {
		// The processor's effects carry their own duplicate suppression
		// and the answer is a function of the request: a copy processed
		// again changes nothing and is answered alike (Idempotent).
		return answer, procErr
	}
	// The record is written on a context the client cannot cancel: a
	// client that goes away must not leave its request unrecorded. No
	// timer is needed: the store answers every write it has queued.
	e, err := in.Replay.RecordReplay(context.WithoutCancel(ctx), sender, req.RequestID, v.Digest, store.Answer{Body: answer},
		in.Verifier.now().Add(ReplayWindow))
	switch {
	case err == nil:
		return answer, procErr
	case errors.Is(err, store.ErrConflict):
		// Another process recorded the key first; its answer stands.
		return alive(e, v.Digest)
	}
	// The answer is not durable, so it is not sent: the request's effects,
	// committed with the answer, did not happen either.
	return nil, &moh.Error{Code: moh.CodeBackendUnavailable, Message: "replay log unavailable; retry later",
		Err: errors.Join(procErr, fmt.Errorf("recording the answer: %w", err))}
}

// inlineReplay is the replay log entry of a request being handled, which
// its Processor may write itself (Verified.InlineReplay).
type inlineReplay struct {
	sender     string
	expires    time.Time
	answer     []byte
	offered    bool // InlineReplay returned an entry
	recorded   bool // ReplayRecorded was called
	idempotent bool // Idempotent was called: no entry is written
}

// WantsInlineReplay reports whether InlineReplay would return an entry:
// v is being handled by Inbound.Handle and its Processor has not declared
// it Idempotent. A Processor asks first to skip encoding an answer that
// no entry would carry.
func (v *Verified) WantsInlineReplay() bool {
	return v.inline != nil && !v.inline.idempotent
}

// InlineReplay returns the replay log entry that records answer (an encoded
// DSResponse) as the answer of v's request, for a Processor whose whole
// effect is one store write: it writes the entry in that write
// (store.Delivery.Replay) and, once the write committed, calls
// ReplayRecorded. Inbound.Handle then sends answer and does not record it
// a second time, so the request costs one durable write, with the
// guarantees of store.ReplayLog. It returns nil when v is not being
// handled by Inbound.Handle; the processor then writes its effects alone.
// A write that fails because the request id is recorded already
// (store.ErrConflict, another process won) is returned by the processor
// as an error wrapping that error: Handle answers with the recorded entry.
func (v *Verified) InlineReplay(answer []byte) *store.ReplayRecord {
	in := v.inline
	if in == nil || in.idempotent {
		return nil
	}
	in.offered, in.answer = true, answer
	return &store.ReplayRecord{Sender: in.sender, RequestID: v.Request.RequestID, Digest: v.Digest,
		Answer: store.Answer{Body: answer}, Expires: in.expires}
}

// Idempotent declares, from a Processor, that v's request needs no replay
// log entry: its effects are written at most once by a record keyed on
// the request's content, in the same write (deliver_message's duplicate
// suppression, docs/protocol.md §4.2), and its answer, refusals included,
// is a function of the request and of state that a repeat does not
// change. A byte-identical copy processed again then changes nothing and
// is answered alike, within the timestamp window and after it. Handle
// sends the answer without recording it and InlineReplay returns nil, so
// the request costs one durable write less; the same request_id with
// other bytes is processed as a request of its own (docs/protocol.md §4,
// step 8). A Processor calls it before it writes anything.
func (v *Verified) Idempotent() {
	if v.inline != nil {
		v.inline.idempotent = true
	}
}

// ReplayRecorded reports that the entry InlineReplay returned committed
// with the processor's write (see InlineReplay).
func (v *Verified) ReplayRecorded() {
	if v.inline != nil && v.inline.offered {
		v.inline.recorded = true
	}
}

// recorded returns the recorded answer of v's request id, or the refusal
// its entry calls for, or (nil, nil) when the id is new.
func (in *Inbound) recorded(ctx context.Context, sender string, v *Verified) ([]byte, error) {
	e, err := in.Replay.FindReplay(ctx, sender, v.Request.RequestID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, &moh.Error{Code: moh.CodeBackendUnavailable, Message: "replay log unavailable; retry later",
			Err: fmt.Errorf("finding request id: %w", err)}
	}
	return alive(e, v.Digest)
}

// alive answers a request whose id has the alive entry e.
func alive(e store.ReplayEntry, digest [32]byte) ([]byte, error) {
	switch {
	case e.Digest != digest:
		return nil, moh.Errorf(moh.CodeReplay, "request_id was used for another request")
	case e.Pending:
		return nil, moh.Errorf(moh.CodeInProgress, "request_id is still being processed")
	}
	return e.Answer.Body, nil
}

// claims are the request ids being handled in this process. The first
// copy of an id handles it; copies of the same bytes that arrive meanwhile
// wait for its outcome and share it, so that concurrent retries cost one
// lookup and get the answer, not in_progress.
type claims struct {
	mu   sync.Mutex
	held map[string]*flight
}

// flight is one request id being handled, and its outcome once done is
// closed.
type flight struct {
	digest  [32]byte
	done    chan struct{}
	answer  []byte
	err     error
	waiters int // copies that joined it (tests)
}

// claimKey is the claims key of (sender, requestID).
func claimKey(sender string, requestID []byte) string {
	return sender + "\x00" + string(requestID)
}

// join returns the flight of key, and whether this caller started it (and
// must finish it).
func (c *claims) join(key string, digest [32]byte) (*flight, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.held[key]; ok {
		f.waiters++
		return f, false
	}
	if c.held == nil {
		c.held = make(map[string]*flight)
	}
	f := &flight{digest: digest, done: make(chan struct{})}
	c.held[key] = f
	return f, true
}

// finish records the outcome of f, wakes its waiters and drops key.
func (c *claims) finish(key string, f *flight, answer []byte, err error) {
	c.mu.Lock()
	delete(c.held, key)
	c.mu.Unlock()
	f.answer, f.err = answer, err
	close(f.done)
}

// waiting reports how many copies wait on the flight of (sender,
// requestID): for tests.
func (c *claims) waiting(sender string, requestID []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.held[claimKey(sender, requestID)]; ok {
		return f.waiters
	}
	return 0
}
