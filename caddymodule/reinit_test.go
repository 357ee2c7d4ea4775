package caddymodule

import (
	"crypto/rand"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// TestReInitClosesGroup runs a re_initialize_group through two gateways
// over TLS 1.3: a's group, with bob of b as a member, is reinitialized by
// alice; then alice's update_client at the hub, bob's send_message
// relayed by his provider, and alice's external_commit_information are
// each answered 403 forbidden (docs/protocol.md §5.4.1, After
// re_initialize_group), and the successor group the ReInit names is
// created.
func TestReInitClosesGroup(t *testing.T) {
	a, b := twoProviders(t)
	alice, bob := newPeerMember(t, a, "alice"), newPeerMember(t, b, "bob")
	gid, successor := make([]byte, 16), make([]byte, 16)
	rand.Read(gid)
	rand.Read(successor)
	added := hostWithPeer(t, a, b, alice, bob, gid)
	m, err := mls.JoinFromWelcome(added.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: bob.kp, InitKey: bob.initKey,
		LeafKey: bob.leafKey, Signer: bob.signer})
	if err != nil {
		t.Fatal(err)
	}
	bob.m = m

	res, err := alice.m.Commit([]*mls.Proposal{{Type: mls.ProposalReInit, ReInit: &mls.ReInit{GroupID: successor,
		Version: mls.MLS10, CipherSuite: peerSuite}}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pgi := res.GroupInfo.GroupInfo
	groupOp(t, a, alice, moh.RequestBody{Type: moh.ReInitializeGroup, GroupUpdate: moh.MLSGroupUpdate{Commit: *res.Commit,
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: pgi.Extensions, Signature: pgi.Signature}}})
	alice.m = res.Next
	if bob.m, err = bob.m.ApplyCommit(res.Commit, nil); err != nil {
		t.Fatal(err)
	}

	update, err := alice.m.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	upgi := update.GroupInfo.GroupInfo
	msg, err := bob.m.Protect([]byte("still here?"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		site *peerSite
		c    *peerMember
		path string
		body moh.RequestBody
	}{
		{"update_client at the hub", a, alice, "/group_operation", moh.RequestBody{Type: moh.UpdateClient,
			GroupUpdate: moh.MLSGroupUpdate{Commit: *update.Commit,
				PartialGroupInfo: moh.PartialGroupInfo{Extensions: upgi.Extensions, Signature: upgi.Signature}}}},
		{"send_message relayed by the follower", b, bob, "/group_operation", moh.RequestBody{Type: moh.SendMessage, Message: *msg}},
		{"external_commit_information at the hub", a, alice, "/external_commit_information", moh.RequestBody{
			Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ds.SignRequest(peerSuite, tc.c.signer, tc.body, ds.ClientSignature(tc.c.m.LeafIndex(), time.Now()))
			if err != nil {
				t.Fatal(err)
			}
			_, port, _ := net.SplitHostPort(tc.site.addr)
			resp, r := postDS(t, tc.site.client(), "https://"+tc.site.g.Providers[0]+":"+port+tc.path, req)
			if resp.StatusCode != http.StatusForbidden || r.Type != moh.ResponseError || r.Error.Code != moh.CodeForbidden {
				t.Fatalf("answer %d %s %q, want 403 forbidden", resp.StatusCode, r.Error.Code, r.Error.Message)
			}
		})
	}
	createGroupAt(t, a, alice, successor)
}
