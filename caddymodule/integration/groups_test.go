package integration

import (
	"bytes"
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"crypto/tls"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/ds"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// The Delivery Service of a.localhost over real TLS 1.3 through Caddy,
// with clients driven by package mls's client side.

const suite = mls.X25519AES128GCMSHA256Ed25519

// mimiClient is one MLS client of a.localhost.
type mimiClient struct {
	uri     string
	signer  crypto.Signer
	kp      *mls.KeyPackage
	initKey hpke.PrivateKey
	leafKey hpke.PrivateKey
	m       *mls.Member
}

func random32(t *testing.T) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// newMIMIClient makes client mimi://a.localhost/d/<user>/<device>. Its
// leaf carries a client binding issued with a.localhost's key ring, read
// from the gateway's data directory, unless unbound. The local client API
// that will issue bindings to a provider's clients is not built yet, so
// the test signs them with the provider's keys directly.
func newMIMIClient(t *testing.T, issuer *binding.Issuer, user, device string, unbound bool) *mimiClient {
	t.Helper()
	return newMIMIClientAt(t, issuer, "a.localhost", user, device, unbound)
}

// issuerOf returns a binding issuer with the key ring of provider p
// (a.localhost or b.localhost, keyRingOf), as the local client API's POST
// /binding would sign.
func issuerOf(t *testing.T, p string) *binding.Issuer {
	t.Helper()
	return &binding.Issuer{Domains: []string{p}, Keys: keyRingOf(t, p)}
}

// newGroup returns c's member of a new group gid of which it is the only
// member (MLS only: the DS learns of it with create_group).
func (c *mimiClient) newGroup(t *testing.T, gid []byte) *mls.Member {
	t.Helper()
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: suite, GroupID: gid, Leaf: &c.kp.LeafNode,
		LeafKey: c.leafKey, Signer: c.signer})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// joinFromQueue has c, a client of user, wait for the Welcome that its
// provider queued for it (the group's first message for c) and join the
// group from it.
func (c *mimiClient) joinFromQueue(t *testing.T, user string) {
	t.Helper()
	welcome := fetchQueue(t, c, user, 0, 10)
	for deadline := time.Now().Add(30 * time.Second); len(welcome) == 0 && time.Now().Before(deadline); {
		welcome = fetchQueue(t, c, user, 0, 10)
	}
	if len(welcome) != 1 {
		t.Fatalf("%s's queue holds %d messages, want the Welcome", c.uri, len(welcome))
	}
	w, err := mls.DecodeMLSMessage(welcome[0].Message)
	if err != nil || w.WireFormat != mls.WireFormatWelcome {
		t.Fatalf("%s's message is not the Welcome: %v", c.uri, err)
	}
	if c.m, err = mls.JoinFromWelcome(w.Welcome, mls.WelcomeOptions{KeyPackage: c.kp, InitKey: c.initKey,
		LeafKey: c.leafKey, Signer: c.signer}); err != nil {
		t.Fatal(err)
	}
}

// hostGroupWith has c create a group on its provider and add bob, a
// client of another provider; c's Member moves to the epoch of the add.
// It returns the group's id.
func (c *mimiClient) hostGroupWith(t *testing.T, bob *mimiClient) []byte {
	t.Helper()
	gid := random32(t)[:16]
	m := c.newGroup(t, gid)
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, "create_group", c.sign(t, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: gid,
		LeafNode: c.kp.LeafNode, GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}}, 0))
	c.m = m
	res := c.commit(t, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: bob.kp})
	mustOK(t, "add_users of a client of another provider", c.sign(t, groupUpdate(moh.AddUsers, res), 0))
	c.m = res.Next
	return gid
}

// newMIMIClientAt makes client mimi://<provider>/d/<user>/<device>, whose
// binding issuer signs unless unbound.
func newMIMIClientAt(t *testing.T, issuer *binding.Issuer, provider, user, device string, unbound bool) *mimiClient {
	t.Helper()
	o := mlstest.Options{Issuer: issuer, BindingCapability: true}
	if unbound {
		o.Issuer = nil
	}
	c, err := mlstest.NewClient(suite, moh.ClientURI(provider, user, device), o)
	if err != nil {
		t.Fatal(err)
	}
	return &mimiClient{uri: c.Identity, signer: c.Signer, kp: c.KeyPackage, initKey: c.InitKey, leafKey: c.LeafKey}
}

