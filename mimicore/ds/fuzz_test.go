package ds

import (
	"context"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// FuzzAuthenticate feeds arbitrary bodies to the DS: it must never panic,
// every refusal must carry a DSError code, and an accepted request must
// have decoded to a request that re-encodes to the same bytes.
func FuzzAuthenticate(f *testing.F) {
	anon, _ := wire.Marshal(&moh.DSRequest{Body: moh.RequestBody{Type: moh.RequestGroupID}})
	f.Add(anon)
	f.Add([]byte{0, 1, byte(moh.CreateGroup)})
	f.Add([]byte{0, 2, 0, 0})
	f.Add([]byte{})
	var s Service
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := s.Authenticate(context.Background(), body)
		if err != nil {
			if req != nil {
				t.Fatal("a refusal returned a request")
			}
			if !moh.DSErrorOf(err).Code.Known() {
				t.Fatalf("refusal without a known code: %v", err)
			}
			return
		}
		again, err := wire.Marshal(req.Body)
		if err != nil || string(again) != string(body) {
			t.Fatalf("accepted body %x re-encodes to %x (%v)", body, again, err)
		}
		if _, err := s.Handle(context.Background(), req); err != nil && !moh.DSErrorOf(err).Code.Known() {
			t.Fatalf("Handle refusal without a known code: %v", err)
		}
	})
}
