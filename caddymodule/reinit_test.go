package caddymodule

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
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
// relayed by his provider, alice's external_commit_information, and
// attachment uploads to the group, alice's at the hub and bob's relayed,
// are each answered 403 forbidden (docs/protocol.md §5.4.1, After
// re_initialize_group), and the successor group the ReInit names is
// created. The attachment alice uploaded before the ReInit still
// downloads and is copied out to the successor; a copy back into the old
// group is 403 forbidden. Then alice adds bob to the successor with the
// old group's reinit PSK (RFC 9420 §11.2, docs/protocol.md §5.4.1 step
// 3): the hub accepts it, the Welcome reaches b, and bob, resolving the
// PSK to his own resumption_psk of the old group and checking the
// successor against the old group's ReInit, joins at alice's epoch.
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

	// post sends body, signed by c as leaf, then content, to site's path.
	post := func(t *testing.T, site *peerSite, c *peerMember, leaf uint32, path string, body moh.RequestBody, content []byte) (*http.Response, *moh.DSResponse) {
		t.Helper()
		req, err := ds.SignRequest(peerSuite, c.signer, body, ds.ClientSignature(leaf, time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(site.addr)
		return postDS(t, site.client(), "https://"+site.g.Providers[0]+":"+port+path, append(req, content...))
	}
	upload := func(group, content []byte) moh.RequestBody {
		h := sha256.Sum256(content)
		return moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{GroupID: group,
			ContentLength: uint64(len(content)), ContentHash: h[:]}}
	}
	copyTo := func(src, token, target []byte) moh.RequestBody {
		return moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{GroupID: src, Token: token,
			TargetGroupID: target, TargetSenderIndex: 0}}
	}
	wantForbidden := func(t *testing.T, resp *http.Response, r *moh.DSResponse) {
		t.Helper()
		if resp.StatusCode != http.StatusForbidden || r.Type != moh.ResponseError || r.Error.Code != moh.CodeForbidden {
			t.Fatalf("answer %d %s %q, want 403 forbidden", resp.StatusCode, r.Error.Code, r.Error.Message)
		}
	}
	// alice created the group: her leaf is 0 in it, as in the successor.
	attached := []byte("an attachment uploaded before the ReInit")
	resp, r := post(t, a, alice, 0, "/attachment_upload", upload(gid, attached), attached)
	if resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentToken {
		t.Fatalf("upload before the ReInit: %d %s %q", resp.StatusCode, r.Error.Code, r.Error.Message)
	}
	token := r.Token

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
	late := []byte("an attachment uploaded after the ReInit")
	for _, tc := range []struct {
		name    string
		site    *peerSite
		c       *peerMember
		path    string
		body    moh.RequestBody
		content []byte
	}{
		{"update_client at the hub", a, alice, "/group_operation", moh.RequestBody{Type: moh.UpdateClient,
			GroupUpdate: moh.MLSGroupUpdate{Commit: *update.Commit,
				PartialGroupInfo: moh.PartialGroupInfo{Extensions: upgi.Extensions, Signature: upgi.Signature}}}, nil},
		{"send_message relayed by the follower", b, bob, "/group_operation", moh.RequestBody{Type: moh.SendMessage, Message: *msg}, nil},
		{"external_commit_information at the hub", a, alice, "/external_commit_information", moh.RequestBody{
			Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}, nil},
		{"attachment_upload at the hub", a, alice, "/attachment_upload", upload(gid, late), late},
		{"attachment_upload relayed by the follower", b, bob, "/attachment_upload", upload(gid, late), late},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, r := post(t, tc.site, tc.c, tc.c.m.LeafIndex(), tc.path, tc.body, tc.content)
			wantForbidden(t, resp, r)
		})
	}
	oldAlice, oldBob := alice.m, bob.m
	// The successor's creator resolves the reinit PSK, which its first
	// commit carries, to her resumption_psk of the old group.
	reinitPSK := func(old *mls.Member) mls.PSKLookup {
		return func(id *mls.PreSharedKeyID) ([]byte, error) {
			if id.Usage != mls.ResumptionReInit || !bytes.Equal(id.PSKGroupID, gid) || id.PSKEpoch != old.State().Epoch() {
				return nil, errors.New("unknown psk")
			}
			return old.ResumptionPSK(), nil
		}
	}
	sm, err := mls.NewGroup(mls.GroupOptions{CipherSuite: peerSuite, GroupID: successor, Leaf: &alice.kp.LeafNode,
		LeafKey: alice.leafKey, Signer: alice.signer, PSKs: reinitPSK(oldAlice)})
	if err != nil {
		t.Fatal(err)
	}
	sgi, err := sm.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	groupOp(t, a, alice, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: successor,
		LeafNode: alice.kp.LeafNode, GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: sgi}}})
	alice.m = sm

	resp, r = post(t, a, alice, 0, "/attachment_download", moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: gid, Token: token}}, nil)
	if resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentContent || !bytes.Equal(r.Content, attached) {
		t.Fatalf("download from the reinitialized group: %d %s %q", resp.StatusCode, r.Error.Code, r.Error.Message)
	}
	resp, r = post(t, a, alice, 0, "/attachment_copy", copyTo(gid, token, successor), nil)
	if resp.StatusCode != http.StatusOK || r.Type != moh.ResponseAttachmentToken {
		t.Fatalf("copy out of the reinitialized group: %d %s %q", resp.StatusCode, r.Error.Code, r.Error.Message)
	}
	copied := r.Token
	t.Run("attachment_copy into the reinitialized group", func(t *testing.T) {
		resp, r := post(t, a, alice, 0, "/attachment_copy", copyTo(successor, copied, gid), nil)
		wantForbidden(t, resp, r)
	})

	newBob := newPeerMember(t, b, "bob")
	psk, err := oldAlice.ReInitPSK(peerSuite)
	if err != nil {
		t.Fatal(err)
	}
	add, err := alice.m.CommitWith(mls.CommitOptions{ByValue: []*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: newBob.kp}, psk},
		ReInitialization: true})
	if err != nil {
		t.Fatal(err)
	}
	agi := add.GroupInfo.GroupInfo
	groupOp(t, a, alice, moh.RequestBody{Type: moh.AddUsers, GroupUpdate: moh.MLSGroupUpdate{Commit: *add.Commit,
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: agi.Extensions, Signature: agi.Signature}},
		WelcomePackages: []moh.WelcomePackage{{Welcome: *add.Welcome}}})
	var welcome *mls.MLSMessage
	for n := 3; welcome == nil; n++ {
		q := waitQueue(t, b, newBob.uri, n)
		if len(q) < n {
			t.Fatalf("bob's queue at b holds %d messages and no Welcome of the successor", len(q))
		}
		if last := q[n-1]; bytes.Equal(last.GroupID, successor) {
			if welcome, err = mls.DecodeMLSMessage(last.Message); err != nil || welcome.Welcome == nil {
				t.Fatalf("the successor's message in bob's queue is not a Welcome: %v", err)
			}
		}
	}
	joined, err := mls.JoinFromWelcome(welcome.Welcome, mls.WelcomeOptions{KeyPackage: newBob.kp, InitKey: newBob.initKey,
		LeafKey: newBob.leafKey, Signer: newBob.signer, PSKs: reinitPSK(oldBob), ReInit: oldBob.ReInit()})
	if err != nil {
		t.Fatalf("bob joins the successor with the old group's resumption_psk: %v", err)
	}
	if !bytes.Equal(joined.EpochAuthenticator(), add.Next.EpochAuthenticator()) {
		t.Fatal("bob's epoch secrets in the successor differ from alice's")
	}
}
