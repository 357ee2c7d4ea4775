package ds

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestAuthenticate runs client requests of every kind through
// Authenticate against real groups: who may sign what, with which key, when.
func TestAuthenticate(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	app, err := f.aliceG1.Protect([]byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	bobApp, err := f.bobG1.Protect([]byte("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	joined, _, err := mls.JoinExternal(f.g1Info, mls.ExternalJoinOptions{Leaf: f.carol.kp.LeafNode, Signer: f.carol.signer})
	if err != nil {
		t.Fatal(err)
	}
	dave := f.dave.create(t, []byte("dave's group"))
	daveInfo, err := dave.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	create := moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: []byte("dave's group"),
		LeafNode:  f.dave.kp.LeafNode,
		GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: daveInfo}}}
	// A create_group whose LeafNode names alice's client URI under eve's
	// key, signed by eve: its credential is checked only with the group
	// (the binding, step 10), so it must not key alice's member zone.
	forged := create
	forged.CreateGroup.LeafNode = f.eve.kp.LeafNode
	forged.CreateGroup.LeafNode.Credential.Identity = bytes.Clone(f.alice.id())
	send := moh.RequestBody{Type: moh.SendMessage, Message: *app}
	download := func(group []byte) moh.RequestBody {
		return moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: group, Token: bytes.Repeat([]byte{7}, 32)}}
	}
	copyTo := func(target []byte, index uint32) moh.RequestBody {
		return moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{GroupID: f.g1,
			Token: bytes.Repeat([]byte{7}, 32), TargetGroupID: target, TargetSenderIndex: index}}
	}
	commitInfo := func(group []byte) moh.RequestBody {
		return moh.RequestBody{Type: moh.ExternalCommitInfo, ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: group}}
	}
	welcomeInfo := func(epoch uint64) moh.RequestBody {
		return moh.RequestBody{Type: moh.WelcomeInfo, WelcomeInfo: moh.WelcomeInfoRequest{GroupID: f.g1, Epoch: epoch}}
	}
	kpSigned := func(c *client, ref []byte, epoch uint64, skew time.Duration) []byte {
		b, err := SignRequest(f.cs, c.signer, welcomeInfo(epoch), KeyPackageSignature(ref, f.now.Add(skew)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	anon := func(body moh.RequestBody, auth moh.AuthData) []byte {
		b, err := wire.Marshal(&moh.DSRequest{Body: body, Auth: auth})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// A signature by alice as sender 0 relabelled as sender 1: the key at
	// leaf 1 (bob's) does not verify it.
	relabelled := func() []byte {
		req, err := moh.DecodeDSRequest(f.sign(t, f.alice, 0, send, 0))
		if err != nil {
			t.Fatal(err)
		}
		req.Auth.SenderIndex = 1
		b, _ := wire.Marshal(req)
		return b
	}

	for _, tc := range []struct {
		name   string
		body   []byte
		want   moh.Code
		group  []byte // the GroupID of an accepted request
		member []byte // its Member: the sender's client URI, which a change of signature key keeps (create_group: its LeafNode's key)
	}{
		{"request_group_id", anon(moh.RequestBody{Type: moh.RequestGroupID}, moh.AuthData{}), 0, nil, nil},
		{"send_message by alice", f.sign(t, f.alice, 0, send, 0), 0, f.g1, f.alice.id()},
		{"send_message by bob", f.sign(t, f.bob, 1, moh.RequestBody{Type: moh.SendMessage, Message: *bobApp}, 0), 0, f.g1, f.bob.id()},
		{"update_client", f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.UpdateClient, GroupUpdate: update(f.updateAlice)}, 0), 0, f.g1, f.alice.id()},
		{"add_users", f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.AddUsers, GroupUpdate: update(f.addCarol),
			WelcomePackages: []moh.WelcomePackage{{Welcome: *f.addCarol.Welcome}}}, 0), 0, f.g1, f.alice.id()},
		{"remove_users", f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.RemoveUsers, GroupUpdate: update(f.removeBob)}, 0), 0, f.g1, f.alice.id()},
		{"self_remove_client", f.sign(t, f.bob, 1, moh.RequestBody{Type: moh.SelfRemoveClient, Message: *f.bobLeaves}, 0), 0, f.g1, f.bob.id()},
		{"create_group", f.sign(t, f.dave, 0, create, 0), 0, []byte("dave's group"), f.dave.pub},
		{"create_group naming another client", f.sign(t, f.eve, 0, forged, 0), 0, []byte("dave's group"), f.eve.pub},
		{"create_group sender 1", f.sign(t, f.dave, 1, create, 0), moh.CodeMalformed, nil, nil},
		{"create_group signed by another key", f.sign(t, f.eve, 0, create, 0), moh.CodeBadSignature, nil, nil},
		{"external_join anonymous", anon(moh.RequestBody{Type: moh.ExternalJoin,
			GroupUpdate: moh.MLSGroupUpdate{Commit: *joined, PartialGroupInfo: moh.PartialGroupInfo{Signature: []byte{1}}}}, moh.AuthData{}), 0, nil, nil},
		{"external_join signed", f.sign(t, f.carol, 0, moh.RequestBody{Type: moh.ExternalJoin,
			GroupUpdate: moh.MLSGroupUpdate{Commit: *joined, PartialGroupInfo: moh.PartialGroupInfo{Signature: []byte{1}}}}, 0), moh.CodeMalformed, nil, nil},
		{"send_message anonymous", anon(send, moh.AuthData{}), moh.CodeMalformed, nil, nil},
		{"send_message key_package_signature", anon(send, moh.AuthData{Type: moh.AuthKeyPackageSignature,
			KeyPackageRef: f.bobRef, Timestamp: 1, Signature: []byte{1}}), moh.CodeMalformed, nil, nil},
		{"tampered signature", flipLast(f.sign(t, f.alice, 0, send, 0)), moh.CodeBadSignature, nil, nil},
		{"tampered timestamp", func() []byte {
			b := f.sign(t, f.alice, 0, send, 0)
			req, _ := moh.DecodeDSRequest(b)
			req.Auth.Timestamp++
			out, _ := wire.Marshal(req)
			return out
		}(), moh.CodeBadSignature, nil, nil},
		{"wrong sender index", relabelled(), moh.CodeBadSignature, nil, nil},
		{"sender index past the tree", f.sign(t, f.alice, 5, send, 0), moh.CodeNotFound, nil, nil},
		{"removed member (blank leaf)", f.sign(t, f.bob, 1, download(f.g3), 0), moh.CodeNotFound, nil, nil},
		{"non-member claiming a member's leaf", f.sign(t, f.eve, 1, download(f.g1), 0), moh.CodeBadSignature, nil, nil},
		{"unknown group", f.sign(t, f.alice, 0, download([]byte("no such group")), 0), moh.CodeNotFound, nil, nil},
		{"stale timestamp", f.sign(t, f.alice, 0, send, -MaxClockSkew-time.Second), moh.CodeStaleTimestamp, nil, nil},
		{"future timestamp", f.sign(t, f.alice, 0, send, MaxClockSkew+time.Second), moh.CodeStaleTimestamp, nil, nil},
		{"oldest accepted timestamp", f.sign(t, f.alice, 0, send, -MaxClockSkew), 0, f.g1, f.alice.id()},
		{"newest accepted timestamp", f.sign(t, f.alice, 0, send, MaxClockSkew), 0, f.g1, f.alice.id()},
		{"stale timestamp before signature", flipLast(f.sign(t, f.alice, 0, send, -time.Hour)), moh.CodeStaleTimestamp, nil, nil},
		{"stale timestamp on an unknown group", f.sign(t, f.alice, 0, download([]byte("no such group")), time.Hour), moh.CodeStaleTimestamp, nil, nil},
		{"attachment_download", f.sign(t, f.bob, 1, download(f.g1), 0), 0, f.g1, f.bob.id()},
		{"external_commit_info by a member", f.sign(t, f.bob, 1, commitInfo(f.g1), 0), 0, f.g1, f.bob.id()},
		{"external_commit_info anonymous", anon(commitInfo(f.g1), moh.AuthData{}), moh.CodeNotFound, nil, nil},
		{"external_commit_info anonymous, unknown group", anon(commitInfo([]byte("no such group")), moh.AuthData{}), moh.CodeNotFound, nil, nil},
		{"attachment_copy to a group alice is in", f.sign(t, f.alice, 0, copyTo(f.g2, 0), 0), 0, f.g1, f.alice.id()},
		{"attachment_copy wrong target index", f.sign(t, f.alice, 0, copyTo(f.g2, 1), 0), moh.CodeNotFound, nil, nil},
		{"attachment_copy to a group bob is not in", f.sign(t, f.bob, 1, copyTo(f.g2, 0), 0), moh.CodeNotFound, nil, nil},
		{"attachment_copy to an unknown group", f.sign(t, f.alice, 0, copyTo([]byte("no such group"), 0), 0), moh.CodeNotFound, nil, nil},
		{"attachment_copy bad signature, unknown target", flipLast(f.sign(t, f.alice, 0, copyTo([]byte("no such group"), 0), 0)), moh.CodeBadSignature, nil, nil},
		{"welcome_info by the joiner", kpSigned(f.bob, f.bobRef, f.bobRefEpoch, 0), 0, f.g1, f.bob.pub},
		{"welcome_info other epoch", kpSigned(f.bob, f.bobRef, f.bobRefEpoch+1, 0), moh.CodeNotFound, nil, nil},
		{"welcome_info signed by another key", kpSigned(f.eve, f.bobRef, f.bobRefEpoch, 0), moh.CodeBadSignature, nil, nil},
		{"welcome_info stale", kpSigned(f.bob, f.bobRef, f.bobRefEpoch, -time.Hour), moh.CodeStaleTimestamp, nil, nil},
		{"welcome_info with client_signature", f.sign(t, f.bob, 1, welcomeInfo(f.bobRefEpoch), 0), moh.CodeMalformed, nil, nil},
		{"ecdsa group member", f.sign(t, f.erin, 0, download(f.p256), 0), 0, f.p256, f.erin.id()},
		{"ecdsa tampered", flipLast(f.sign(t, f.erin, 0, download(f.p256), 0)), moh.CodeBadSignature, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := f.svc.Authenticate(ctx, tc.body)
			if got := codeOf(err); got != tc.want {
				t.Fatalf("Authenticate = %v, want code %v", err, tc.want)
			}
			if err != nil {
				if req != nil {
					t.Fatal("a refusal returned a request")
				}
				if tc.want == moh.CodeNotFound && moh.DSErrorOf(err).Message == nil {
					t.Fatal("not_found without a message")
				}
				return
			}
			if !bytes.Equal(req.GroupID, tc.group) || !bytes.Equal(req.Member, tc.member) {
				t.Fatalf("group %q member %x, want %q %x", req.GroupID, req.Member, tc.group, tc.member)
			}
		})
	}
}

