package federation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestQueueingPayload checks that the payload built from an outbox entry
// is the QueueingServiceRequest the receivers' strict decoder reads, with
// the message bytes unchanged.
func TestQueueingPayload(t *testing.T) {
	msg, err := wire.Marshal(&mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatPrivateMessage,
		PrivateMessage: &mls.PrivateMessage{GroupID: []byte("group"), Epoch: 3, ContentType: mls.ContentApplication,
			EncryptedSenderData: []byte{1, 2, 3}, Ciphertext: []byte{4, 5, 6}}})
	if err != nil {
		t.Fatal(err)
	}
	e := store.OutboxEntry{ID: 7, Enqueued: time.Now(), OutboxMessage: store.OutboxMessage{Sender: "a.example",
		Destination: "b.example", GroupID: []byte("group"),
		Recipients: []string{"mimi://b.example/d/bob/phone", "mimi://b.example/d/bob/laptop"}, Message: msg}}
	payload, err := queueingPayload(e)
	if err != nil {
		t.Fatal(err)
	}
	var q moh.QueueingServiceRequest
	if err := wire.Unmarshal(payload, &q, "QueueingServiceRequest"); err != nil {
		t.Fatalf("the receivers' decoder refuses the payload: %v", err)
	}
	var ids []string
	for _, c := range q.ClientIDs {
		ids = append(ids, string(c))
	}
	again, err := wire.Marshal(&q.Message)
	if err != nil {
		t.Fatal(err)
	}
	if string(q.GroupID) != "group" || !slices.Equal(ids, e.Recipients) || string(again) != string(msg) {
		t.Fatalf("decoded %+v, want the entry's group, recipients and message", q)
	}
}

// TestRetryable checks which answers keep a message for another attempt:
// by status, and for a 409 by its DSError code.
func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   moh.Code
		want   bool
	}{
		{http.StatusOK, 0, true}, // but not a queueing answer
		{http.StatusAccepted, 0, true},
		{http.StatusNoContent, 0, true},
		{http.StatusBadRequest, moh.CodeMalformed, false},
		{http.StatusUnauthorized, moh.CodeUnknownKey, true},
		{http.StatusForbidden, moh.CodeForbidden, false},
		{http.StatusNotFound, moh.CodeNotFound, false},
		{http.StatusRequestTimeout, moh.CodeBodyTimeout, true},
		{http.StatusConflict, moh.CodeInProgress, true},
		{http.StatusConflict, moh.CodeReplay, false},
		{http.StatusConflict, moh.CodeStaleEpoch, false},
		{http.StatusConflict, 0, false},
		{http.StatusRequestEntityTooLarge, moh.CodeTooLarge, false},
		{http.StatusMisdirectedRequest, moh.CodeRecipientMismatch, false},
		{http.StatusTooEarly, moh.CodeTooEarly, true},
		{http.StatusTooManyRequests, moh.CodeRateLimited, true},
		{http.StatusInternalServerError, moh.CodeBackendUnavailable, true},
		{http.StatusNotImplemented, moh.CodeNotImplemented, false},
		{http.StatusBadGateway, 0, true},
		{http.StatusServiceUnavailable, moh.CodeBackendUnavailable, true},
		{http.StatusGatewayTimeout, 0, true},
	} {
		t.Run(fmt.Sprintf("%d %s", tc.status, tc.code), func(t *testing.T) {
			if got := retryable(tc.status, tc.code); got != tc.want {
				t.Errorf("retryable(%d, %s) = %t, want %t", tc.status, tc.code, got, tc.want)
			}
		})
	}
}

// TestConflictAnswers has the peer answer a message's first attempt with
// a 409: in_progress (the same request_id still being processed there)
// keeps the message, so the next attempt, which the peer accepts,
// delivers it; replay drops it for good.
func TestConflictAnswers(t *testing.T) {
	for _, tc := range []struct {
		code                moh.Code
		delivered, rejected uint64
		attempts, retried   uint64
	}{
		{moh.CodeInProgress, 1, 0, 2, 1},
		{moh.CodeReplay, 0, 1, 1, 0},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			st := leaseStore(t, 1)
			var calls atomic.Int32
			s := &Sender{Outbox: st, Logger: zaptest.NewLogger(t), MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
				Transport: transportFunc(func(ctx context.Context, _, _ string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
					if calls.Add(1) == 1 {
						return &provider.Answer{Status: http.StatusConflict, Response: moh.DSResponse{Type: moh.ResponseError,
							Error: moh.DSError{Code: tc.code, Message: []byte("first attempt")}}}, nil
					}
					return accepted(ctx, "", "", 0, nil)
				})}
			runSender(t, s)
			waitFor(t, "an empty outbox", func() bool {
				p, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
				return err == nil && len(p) == 0
			})
			got := s.Stats()
			if got.Delivered != tc.delivered || got.Rejected != tc.rejected || got.Attempts != tc.attempts || got.Retried != tc.retried {
				t.Fatalf("stats %+v, want %d attempts, %d retried, %d delivered, %d rejected",
					got, tc.attempts, tc.retried, tc.delivered, tc.rejected)
			}
		})
	}
}

