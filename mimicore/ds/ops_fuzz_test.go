package ds

import (
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// FuzzGroupOps applies random DSRequests to a live group (alice and bob,
// epoch 1) in a real store, and requires that every refusal carries a
// known DSError code, leaves the stored group, its pending proposals
// included, exactly as it was, and delivers nothing to any queue.
//
// The input is a signer selector and a DSRequestBody. A body that decodes
// is signed afresh by the selected member (alice at leaf 0, bob at leaf
// 1) or sent anonymously, so mutations of the MLS content get past the
// client signature and reach the group's validation; any input is also
// sent as a whole DSRequest as it is. The seeds are valid bodies of every
// group operation. A new input takes the fuzzing engine long to minimize
// (every run reads the store), so fuzz with a short -fuzzminimizetime:
//
//	go test -run '^$' -fuzz FuzzGroupOps -fuzztime 20s -fuzzminimizetime 2s ./mimicore/ds
func FuzzGroupOps(f *testing.F) {
	h := newHarness(f)
	alice := h.newTClient(f, "alice", "phone", false)
	bob := h.newTClient(f, "bob", "phone", false)
	dave := h.newTClient(f, "dave", "phone", false)
	tablet := h.newTClient(f, "alice", "tablet", false)
	gid := []byte("fuzzed group")
	h.mustDo(f, "create_group", createBody(f, alice, gid))
	res := commit(f, alice.m, addProps(bob), nil, nil)
	h.mustDo(f, "add_users", commitBody(f, moh.AddUsers, alice, alice.m, res))
	alice.m = res.Next
	join(f, res, bob)

	seed := func(signer byte, body moh.RequestBody) {
		b, err := wire.Marshal(&body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(signer, b)
	}
	groupUpdate := func(typ moh.RequestType, res *mls.CommitResult) moh.RequestBody {
		body := moh.RequestBody{Type: typ, GroupUpdate: update(res)}
		if res.Welcome != nil {
			body.WelcomePackages = []moh.WelcomePackage{{Welcome: *res.Welcome}}
		}
		return body
	}
	remove := func(i uint32) []*mls.Proposal { return []*mls.Proposal{{Type: mls.ProposalRemove, Removed: i}} }
	seed(0, groupUpdate(moh.UpdateClient, commit(f, alice.m, nil, nil, nil)))
	seed(0, groupUpdate(moh.AddUsers, commit(f, alice.m, addProps(dave), nil, nil)))
	seed(0, groupUpdate(moh.AddClients, commit(f, alice.m, addProps(tablet), nil, nil)))
	seed(0, groupUpdate(moh.RemoveUsers, commit(f, alice.m, remove(1), nil, nil)))
	seed(1, groupUpdate(moh.RemoveClients, commit(f, bob.m, remove(0), nil, nil)))
	seed(0, groupUpdate(moh.DeleteGroup, commit(f, alice.m, remove(1), nil, nil)))
	seed(0, groupUpdate(moh.ReInitializeGroup, commit(f, alice.m, []*mls.Proposal{{Type: mls.ProposalReInit,
		ReInit: &mls.ReInit{GroupID: []byte("next"), Version: mls.MLS10, CipherSuite: alice.c.kp.CipherSuite}}}, nil, nil)))
	prop, err := bob.m.Propose(&mls.Proposal{Type: mls.ProposalRemove, Removed: 1})
	if err != nil {
		f.Fatal(err)
	}
	seed(1, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *prop})
	app, err := alice.m.Protect([]byte("hello"), nil)
	if err != nil {
		f.Fatal(err)
	}
	seed(0, moh.RequestBody{Type: moh.SendMessage, Message: *app})
	seed(0, moh.RequestBody{Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}})
	gi, err := alice.m.GroupInfo()
	if err != nil {
		f.Fatal(err)
	}
	ext, tm, err := mls.JoinExternal(gi, mls.ExternalJoinOptions{Leaf: tablet.c.kp.LeafNode, Signer: tablet.c.signer})
	if err != nil {
		f.Fatal(err)
	}
	tgi, err := tm.GroupInfo()
	if err != nil {
		f.Fatal(err)
	}
	seed(2, moh.RequestBody{Type: moh.ExternalJoin, GroupUpdate: moh.MLSGroupUpdate{Commit: *ext,
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: tgi.Extensions, Signature: tgi.Signature}}})

	signers := []*tclient{alice, bob}
	clients := []*tclient{alice, bob, dave, tablet}
	f.Fuzz(func(t *testing.T, signer byte, data []byte) {
		var bodies [][]byte
		var body moh.RequestBody
		if err := wire.Unmarshal(data, &body, "request body"); err == nil {
			if int(signer) < len(signers) {
				if b, err := SignRequest(signers[signer].c.kp.CipherSuite, signers[signer].c.signer, body,
					ClientSignature(uint32(signer), time.Now())); err == nil {
					bodies = append(bodies, b)
				}
			} else if b, err := wire.Marshal(&moh.DSRequest{Body: body}); err == nil {
				bodies = append(bodies, b)
			}
		}
		bodies = append(bodies, data)
		for _, b := range bodies {
			for _, c := range clients {
				h.queued(t, c)
			}
			before := h.snapshot(t, gid)
			_, err := h.do(t, b)
			if err == nil {
				continue
			}
			if !typedRefusal(err) {
				t.Fatalf("refusal without a DSError of its own (an internal error, answered backend_unavailable): %v", err)
			}
			if !h.snapshot(t, gid).equal(before) {
				t.Fatalf("refusal %v changed the stored group", err)
			}
			for _, c := range clients {
				if q := h.queued(t, c); len(q) > 0 {
					t.Fatalf("refusal %v delivered %d messages to %s", err, len(q), c.uri)
				}
			}
		}
	})
}
