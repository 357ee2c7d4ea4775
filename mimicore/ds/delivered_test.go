package ds

import (
	"bytes"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestMaxDeliveredMessageFitsAPayload checks MaxDeliveredMessage against
// the encoding: a message of that size fits a deliver_message payload with
// the largest group_id and 64 client ids of 255 bytes, and one byte more
// does not.
func TestMaxDeliveredMessageFitsAPayload(t *testing.T) {
	gid := bytes.Repeat([]byte{'g'}, moh.MaxGroupIDLen)
	ids := make([][]byte, moh.MaxClientIDs)
	for i := range ids {
		ids[i] = []byte("mimi://b.example/d/" + strings.Repeat("u", moh.MaxURILen-len("mimi://b.example/d/")))
	}
	// An application message of exactly n bytes, encoded.
	message := func(n int) mls.MLSMessage {
		m := mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
			GroupID: gid, Epoch: 1, ContentType: mls.ContentApplication, EncryptedSenderData: make([]byte, 28),
			Ciphertext: make([]byte, n)}}
		enc, err := wire.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		m.PrivateMessage.Ciphertext = make([]byte, 2*n-len(enc)) // the length prefix keeps its size
		return m
	}
	for _, tc := range []struct {
		name string
		size int
		fits bool
	}{
		{"the largest", MaxDeliveredMessage, true},
		{"a byte more", MaxDeliveredMessage + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := moh.QueueingServiceRequest{GroupID: gid, ClientIDs: ids, Message: message(tc.size)}
			enc, err := wire.Marshal(&q.Message)
			if err != nil || len(enc) != tc.size {
				t.Fatalf("the message is %d bytes (%v), want %d", len(enc), err, tc.size)
			}
			payload, err := wire.Marshal(&q)
			if err != nil {
				t.Fatal(err)
			}
			if fits := len(payload) <= moh.MaxPayloadLen; fits != tc.fits {
				t.Fatalf("a payload of %d bytes fits in %d: %v, want %v", len(payload), moh.MaxPayloadLen, fits, tc.fits)
			}
		})
	}
}

// TestSendMessageTooLarge checks that an application message larger than
// the DS delivers is 413 too_large, not a failed store write, and that the
// group goes on.
func TestSendMessageTooLarge(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	bob := h.newTClient(t, "bob", "phone", false)
	h.newGroup(t, []byte("big messages"), alice, bob)
	big, err := alice.m.Protect(make([]byte, MaxDeliveredMessage), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.do(t, signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *big})); codeOf(err) != moh.CodeTooLarge {
		t.Fatalf("send_message of more than %d bytes: %v, want too_large", MaxDeliveredMessage, err)
	}
	small, err := alice.m.Protect([]byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	h.mustDo(t, "send_message after the refusal", signed(t, alice, alice.m.LeafIndex(), moh.RequestBody{Type: moh.SendMessage, Message: *small}))
}
