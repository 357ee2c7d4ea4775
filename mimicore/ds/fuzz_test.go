package ds

import (
	"context"
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// FuzzAuthenticate feeds arbitrary bodies to a DS hosting the fixture's
// real groups: it must never panic, every refusal must carry a DSError
// code, and an accepted request must have decoded to a request that
// re-encodes to the same bytes. The seeds are valid signed requests of
// several types, so mutations reach the signature and membership checks.
//
// Every run reads the store, so the engine takes long to minimize a new
// input: with the default -fuzzminimizetime of 60s, a run of a minute
// spends most of it minimizing one input (the exec count stops). Fuzz with
// a short one:
//
//	go test -run '^$' -fuzz FuzzAuthenticate -fuzztime 45s -fuzzminimizetime 2s ./mimicore/ds
func FuzzAuthenticate(f *testing.F) {
	fx := newFixture(f)
	anon, _ := wire.Marshal(&moh.DSRequest{Body: moh.RequestBody{Type: moh.RequestGroupID}})
	f.Add(anon)
	f.Add([]byte{0, 1, byte(moh.CreateGroup)})
	f.Add([]byte{0, 2, 0, 0})
	f.Add([]byte{})
	app, err := fx.aliceG1.Protect([]byte("hello"), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(fx.sign(f, fx.alice, 0, moh.RequestBody{Type: moh.SendMessage, Message: *app}, 0))
	f.Add(fx.sign(f, fx.alice, 0, moh.RequestBody{Type: moh.UpdateClient, GroupUpdate: update(fx.updateAlice)}, 0))
	f.Add(fx.sign(f, fx.bob, 1, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *fx.bobLeaves}, 0))
	f.Add(fx.sign(f, fx.alice, 0, moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{
		GroupID: fx.g1, Token: []byte{7}, TargetGroupID: fx.g2}}, 0))
	wi, err := SignRequest(fx.cs, fx.bob.signer, moh.RequestBody{Type: moh.WelcomeInfo,
		WelcomeInfo: moh.WelcomeInfoRequest{GroupID: fx.g1, Epoch: fx.bobRefEpoch}}, KeyPackageSignature(fx.bobRef, fx.now))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(wi)
	s := fx.svc
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := s.Authenticate(context.Background(), body)
		if err != nil {
			if req != nil {
				t.Fatal("a refusal returned a request")
			}
			if !typedRefusal(err) {
				t.Fatalf("refusal without a DSError of its own (an internal error, answered backend_unavailable): %v", err)
			}
			return
		}
		again, err := wire.Marshal(req.Body)
		if err != nil || string(again) != string(body) {
			t.Fatalf("accepted body %x re-encodes to %x (%v)", body, again, err)
		}
		if _, err := s.Handle(context.Background(), req); err != nil && !typedRefusal(err) {
			t.Fatalf("Handle refusal without a DSError of its own: %v", err)
		}
	})
}

// typedRefusal reports whether err is a refusal the service chose: a
// *moh.Error with a known code, or a decoding failure (wire.ErrMalformed,
// answered malformed). moh.DSErrorOf answers any other error, an internal
// one, as backend_unavailable, a known code: its code alone holds for
// every error.
func typedRefusal(err error) bool {
	var e *moh.Error
	if errors.As(err, &e) {
		return e.Code.Known()
	}
	return errors.Is(err, wire.ErrMalformed)
}
