package caddymodule

import (
	"context"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
)

// Limits on the message lists of the local client API held in memory. A
// list (GET /messages, up to about 4 MiB) is held until its client has
// read it: a user who opened hundreds of streams and read none of them
// held that many lists. The lists held at once by every mimi_local of
// the process share a budget, as request bodies do (body.go).
const (
	// answerRetryAfter is the Retry-After of a list refused for want of
	// budget.
	answerRetryAfter = time.Second
	// answerOverhead is counted per message beside its bytes: its
	// sequence number, times, group id and sender, and their prefixes.
	answerOverhead = 512
)

// Variables for tests.
var (
	// answerBudget bounds the bytes of message lists held at once.
	answerBudget int64 = 64 << 20
	// answers is the process's budget of message lists, of answerBudget.
	answers = semaphore.NewWeighted(answerBudget)
	// answerWait is how long a fetched list waits for its share of the
	// budget before the request is refused backend_unavailable with
	// Retry-After answerRetryAfter; its messages stay queued.
	answerWait = 5 * time.Second
)

// holdAnswer takes the share of msgs, a message list about to be sent,
// from the budget, waiting at most answerWait (and while ctx lasts), and
// returns the function that gives it back once the list is written. The
// common case, memory free, sets no timer.
func holdAnswer(ctx context.Context, msgs []localapi.Message) (release func(), err error) {
	var n int64
	for _, m := range msgs {
		n += int64(len(m.Message)+len(m.GroupID)+len(m.Sender)) + answerOverhead
	}
	n = min(n, answerBudget)
	if !answers.TryAcquire(n) {
		wctx, cancel := context.WithTimeout(ctx, answerWait)
		err := answers.Acquire(wctx, n)
		cancel()
		if err != nil {
			return nil, admission.RetryLater(&moh.Error{Code: moh.CodeBackendUnavailable,
				Message: "too many message lists in flight; retry after 1 s (the messages stay queued)", Err: err}, answerRetryAfter)
		}
	}
	return func() { answers.Release(n) }, nil
}