// TestNotFoundAlike requires the refusals for an unknown group and for a
// sender who is not a member to be the same bytes.
func TestNotFoundAlike(t *testing.T) {
	f := newFixture(t)
	body := func(g []byte) moh.RequestBody {
		return moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: g, Token: []byte{1}}}
	}
	_, unknown := f.svc.Authenticate(context.Background(), f.sign(t, f.alice, 0, body([]byte("nope")), 0))
	_, removed := f.svc.Authenticate(context.Background(), f.sign(t, f.bob, 1, body(f.g3), 0))
	a, b := moh.DSErrorOf(unknown), moh.DSErrorOf(removed)
	if a.Code != moh.CodeNotFound || a.Code != b.Code || !bytes.Equal(a.Message, b.Message) {
		t.Fatalf("unknown group %+v, non-member %+v", a, b)
	}
}

// TestAuthenticateBackend maps failures of the group and joiner lookups to
// backend_unavailable without leaking them, and a Service without groups
// to not_found (welcome_info, without Joiners, to not_implemented).
func TestAuthenticateBackend(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	body := f.sign(t, f.alice, 0, moh.RequestBody{Type: moh.AttachmentDownload,
		Attachment: moh.AttachmentRef{GroupID: f.g1, Token: []byte{1}}}, 0)
	t.Run("groups fail", func(t *testing.T) {
		s := *f.svc
		s.Groups = StoreGroups{closedStore(t)}
		_, err := s.Authenticate(ctx, body)
		if e := moh.DSErrorOf(err); e.Code != moh.CodeBackendUnavailable || bytes.Contains(e.Message, []byte("closed")) {
			t.Fatalf("Authenticate = %v (%+v)", err, e)
		}
	})
	t.Run("no groups", func(t *testing.T) {
		s := &Service{Now: f.svc.Now}
		if _, err := s.Authenticate(ctx, body); codeOf(err) != moh.CodeNotFound {
			t.Fatalf("Authenticate = %v", err)
		}
		kp, err := SignRequest(f.cs, f.bob.signer, moh.RequestBody{Type: moh.WelcomeInfo,
			WelcomeInfo: moh.WelcomeInfoRequest{GroupID: f.g1, Epoch: 1}}, KeyPackageSignature(f.bobRef, f.now))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, kp); codeOf(err) != moh.CodeNotImplemented {
			t.Fatalf("Authenticate(welcome_info) = %v", err)
		}
	})
}

