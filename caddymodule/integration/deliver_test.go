package integration

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestDeliverMessage sends deliver_message from a.localhost to b.localhost
// over TLS 1.3, signed with a's keys: the first Welcome of a group makes a
// its hub at b, a retry under a new request id is answered alike, a
// client of another provider is answered as unknown, and a message for a
// group b does not know is 404.
func TestDeliverMessage(t *testing.T) {
	startCaddy(t)
	ring, err := provider.LoadKeyRing(filepath.Join(env.dir, "a", "keys"))
	if err != nil {
		t.Fatal(err)
	}
	issuer := &binding.Issuer{Domains: []string{"a.localhost"}, Keys: ring}
	alice := newMIMIClient(t, issuer, "alice", "phone", false)
	// The Welcome is for a KeyPackage of another client of a; b does not
	// read Welcomes, it routes them by the client ids of the request, and
	// here they name bob of b.localhost.
	joiner := newMIMIClient(t, issuer, "bob", "phone", false)
	bob := moh.ClientURI("b.localhost", "bob", "phone")
	gid := random32(t)[:16]
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: suite, GroupID: gid, Leaf: &alice.kp.LeafNode,
		LeafKey: alice.leafKey, Signer: alice.signer})
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Commit([]*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: joiner.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := peerClient(t, "a.localhost")
	ctx := context.Background()
	send := func(t *testing.T, msg *mls.MLSMessage, group []byte, to ...string) *provider.Answer {
		t.Helper()
		q := &moh.QueueingServiceRequest{GroupID: group, Message: *msg}
		for _, c := range to {
			q.ClientIDs = append(q.ClientIDs, []byte(c))
		}
		payload, err := wire.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		ans, err := a.Send(ctx, "b.localhost", moh.DeliverMessage, payload)
		if err != nil {
			t.Fatal(err)
		}
		return ans
	}
	stranger := moh.ClientURI("c.localhost", "carol", "phone")
	for i := range 2 { // the second is a retry under a new request id
		ans := send(t, res.Welcome, gid, bob, stranger)
		if ans.Status != http.StatusOK || ans.Response.Type != moh.ResponseQueueing ||
			ans.Response.Queueing.Status != moh.QueueingInvalidClientQueueInfo ||
			len(ans.Response.Queueing.Unknown) != 1 || string(ans.Response.Queueing.Unknown[0]) != stranger {
			t.Fatalf("delivery %d of the Welcome: %d %+v", i+1, ans.Status, ans.Response)
		}
	}
	app, err := res.Next.Protect([]byte("hello b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if ans := send(t, app, gid, bob); ans.Status != http.StatusOK || ans.Response.Queueing.Status != moh.QueueingOK {
		t.Fatalf("a message of the group: %d %+v", ans.Status, ans.Response)
	}
	if ans := send(t, app, random32(t)[:16], bob); ans.Status != http.StatusNotFound || ans.Response.Error.Code != moh.CodeNotFound {
		t.Fatalf("a message for an unknown group: %d %+v", ans.Status, ans.Response)
	}
}