// sign encodes body signed by c as its member's leaf (0 before it has
// one), timestamped at now plus skew.
func (c *mimiClient) sign(t *testing.T, body moh.RequestBody, skew time.Duration) []byte {
	t.Helper()
	var index uint32
	if c.m != nil {
		index = c.m.LeafIndex()
	}
	b, err := ds.SignRequest(suite, c.signer, body, ds.ClientSignature(index, time.Now().Add(skew)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// commit has c commit proposals; the receiver's member is unchanged.
func (c *mimiClient) commit(t *testing.T, props ...*mls.Proposal) *mls.CommitResult {
	t.Helper()
	res, err := c.m.Commit(props, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// groupUpdate is the request body of type typ carrying res.
func groupUpdate(typ moh.RequestType, res *mls.CommitResult) moh.RequestBody {
	gi := res.GroupInfo.GroupInfo
	body := moh.RequestBody{Type: typ, GroupUpdate: moh.MLSGroupUpdate{Commit: *res.Commit,
		PartialGroupInfo: moh.PartialGroupInfo{Extensions: gi.Extensions, Signature: gi.Signature}}}
	if res.Welcome != nil {
		body.WelcomePackages = []moh.WelcomePackage{{Welcome: *res.Welcome}}
	}
	return body
}

// follow has every client in cs apply an accepted commit.
func follow(t *testing.T, commit *mls.MLSMessage, cs ...*mimiClient) {
	t.Helper()
	for _, c := range cs {
		m, err := c.m.ApplyCommit(commit, nil)
		if err != nil {
			t.Fatalf("%s follows the commit: %v", c.uri, err)
		}
		c.m = m
	}
}

// mustEncode encodes v.
func mustEncode(t *testing.T, v wire.Marshaler) []byte {
	t.Helper()
	b, err := wire.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// postDS sends a DSRequest to a.localhost's path and decodes the answer.
func postDS(t *testing.T, path string, req []byte) (int, *moh.DSResponse) {
	t.Helper()
	resp, body := get(t, client(tls.VersionTLS13), http.MethodPost, "https://a.localhost:9443"+path, "application/octet-stream", req)
	var r moh.DSResponse
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil {
		t.Fatalf("%s: status %d, body is not a DSResponse: %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, &r
}

// mustOK sends a group operation that must be accepted.
func mustOK(t *testing.T, what string, req []byte) *moh.DSResponse {
	t.Helper()
	status, r := postDS(t, "/group_operation", req)
	if status != http.StatusOK || r.Type == moh.ResponseError {
		t.Fatalf("%s: %d %s %q", what, status, r.Error.Code, r.Error.Message)
	}
	return r
}

// mustRefuse sends a group operation that must be refused with status and
// code.
func mustRefuse(t *testing.T, what string, req []byte, status int, code moh.Code) {
	t.Helper()
	got, r := postDS(t, "/group_operation", req)
	if got != status || r.Type != moh.ResponseError || r.Error.Code != code {
		t.Fatalf("%s: %d %s %q, want %d %s", what, got, r.Error.Code, r.Error.Message, status, code)
	}
}

// TestGroupOperations runs a group on a.localhost's Delivery Service
// through Caddy: alice creates it and adds bob and carol, bob fetches
// welcome_info with his KeyPackage's key, bob updates, two
// commits race for one epoch (exactly one wins), carol's laptop joins
// externally with the GroupInfo the DS serves, a leaf without a binding,
// a tampered signature and a stale timestamp are refused, alice removes
// bob, and bob's next request is 404.
func TestGroupOperations(t *testing.T) {
	startCaddy(t)
	issuer := issuerOf(t, "a.localhost")
	alice := newMIMIClient(t, issuer, "alice", "phone", false)
	bob := newMIMIClient(t, issuer, "bob", "phone", false)
	carol := newMIMIClient(t, issuer, "carol", "phone", false)
	carolLaptop := newMIMIClient(t, issuer, "carol", "laptop", false)
	dave := newMIMIClient(t, issuer, "dave", "phone", true)

	anon, _ := wire.Marshal(&moh.DSRequest{Body: moh.RequestBody{Type: moh.RequestGroupID}})
	gid := mustOK(t, "request_group_id", anon).GroupID

	// alice creates the group.
	m := alice.newGroup(t, gid)
	gi, err := m.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	create := alice.sign(t, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: gid,
		LeafNode: alice.kp.LeafNode, GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}}, 0)
	alice.m = m
	mustOK(t, "create_group", create)
	mustRefuse(t, "create_group again", create, http.StatusConflict, moh.CodeGroupExists)

	// alice adds bob and carol.
	res := alice.commit(t, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: bob.kp}, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: carol.kp})
	mustOK(t, "add_users", alice.sign(t, groupUpdate(moh.AddUsers, res), 0))
	alice.m = res.Next
	for _, c := range []*mimiClient{bob, carol} {
		if c.m, err = mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: c.kp, InitKey: c.initKey,
			LeafKey: c.leafKey, Signer: c.signer}); err != nil {
			t.Fatal(err)
		}
	}

	// bob, holding only his Welcome, asks for the tree of epoch 1 with
	// his KeyPackage's key; a tampered signature is refused.
	ref, err := bob.kp.Ref()
	if err != nil {
		t.Fatal(err)
	}
	wi, err := ds.SignRequest(suite, bob.signer, moh.RequestBody{Type: moh.WelcomeInfo,
		WelcomeInfo: moh.WelcomeInfoRequest{GroupID: gid, Epoch: 1}}, ds.KeyPackageSignature(ref, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	wantTree := bob.m.State().Tree().RatchetTree()
	if status, r := postDS(t, "/welcome_information", wi); status != http.StatusOK || r.Type != moh.ResponseWelcomeInfo ||
		!bytes.Equal(r.RatchetTree, mustEncode(t, &wantTree)) {
		t.Fatalf("welcome_info: %d %s %q, or not bob's tree", status, r.Error.Code, r.Error.Message)
	}
	wi[len(wi)-1] ^= 1
	if status, r := postDS(t, "/welcome_information", wi); status != http.StatusUnauthorized || r.Error.Code != moh.CodeBadSignature {
		t.Fatalf("welcome_info with a tampered signature: %d %s", status, r.Error.Code)
	}

	// bob updates his leaf.
	res = bob.commit(t)
	mustOK(t, "update_client", bob.sign(t, groupUpdate(moh.UpdateClient, res), 0))
	bob.m = res.Next
	follow(t, res.Commit, alice, carol)

	// alice and carol race for the next epoch: exactly one wins.
	ra, rc := alice.commit(t), carol.commit(t)
	bodies := [][]byte{alice.sign(t, groupUpdate(moh.UpdateClient, ra), 0), carol.sign(t, groupUpdate(moh.UpdateClient, rc), 0)}
	statuses := make([]int, 2)
	codes := make([]moh.Code, 2)
	var wg sync.WaitGroup
	for i := range bodies {
		wg.Go(func() {
			var r *moh.DSResponse
			statuses[i], r = postDS(t, "/group_operation", bodies[i])
			codes[i] = r.Error.Code
		})
	}
	wg.Wait()
	switch {
	case statuses[0] == http.StatusOK && statuses[1] == http.StatusConflict:
		alice.m = ra.Next
		follow(t, ra.Commit, bob, carol)
	case statuses[1] == http.StatusOK && statuses[0] == http.StatusConflict:
		carol.m = rc.Next
		follow(t, rc.Commit, alice, bob)
	default:
		t.Fatalf("racing commits answered %v %v, want one 200 and one 409", statuses, codes)
	}

	// carol's laptop joins externally with the GroupInfo and tree that
	// alice fetches from the DS.
	status, info := postDS(t, "/external_commit_information", alice.sign(t, moh.RequestBody{Type: moh.ExternalCommitInfo,
		ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}, 0))
	if status != http.StatusOK || info.Type != moh.ResponseExternalCommitInfo {
		t.Fatalf("external_commit_info: %d %s %q", status, info.Error.Code, info.Error.Message)
	}
	gim, err := mls.DecodeMLSMessage(info.GroupInfo)
	if err != nil {
		t.Fatal(err)
	}
	var rt mls.RatchetTree
	if err := wire.Unmarshal(info.RatchetTree, &rt, "ratchet tree"); err != nil {
		t.Fatal(err)
	}
	ext, laptop, err := mls.JoinExternal(gim.GroupInfo, mls.ExternalJoinOptions{Leaf: carolLaptop.kp.LeafNode,
		Signer: carolLaptop.signer, RatchetTree: rt})
	if err != nil {
		t.Fatalf("joining from the served GroupInfo: %v", err)
	}
	lgi, err := laptop.GroupInfo()
	if err != nil {
		t.Fatal(err)
	}
	join, _ := wire.Marshal(&moh.DSRequest{Body: moh.RequestBody{Type: moh.ExternalJoin, GroupUpdate: moh.MLSGroupUpdate{
		Commit: *ext, PartialGroupInfo: moh.PartialGroupInfo{Extensions: lgi.Extensions, Signature: lgi.Signature}}}})
	mustOK(t, "external_join", join)
	carolLaptop.m = laptop
	follow(t, ext, alice, bob, carol)

	// Refusals, each over HTTP with its status.
	mustRefuse(t, "a leaf without a binding", alice.sign(t,
		groupUpdate(moh.AddUsers, alice.commit(t, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: dave.kp})), 0),
		http.StatusForbidden, moh.CodeForbidden)
	tampered := alice.sign(t, groupUpdate(moh.UpdateClient, alice.commit(t)), 0)
	tampered[len(tampered)-1] ^= 1
	mustRefuse(t, "a tampered client signature", tampered, http.StatusUnauthorized, moh.CodeBadSignature)
	mustRefuse(t, "a stale timestamp", alice.sign(t, groupUpdate(moh.UpdateClient, alice.commit(t)), -10*time.Minute),
		http.StatusUnauthorized, moh.CodeStaleTimestamp)
	app, err := alice.m.Protect([]byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// A message of the current epoch is accepted and queued for the
	// others (their queues are read through mimi_local in the client
	// tests); one protected in a past epoch is stale.
	mustOK(t, "send_message", alice.sign(t, moh.RequestBody{Type: moh.SendMessage, Message: *app}, 0))
	// A second message of this epoch, not sent before the epoch ends.
	unsent, err := alice.m.Protect([]byte("too late"), nil)
	if err != nil {
		t.Fatal(err)
	}

	// alice removes bob.
	oldBob := bob.m
	res = alice.commit(t, &mls.Proposal{Type: mls.ProposalRemove, Removed: bob.m.LeafIndex()})
	mustOK(t, "remove_users", alice.sign(t, groupUpdate(moh.RemoveUsers, res), 0))
	alice.m = res.Next
	follow(t, res.Commit, carol, carolLaptop)

	// bob's next request is refused as a non-member's: 404.
	bob.m = oldBob
	mustRefuse(t, "the removed member's commit", bob.sign(t, groupUpdate(moh.UpdateClient, bob.commit(t)), 0),
		http.StatusNotFound, moh.CodeNotFound)
	status, r := postDS(t, "/external_commit_information", bob.sign(t, moh.RequestBody{Type: moh.ExternalCommitInfo,
		ExternalCommitInfo: moh.ExternalCommitInfoRequest{GroupID: gid}}, 0))
	if status != http.StatusNotFound || r.Error.Code != moh.CodeNotFound {
		t.Fatalf("the removed member's external_commit_info: %d %s", status, r.Error.Code)
	}

	// alice's message of the epoch before the removal, never delivered,
	// is stale now; the one the hub delivered in that epoch, sent again
	// (its answer lost, say), is answered ok and delivered to no one.
	mustRefuse(t, "a message of a past epoch", alice.sign(t, moh.RequestBody{Type: moh.SendMessage, Message: *unsent}, 0),
		http.StatusConflict, moh.CodeStaleEpoch)
	mustOK(t, "a delivered message of a past epoch sent again", alice.sign(t, moh.RequestBody{Type: moh.SendMessage, Message: *app}, 0))

	// The group goes on without him.
	res = carol.commit(t)
	mustOK(t, "update_client after the removal", carol.sign(t, groupUpdate(moh.UpdateClient, res), 0))
}
