package ds

import (
	"bytes"
	"context"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func encode(t *testing.T, req *moh.DSRequest) []byte {
	t.Helper()
	b, err := wire.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRequestGroupID(t *testing.T) {
	var s Service
	body := encode(t, &moh.DSRequest{Body: moh.RequestBody{Type: moh.RequestGroupID}})
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		req, err := s.Authenticate(context.Background(), body)
		if err != nil {
			t.Fatal(err)
		}
		if len(req.GroupID) != 0 || len(req.Member) != 0 {
			t.Fatalf("an anonymous request names group %x member %x", req.GroupID, req.Member)
		}
		resp, err := s.Handle(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Type != moh.ResponseGroupID || len(resp.GroupID) != GroupIDSize || seen[string(resp.GroupID)] {
			t.Fatalf("answer %d: %+v (repeated: %t)", i, resp, seen[string(resp.GroupID)])
		}
		seen[string(resp.GroupID)] = true
	}
}

func TestHandleRefusals(t *testing.T) {
	var s Service
	signed := encode(t, &moh.DSRequest{Body: moh.RequestBody{Type: moh.RequestGroupID},
		Auth: moh.AuthData{Type: moh.AuthClientSignature, SenderIndex: 1,
			Timestamp: 1, Signature: bytes.Repeat([]byte{1}, 64)}})
	for _, tc := range []struct {
		name string
		body []byte
		want moh.Code
	}{
		{"empty", nil, moh.CodeMalformed},
		{"header only", []byte{0, 1}, moh.CodeMalformed},
		{"truncated", []byte{0, 1, byte(moh.RequestGroupID)}, moh.CodeMalformed},
		{"signed request_group_id", signed, moh.CodeMalformed},
		{"truncated MLS-carrying type", []byte{0, 1, byte(moh.CreateGroup)}, moh.CodeMalformed},
		{"provider-only type", []byte{0, 1, byte(moh.AddPackages), 0}, moh.CodeMalformed},
		{"other version", []byte{0, 2, byte(moh.CreateGroup)}, moh.CodeUnsupportedVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := s.Authenticate(context.Background(), tc.body)
			if req != nil || moh.DSErrorOf(err).Code != tc.want {
				t.Fatalf("Authenticate = %+v, %v; want %s", req, err, tc.want)
			}
		})
	}
}
