package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"runtime"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// The deliver mode: distinct deliver_message requests signed by
// a.localhost, the hub of a group with -recipients members on b.localhost
// (docs/protocol.md §4.2, receiving side). b verifies each, checks that a
// is the group's hub, and appends the message to the recipients' queues
// with its duplicate record and the replay record, in one durable write.

// deliverPayload encodes a QueueingServiceRequest of msg for the clients.
func deliverPayload(gid []byte, clients [][]byte, msg *mls.MLSMessage) ([]byte, error) {
	return wire.Marshal(&moh.QueueingServiceRequest{GroupID: gid, ClientIDs: clients, Message: *msg})
}

// signProvider signs a request of typ from s.sender to s.recipient.
func (s *signer) signProvider(typ moh.ProviderRequestType, payload []byte) ([]byte, error) {
	now := time.Now()
	key, err := s.ring.Current(now)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	rand.Read(id)
	return provider.SignRequest(&moh.ProviderRequest{RequestType: typ, Sender: []byte(s.sender),
		Recipient: []byte(s.recipient), Timestamp: uint64(now.Unix()), RequestID: id, Payload: payload}, key)
}

// prepareDeliver introduces a group of the sender (a.localhost by
// default) to the receiver (b.localhost) with a Welcome (which records the
// sender as its hub), then signs f.pool deliver_message requests, each a
// distinct application message for the recipients.
func prepareDeliver(ctx context.Context, t *target, f *benchFlags) (*prepared, error) {
	s, err := f.signer()
	if err != nil {
		return nil, err
	}
	gid := make([]byte, 16)
	rand.Read(gid)
	var clients [][]byte
	for i := range max(f.recipients, 1) {
		clients = append(clients, []byte(moh.ClientURI(f.receiver, fmt.Sprintf("member%d", i), "load")))
	}
	url := t.url(f.receiver, "/deliver_message")
	welcome := &mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatWelcome, Welcome: &mls.Welcome{
		CipherSuite: mls.X25519AES128GCMSHA256Ed25519,
		Secrets: []mls.EncryptedGroupSecrets{{NewMember: make([]byte, 32),
			EncryptedGroupSecrets: mls.HPKECiphertext{KEMOutput: make([]byte, 32), Ciphertext: make([]byte, 64)}}},
		EncryptedGroupInfo: make([]byte, 128)}}
	payload, err := deliverPayload(gid, clients, welcome)
	if err != nil {
		return nil, err
	}
	// The first request makes b fetch a's keys and record a as the hub:
	// not measured.
	first, err := s.signProvider(moh.DeliverMessage, payload)
	if err != nil {
		return nil, err
	}
	welcomed := t.do(ctx, http.MethodPost, url, first, nil)
	if a := welcomed; a.err != nil || a.status != http.StatusOK {
		return nil, fmt.Errorf("the Welcome introducing the group: status %d, %v", a.status, a.err)
	}
	t0 := time.Now()
	pool := make([][]byte, f.pool)
	errs := make([]error, f.pool)
	parallel(f.pool, runtime.GOMAXPROCS(0), func(i int) {
		ct := make([]byte, 100)
		rand.Read(ct)
		msg := &mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatPrivateMessage, PrivateMessage: &mls.PrivateMessage{
			GroupID: gid, Epoch: 1, ContentType: mls.ContentApplication, EncryptedSenderData: make([]byte, 40), Ciphertext: ct}}
		p, err := deliverPayload(gid, clients, msg)
		if err != nil {
			errs[i] = err
			return
		}
		pool[i], errs[i] = s.signProvider(moh.DeliverMessage, p)
	})
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("signing: %w", err)
		}
	}
	fmt.Printf("# deliver: %d distinct deliver_message requests from %s, the group's hub, each a distinct message for %d clients of %s (%d bytes each), signed ahead of the run in %s\n",
		len(pool), f.sender, len(clients), f.receiver, len(pool[0]), time.Since(t0).Round(time.Millisecond))
	return &prepared{mode: "deliver", expected: http.StatusOK, cfg: runConfig{
		conc: f.conc, duration: f.duration,
		next: func(i int) (request, bool) {
			if i >= len(pool) {
				return request{}, false
			}
			return request{method: http.MethodPost, url: url, body: pool[i]}, true
		},
	}, shape: request{method: http.MethodPost, body: pool[0], header: octetStream}, answer: shapeOf(welcomed)}, nil
}