// TestReplay records the signed bytes of uploads, deletes and copies:
// the second copy of one is refused replay, across Authenticate and Handle,
// while downloads and requests with other bytes pass.
func TestReplay(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	token := bytes.Repeat([]byte{7}, 32)
	handle := func(body []byte) moh.Code {
		t.Helper()
		req, err := f.svc.Authenticate(ctx, body)
		if err != nil {
			t.Fatalf("Authenticate = %v", err)
		}
		_, err = f.svc.Handle(ctx, req)
		return codeOf(err)
	}
	del := moh.RequestBody{Type: moh.AttachmentDelete, Attachment: moh.AttachmentRef{GroupID: f.g1, Token: token}}
	cp := moh.RequestBody{Type: moh.AttachmentCopy, Copy: moh.AttachmentCopyRequest{GroupID: f.g1, Token: token, TargetGroupID: f.g2}}
	down := moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: f.g1, Token: token}}
	for _, tc := range []struct {
		name  string
		first []byte
		again []byte
		want  moh.Code // of the second request
	}{
		{"delete", f.sign(t, f.alice, 0, del, 0), nil, moh.CodeReplay},
		{"copy", f.sign(t, f.alice, 0, cp, 0), nil, moh.CodeReplay},
		{"delete re-signed later", f.sign(t, f.bob, 1, del, 0), f.sign(t, f.bob, 1, del, time.Second), moh.CodeNotImplemented},
		{"download is not recorded", f.sign(t, f.alice, 0, down, 0), nil, moh.CodeNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := handle(tc.first); got != moh.CodeNotImplemented {
				t.Fatalf("first: %v", got)
			}
			again := tc.again
			if again == nil {
				again = tc.first
			}
			if got := handle(again); got != tc.want {
				t.Fatalf("second: %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("upload with content", func(t *testing.T) {
		up := moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{GroupID: f.g1,
			ContentLength: 5, ContentHash: bytes.Repeat([]byte{3}, 32)}}
		head := f.sign(t, f.alice, 0, up, 0)
		for i, want := range []moh.Code{moh.CodeNotImplemented, moh.CodeReplay} {
			req, n, err := f.svc.AuthenticatePrefix(ctx, append(bytes.Clone(head), "hello"...))
			if err != nil || n != len(head) {
				t.Fatalf("AuthenticatePrefix = %v, %d (want %d)", err, n, len(head))
			}
			if _, err := f.svc.Handle(ctx, req); codeOf(err) != want {
				t.Fatalf("upload %d: %v, want %v", i, err, want)
			}
		}
	})

	t.Run("ecdsa signature altered", func(t *testing.T) {
		// (r, s) and (r, n-s) are both valid ECDSA signatures of the same
		// bytes: a replay with the altered one is still a replay.
		body := f.sign(t, f.erin, 0, moh.RequestBody{Type: moh.AttachmentDelete,
			Attachment: moh.AttachmentRef{GroupID: f.p256, Token: token}}, 0)
		if got := handle(body); got != moh.CodeNotImplemented {
			t.Fatalf("first: %v", got)
		}
		req, err := moh.DecodeDSRequest(body)
		if err != nil {
			t.Fatal(err)
		}
		var sig struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(req.Auth.Signature, &sig); err != nil {
			t.Fatal(err)
		}
		sig.S.Sub(elliptic.P256().Params().N, sig.S)
		if req.Auth.Signature, err = asn1.Marshal(sig); err != nil {
			t.Fatal(err)
		}
		altered, _ := wire.Marshal(req)
		tbs, _ := req.SignedBytes()
		if err := mls.P256AES128GCMSHA256P256.VerifyWithLabel(f.erin.pub, moh.DSRequestLabel, tbs, req.Auth.Signature); err != nil {
			t.Fatalf("the altered signature does not verify, so the test proves nothing: %v", err)
		}
		if got := handle(altered); got != moh.CodeReplay {
			t.Fatalf("altered signature: %v, want replay", got)
		}
	})

	t.Run("store fails", func(t *testing.T) {
		seen := f.svc.Seen
		f.svc.Seen = closedStore(t)
		defer func() { f.svc.Seen = seen }()
		if got := handle(f.sign(t, f.alice, 0, del, 2*time.Second)); got != moh.CodeBackendUnavailable {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("no replay set", func(t *testing.T) {
		s := *f.svc
		s.Seen = nil
		req, err := s.Authenticate(ctx, f.sign(t, f.alice, 0, del, 3*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Handle(ctx, req); codeOf(err) != moh.CodeBackendUnavailable {
			t.Fatalf("Handle = %v", err)
		}
	})
}

// TestSignRequest checks the builder: an anonymous auth is refused, and
// the signature covers exactly DSRequestTBS under the "MIMI DS request"
// label.
func TestSignRequest(t *testing.T) {
	f := newFixture(t)
	body := moh.RequestBody{Type: moh.AttachmentDownload, Attachment: moh.AttachmentRef{GroupID: f.g1, Token: []byte{1}}}
	if _, err := SignRequest(f.cs, f.alice.signer, body, moh.AuthData{}); err == nil {
		t.Fatal("signed an anonymous request")
	}
	enc := f.sign(t, f.alice, 0, body, 0)
	req, err := moh.DecodeDSRequest(enc)
	if err != nil {
		t.Fatal(err)
	}
	tbs, _ := req.SignedBytes()
	if !bytes.HasPrefix(enc, tbs) || req.Auth.Timestamp != uint64(f.now.Unix()) || req.Auth.SenderIndex != 0 {
		t.Fatalf("request %+v", req.Auth)
	}
	if err := f.cs.VerifyWithLabel(f.alice.pub, "MIMI DS request", tbs, req.Auth.Signature); err != nil {
		t.Fatal(err)
	}
}
