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

// recordTimeout bounds the replay-cache writes that follow processing. They
// run on a context the client cannot cancel: a client that disconnects
// after its request was reserved must not leave the entry pending.
const recordTimeout = 10 * time.Second

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
// one request in this process are told apart by an in-memory claim.
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
func (in *Inbound) Handle(ctx context.Context, v *Verified, process Processor) ([]byte, error) {
	req := v.Request
	sender := string(req.Sender)
	key := claimKey(sender, req.RequestID)
	if held, ok := in.claims.claim(key, v.Digest); !ok {
		if held == v.Digest {
			return nil, moh.Errorf(moh.CodeInProgress, "request_id is still being processed")
		}
		return nil, moh.Errorf(moh.CodeReplay, "request_id was used for another request")
	}
	defer in.claims.release(key)

	if answer, err := in.recorded(ctx, sender, v); answer != nil || err != nil {
		return answer, err
	}
	resp, procErr := process(ctx, v)
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
	// The record is written on a context the client cannot cancel: a
	// client that goes away must not leave its request unrecorded.
	recCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	e, err := in.Replay.RecordReplay(recCtx, sender, req.RequestID, v.Digest, store.Answer{Body: answer},
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

// claims are the request ids being processed in this process, with the
// digest of the bytes that claimed each.
type claims struct {
	mu   sync.Mutex
	held map[string][32]byte
}

// claimKey is the claims key of (sender, requestID).
func claimKey(sender string, requestID []byte) string {
	return sender + "\x00" + string(requestID)
}

// claim takes key for digest, or reports the digest that holds it.
func (c *claims) claim(key string, digest [32]byte) ([32]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if held, ok := c.held[key]; ok {
		return held, false
	}
	if c.held == nil {
		c.held = make(map[string][32]byte)
	}
	c.held[key] = digest
	return digest, true
}

// release drops key.
func (c *claims) release(key string) {
	c.mu.Lock()
	delete(c.held, key)
	c.mu.Unlock()
}
