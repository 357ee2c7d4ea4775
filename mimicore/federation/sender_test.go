package federation

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
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

// TestRetryable checks which answers keep a message for another attempt.
func TestRetryable(t *testing.T) {
	for status, want := range map[int]bool{
		http.StatusOK:                    true, // but not a queueing answer
		http.StatusBadRequest:            false,
		http.StatusUnauthorized:          true,
		http.StatusForbidden:             false,
		http.StatusNotFound:              false,
		http.StatusRequestTimeout:        true,
		http.StatusConflict:              false,
		http.StatusRequestEntityTooLarge: false,
		http.StatusMisdirectedRequest:    false,
		http.StatusTooEarly:              true,
		http.StatusTooManyRequests:       true,
		http.StatusInternalServerError:   true,
		http.StatusNotImplemented:        false,
		http.StatusBadGateway:            true,
		http.StatusServiceUnavailable:    true,
		http.StatusGatewayTimeout:        true,
	} {
		if got := retryable(status); got != want {
			t.Errorf("retryable(%d) = %t, want %t", status, got, want)
		}
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
