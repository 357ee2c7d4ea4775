package provider

import (
	"context"
	"errors"
	"fmt"
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

// ErrNotRecorded reports that a request was processed but its answer could
// not be recorded for retries; the answer returned with it must still be
// sent.
var ErrNotRecorded = errors.New("answer not recorded for retries")

// Inbound receives provider-signed requests in two steps, so that the
// caller's admission policy runs between them without any callback:
//
//	v, err := in.Verify(ctx, raw, typ, opts) // checks 1-7 of docs/protocol.md §4
//	// admit v (rate limits keyed on the verified sender, ...)
//	answer, err := in.Handle(ctx, v, process) // check 8 (replay), then process
//
// Each request is processed at most once, and a byte-identical retry gets
// the first answer.
type Inbound struct {
	Verifier *Verifier
	Replay   store.ReplayCache
}

// Verify decodes raw as a request of type typ and runs every check but the
// replay check (Verifier.VerifyWith; opts.Source charges a key fetch to the
// request's source). Every failure is a *moh.Error with the code to answer.
func (in *Inbound) Verify(ctx context.Context, raw []byte, typ moh.ProviderRequestType, opts VerifyOptions) (*Verified, error) {
	return in.Verifier.VerifyWith(ctx, raw, typ, opts)
}

// Handle reserves v's request id and, if the request is new, runs process
// and records its answer. It returns the encoded DSResponse to send:
//
//   - answer != nil, err == nil: a success, or the recorded answer of a
//     byte-identical retry;
//   - answer != nil, err != nil: either the request was refused by process
//     (answer encodes err's DSError; err is for the log), or err wraps
//     ErrNotRecorded (the answer must be sent and the failure logged);
//   - answer == nil: err carries the DSError to send (in_progress, replay,
//     or backend_unavailable when the replay cache failed or process failed
//     transiently, in which case nothing is recorded and a retry of the same
//     bytes is processed afresh).
func (in *Inbound) Handle(ctx context.Context, v *Verified, process Processor) ([]byte, error) {
	req := v.Request
	sender := string(req.Sender)
	res, err := in.Replay.Reserve(ctx, sender, req.RequestID, v.Digest, in.Verifier.now().Add(ReplayWindow))
	if err != nil {
		return nil, &moh.Error{Code: moh.CodeBackendUnavailable, Message: "replay cache unavailable",
			Err: fmt.Errorf("reserving request id: %w", err)}
	}
	switch res.Status {
	case store.ReplayDuplicate:
		return res.Answer.Body, nil
	case store.ReplayInProgress:
		return nil, moh.Errorf(moh.CodeInProgress, "request_id is still being processed")
	case store.ReplayConflict:
		return nil, moh.Errorf(moh.CodeReplay, "request_id was used for another request")
	}

	resp, procErr := process(ctx, v)
	recCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if procErr != nil && moh.DSErrorOf(procErr).Code == moh.CodeBackendUnavailable {
		// A transient failure must not stick to the request id: let a
		// retry of the same bytes run afresh.
		if err := in.Replay.Release(recCtx, sender, req.RequestID, v.Digest); err != nil {
			return nil, errors.Join(procErr, fmt.Errorf("releasing request id after a failed request: %w", err))
		}
		return nil, procErr
	}
	var answer []byte
	if procErr != nil {
		answer = moh.ErrorAnswer(procErr)
	} else if answer, err = wire.Marshal(resp); err != nil {
		// The request ran; its answer cannot be encoded. Record the
		// failure so a retry does not run it again.
		procErr = fmt.Errorf("encoding the answer: %w", err)
		answer = moh.ErrorAnswer(procErr)
	}
	if err := in.Replay.Complete(recCtx, sender, req.RequestID, v.Digest, store.Answer{Body: answer}); err != nil {
		return answer, errors.Join(procErr, fmt.Errorf("%w: %w", ErrNotRecorded, err))
	}
	return answer, procErr
}
