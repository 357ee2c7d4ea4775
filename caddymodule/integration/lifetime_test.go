package integration

import (
	"net/http"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestKeyPackageMaxLifetime checks a.localhost's max_key_package_lifetime
// (120d) through Caddy: its local client API, which takes the bound of
// the gateway of its data directory, refuses to publish a KeyPackage
// whose lifetime (not_after - not_before) is a second longer, 400
// malformed, and publishes one exactly that long; its Delivery Service
// refuses a commit that adds the longer one, 400 invalid_mls, keeping
// the group's epoch, and then accepts one adding the other.
func TestKeyPackageMaxLifetime(t *testing.T) {
	startCaddy(t)
	issuer := issuerOf(t, "a.localhost")
	const limit = 120 * 24 * 3600
	nb := uint64(time.Now().Add(-time.Hour).Unix())
	newClient := func(device string, span uint64) *mimiClient {
		t.Helper()
		c, err := mlstest.NewClient(suite, moh.ClientURI("a.localhost", "lifetime", device), mlstest.Options{
			Issuer: issuer, BindingCapability: true, Lifetime: mls.Lifetime{NotBefore: nb, NotAfter: nb + span}})
		if err != nil {
			t.Fatal(err)
		}
		return &mimiClient{uri: c.Identity, signer: c.Signer, kp: c.KeyPackage, initKey: c.InitKey, leafKey: c.LeafKey}
	}
	atLimit, over := newClient("at-limit", limit), newClient("over", limit+1)

	t.Run("publish", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			c      *mimiClient
			status int
		}{
			{"at the limit", atLimit, http.StatusOK},
			{"one second over", over, http.StatusBadRequest},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, body := postLocal(t, "a.localhost", "lifetime", "/key_packages", &localapi.PublishRequest{
					ClientURI: []byte(tc.c.uri), KeyPackages: []localapi.KeyPackageEntry{{KeyPackage: mustEncode(t, tc.c.kp)}}})
				if status != tc.status {
					t.Fatalf("publish: %d %x, want %d", status, body, tc.status)
				}
				if status == http.StatusOK {
					return
				}
				var r moh.DSResponse
				if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil || r.Type != moh.ResponseError || r.Error.Code != moh.CodeMalformed {
					t.Fatalf("publish refused with %x, want malformed", body)
				}
				t.Logf("%s", r.Error.Message)
			})
		}
	})

	t.Run("add", func(t *testing.T) {
		alice := newMIMIClient(t, issuer, "lifetime-alice", "phone", false)
		gid := random32(t)[:16]
		m := alice.newGroup(t, gid)
		gi, err := m.GroupInfo()
		if err != nil {
			t.Fatal(err)
		}
		mustOK(t, "create_group", alice.sign(t, moh.RequestBody{Type: moh.CreateGroup, CreateGroup: moh.CreateGroupRequest{GroupID: gid,
			LeafNode: alice.kp.LeafNode, GroupInfo: mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatGroupInfo, GroupInfo: gi}}}, 0))
		alice.m = m
		res := alice.commit(t, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: over.kp})
		mustRefuse(t, "add_users of a KeyPackage a second over the limit", alice.sign(t, groupUpdate(moh.AddUsers, res), 0),
			http.StatusBadRequest, moh.CodeInvalidMLS)
		// The refusal kept epoch 0: a commit of it is accepted.
		res = alice.commit(t, &mls.Proposal{Type: mls.ProposalAdd, KeyPackage: atLimit.kp})
		mustOK(t, "add_users of a KeyPackage at the limit", alice.sign(t, groupUpdate(moh.AddUsers, res), 0))
	})
}
