package ds

import (
	"fmt"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestFanoutTooLarge checks that a request whose delivery takes more
// messages than one write of the store carries (store.MaxFanoutMessages)
// is refused too_large, a permanent answer the client can act on, and
// changes nothing; the store's refusal of such a write used to be
// answered backend_unavailable, which a client retries for ever. The
// add_users below adds one client at each of MaxFanoutMessages+1
// providers: its Welcome goes to as many destinations.
func TestFanoutTooLarge(t *testing.T) {
	h := newHarness(t)
	h.svc.Bindings = &binding.Checker{Unchecked: true}
	alice := h.newTClient(t, "alice", "phone", false)
	gid := []byte("too many destinations")
	h.mustDo(t, "create_group", createBody(t, alice, gid))
	var joiners []*tclient
	for i := range store.MaxFanoutMessages + 1 {
		joiners = append(joiners, remoteClient(t, fmt.Sprintf("p%d.example", i), "u"))
	}
	res := commit(t, alice.m, addProps(joiners...), nil, nil)
	resignGroupInfo(t, res, alice, withoutTree)
	before := h.snapshot(t, gid)
	_, err := h.do(t, commitBody(t, moh.AddUsers, alice, alice.m, res))
	wantCode(t, "add_users of clients at too many providers", err, moh.CodeTooLarge)
	if !h.snapshot(t, gid).equal(before) {
		t.Fatal("the refused add_users changed the stored group")
	}
}
