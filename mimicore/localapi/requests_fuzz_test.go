package localapi

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// FuzzRequests runs arbitrary bodies of POST /binding, /key_packages,
// /claim_key_packages and /ack through the API of a real SQLite store,
// as user alice: a body the client got wrong is refused with a DSError
// of a 4xx code, never answered backend_unavailable (503), which says
// the gateway failed, nor with a panic. not_implemented stays allowed:
// it is this gateway's answer to a claim of another provider's
// KeyPackages without federation.
//
//	go test -fuzz=FuzzRequests ./mimicore/localapi
func FuzzRequests(f *testing.F) {
	const (
		phone = "mimi://a.example/d/alice/phone"
		user  = "mimi://a.example/u/alice"
	)
	api := newPublishAPI(f, Config{MaxKeyPackagesPerClient: 8, MaxKeyPackagesPerUser: 16})
	p := newPublisher(f, api, "alice")
	for op, v := range []wire.Marshaler{
		&BindingRequest{ClientURI: []byte(phone), SignatureKey: p.pub},
		&PublishRequest{ClientURI: []byte(phone), KeyPackages: p.entries(phone, 2, true)},
		&ClaimRequest{CipherSuite: uint16(publishSuite), Target: []byte(user)},
		&AckRequest{ClientURI: []byte(phone)},
	} {
		enc, err := wire.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(op), enc)
	}
	f.Fuzz(func(t *testing.T, op uint8, body []byte) {
		ctx := t.Context()
		var err error
		switch op % 4 {
		case 0:
			var req BindingRequest
			if err = wire.Unmarshal(body, &req, "BindingRequest"); err == nil {
				_, err = api.IssueBinding("alice", &req)
			}
		case 1:
			var req PublishRequest
			if err = wire.Unmarshal(body, &req, "PublishRequest"); err == nil {
				_, err = api.PublishKeyPackages(ctx, "alice", &req)
			}
		case 2:
			var req ClaimRequest
			if err = wire.Unmarshal(body, &req, "ClaimRequest"); err == nil {
				_, err = api.ClaimKeyPackages(ctx, "alice", &req)
			}
		case 3:
			var req AckRequest
			if err = wire.Unmarshal(body, &req, "AckRequest"); err == nil {
				_, err = api.Ack(ctx, "alice", &req)
			}
		}
		if err == nil {
			return
		}
		if code := moh.DSErrorOf(err).Code; code == moh.CodeBackendUnavailable {
			t.Fatalf("operation %d refused a client's body as %s: %v", op%4, code, err)
		}
	})
}
