package provider

import (
	"context"
	"fmt"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// ReplayWindow is how long a provider request's id is remembered: longer
// than the ±300 s timestamp window, so a captured request cannot be replayed
// while its timestamp is still accepted (docs/protocol.md §4, step 8).
const ReplayWindow = 11 * time.Minute

// Processor runs a verified provider request and returns the complete
// answer (HTTP status and encoded DSResponse).
type Processor func(ctx context.Context, v *Verified) store.Answer

// Inbound receives provider-signed requests: it runs every check of
// docs/protocol.md §4, replay included, and processes each request at most
// once. A byte-identical retry gets the first answer.
type Inbound struct {
	Verifier *Verifier
	Replay   store.ReplayCache
	// Admit, when set, is the admission policy (rate limits keyed on the
	// verified sender, token checks, ...). It runs after Verify succeeded,
	// so it may trust every field of v, and before the request id is
	// reserved, so a refused request leaves no trace in the replay cache
	// and a retry of the same bytes is judged afresh. A non-nil error
	// refuses the request: Handle returns it unchanged, and it should
	// carry the DSError to send (a *moh.Error); any other error is
	// answered as backend_unavailable.
	Admit func(ctx context.Context, v *Verified) error
}

// Handle verifies raw as a request of type typ, admits it (see Admit)
// and, if it is new, runs process. It returns the answer to send, or an error carrying the DSError
// to send instead. When Handle returns both an answer and an error, the
// answer must be sent and the error only logged: the request was processed
// but its answer could not be recorded for retries.
func (in *Inbound) Handle(ctx context.Context, raw []byte, typ moh.ProviderRequestType, process Processor) (store.Answer, error) {
	v, err := in.Verifier.Verify(ctx, raw, typ)
	if err != nil {
		return store.Answer{}, err
	}
	if in.Admit != nil {
		if err := in.Admit(ctx, v); err != nil {
			return store.Answer{}, err
		}
	}
	req := v.Request
	sender := string(req.Sender)
	res, err := in.Replay.Reserve(ctx, sender, req.RequestID, v.Digest, in.Verifier.now().Add(ReplayWindow))
	if err != nil {
		return store.Answer{}, &moh.Error{Code: moh.CodeBackendUnavailable, Message: "replay cache unavailable",
			Err: fmt.Errorf("reserving request id: %w", err)}
	}
	switch res.Status {
	case store.ReplayDuplicate:
		return res.Answer, nil
	case store.ReplayInProgress:
		return store.Answer{}, moh.Errorf(moh.CodeInProgress, "request_id is still being processed")
	case store.ReplayConflict:
		return store.Answer{}, moh.Errorf(moh.CodeReplay, "request_id was used for another request")
	}
	answer := process(ctx, v)
	if transient(answer.Status) {
		// A transient failure must not stick to the request id: let a
		// retry of the same bytes run afresh.
		if err := in.Replay.Release(ctx, sender, req.RequestID, v.Digest); err != nil {
			return answer, fmt.Errorf("releasing request id after a failed request: %w", err)
		}
		return answer, nil
	}
	if err := in.Replay.Complete(ctx, sender, req.RequestID, v.Digest, answer); err != nil {
		return answer, fmt.Errorf("recording the answer for retries: %w", err)
	}
	return answer, nil
}

// transient reports whether an answer with status is a temporary failure
// (a gateway or backend that is unavailable) rather than the request's
// outcome, which a retry must get again.
func transient(status int) bool {
	return status == 502 || status == 503 || status == 504
}
