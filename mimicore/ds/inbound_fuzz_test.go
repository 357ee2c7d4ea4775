package ds

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// FuzzProviderPayloads feeds arbitrary payloads of every provider request
// type, from the hub of a known group or from another provider, to the
// receiving side on a real store (deliver_message, connection_request,
// the KeyPackage claims), and arbitrary bodies to HubElsewhere, the
// follower's lookup before a relay: neither may panic, and every refusal
// is a DSError of the service's own (typedRefusal), never an internal
// error. The seeds are valid payloads, so that
// mutations reach the hub checks and the queues.
//
// Every run reads the store, so the engine takes long to minimize a new
// input: with the default -fuzzminimizetime of 60s, a run of a minute
// spends most of it minimizing one input (the exec count stops). Fuzz with
// a short one:
//
//	go test -run '^$' -fuzz FuzzProviderPayloads -fuzztime 45s -fuzzminimizetime 2s ./mimicore/ds
func FuzzProviderPayloads(f *testing.F) {
	h := newHarness(f)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	h.svc.Hubs = new(HubCache)
	bob := h.newTClient(f, "bob", "phone", false)
	carol := newKeyPackageClient(f, mls.X25519AES128GCMSHA256Ed25519, "carol", moh.ClientURI("c.example", "carol", "phone"), nil)
	gid := []byte("a fuzzed group of c.example")
	res := commit(f, carol.create(f, gid), addProps(bob), nil, nil)
	app, err := res.Next.Protect([]byte("hello"), nil)
	if err != nil {
		f.Fatal(err)
	}
	marshal := func(v wire.Marshaler) []byte {
		b, err := wire.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	welcome := marshal(&moh.QueueingServiceRequest{GroupID: gid, ClientIDs: [][]byte{[]byte(bob.uri)}, Message: *res.Welcome})
	f.Add(byte(moh.DeliverMessage), false, welcome)
	f.Add(byte(moh.DeliverMessage), true, welcome)
	f.Add(byte(moh.DeliverMessage), false, marshal(&moh.QueueingServiceRequest{GroupID: gid,
		ClientIDs: [][]byte{[]byte(bob.uri), []byte("x")}, Message: *app}))
	f.Add(byte(moh.ConnectionRequest), false, marshal(&moh.ConnectionRequestPayload{UserID: []byte(moh.UserURI(testProvider, "bob")),
		GroupID: gid, Welcome: *res.Welcome}))
	f.Add(byte(moh.ConnectionKeyPackages), false, marshal(&moh.ConnectionKeyPackagesRequest{
		Requester: []byte(moh.UserURI("c.example", "carol")), UserID: []byte(moh.UserURI(testProvider, "bob"))}))
	f.Add(byte(moh.GroupKeyPackages), false, marshal(&moh.GroupKeyPackagesRequest{
		Requester: []byte(moh.UserURI("c.example", "carol")), ClientIDs: [][]byte{[]byte(bob.uri)}}))
	f.Fuzz(func(t *testing.T, typ byte, other bool, payload []byte) {
		sender := "c.example"
		if other {
			sender = "m.example"
		}
		if _, err := h.peerAsk(t, moh.ProviderRequestType(typ%4), sender, payload); err != nil && !typedRefusal(err) {
			t.Fatalf("refusal without a DSError of its own (an internal error, answered backend_unavailable): %v", err)
		}
		if _, err := h.svc.HubElsewhere(t.Context(), payload); err != nil && !typedRefusal(err) {
			t.Fatalf("HubElsewhere refusal without a DSError of its own: %v", err)
		}
	})
}