// TestOtherSuccessStatus has the destination answer with a 2xx other than
// 200: with a queueing answer the message is delivered (before, it was
// counted as refused and logged as dropped), and without one it stays for
// the next attempt, as after a 200 that is not a queueing answer (before,
// it was dropped).
func TestOtherSuccessStatus(t *testing.T) {
	queueing := moh.DSResponse{Type: moh.ResponseQueueing, Queueing: moh.QueueingServiceResponse{Status: moh.QueueingOK}}
	for _, tc := range []struct {
		name                         string
		first                        provider.Answer
		attempts, retried, delivered uint64
	}{
		{"202 queueing", provider.Answer{Status: http.StatusAccepted, Response: queueing}, 1, 0, 1},
		{"201 queueing", provider.Answer{Status: http.StatusCreated, Response: queueing}, 1, 0, 1},
		{"202 welcome_info", provider.Answer{Status: http.StatusAccepted, Response: moh.DSResponse{Type: moh.ResponseWelcomeInfo}}, 2, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := leaseStore(t, 1)
			var calls atomic.Int32
			s := &Sender{Outbox: st, Logger: zaptest.NewLogger(t), MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
				Transport: transportFunc(func(ctx context.Context, _, _ string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
					if calls.Add(1) == 1 {
						a := tc.first
						return &a, nil
					}
					return accepted(ctx, "", "", 0, nil)
				})}
			runSender(t, s)
			waitFor(t, "an empty outbox", func() bool {
				p, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
				return err == nil && len(p) == 0
			})
			if got := s.Stats(); got.Delivered != tc.delivered || got.Rejected != 0 || got.Attempts != tc.attempts || got.Retried != tc.retried {
				t.Fatalf("stats %+v, want %d attempts, %d retried, %d delivered, 0 rejected", got, tc.attempts, tc.retried, tc.delivered)
			}
		})
	}
}

// TestAnswersNotFromPeer has the destination answer a message's first
// attempt with a status that would refuse it for good, and a body that is
// not a DSResponse, as provider.Client.Post returns it (the answer and
// the decoding error): a proxy's page in front of the peer, such as a 404
// during a deploy. The message must stay for the next attempt, which
// delivers it; before, it was dropped as the peer's refusal.
func TestAnswersNotFromPeer(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusForbidden, http.StatusMisdirectedRequest, http.StatusTemporaryRedirect} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			st := leaseStore(t, 1)
			var calls atomic.Int32
			s := &Sender{Outbox: st, Logger: zaptest.NewLogger(t), MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
				Transport: transportFunc(func(ctx context.Context, _, _ string, _ moh.ProviderRequestType, _ []byte) (*provider.Answer, error) {
					if calls.Add(1) == 1 {
						page := []byte("<html><body>not here</body></html>")
						return &provider.Answer{Status: status, Raw: page},
							fmt.Errorf("answer of dest.example (status %d): %w", status, errors.New("not a DSResponse"))
					}
					return accepted(ctx, "", "", 0, nil)
				})}
			runSender(t, s)
			waitFor(t, "an empty outbox", func() bool {
				p, err := st.OutboxPending(t.Context(), "dest.example", 0, 1)
				return err == nil && len(p) == 0
			})
			if got := s.Stats(); got.Delivered != 1 || got.Rejected != 0 || got.Attempts != 2 || got.Retried != 1 {
				t.Fatalf("stats %+v, want 2 attempts, 1 retried, 1 delivered, 0 rejected", got)
			}
		})
	}
}

// TestPolicy checks the defaults, the initial fields and a policy set
// while running.
func TestPolicy(t *testing.T) {
	var s Sender
	if p := s.currentPolicy(); p.MaxBackoff != DefaultMaxBackoff || p.GiveUpAfter != DefaultGiveUpAfter {
		t.Fatalf("defaults: %+v", p)
	}
	s.MaxBackoff = time.Minute
	if p := s.currentPolicy(); p.MaxBackoff != time.Minute || p.GiveUpAfter != DefaultGiveUpAfter {
		t.Fatalf("fields: %+v", p)
	}
	s.SetPolicy(Policy{GiveUpAfter: time.Hour})
	if p := s.currentPolicy(); p.MaxBackoff != DefaultMaxBackoff || p.GiveUpAfter != time.Hour {
		t.Fatalf("set: %+v", p)
	}
}
