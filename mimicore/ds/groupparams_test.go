package ds

import (
	"fmt"
	"slices"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// TestCreateGroupLeafParameters checks that create_group refuses, with
// invalid_mls and nothing stored, a creator's leaf whose capabilities lack
// the group's cipher suite or protocol version (RFC 9420 §7.3): OpenMLS
// joiners refuse a tree holding such a leaf, so no one could join the
// group the hub would host.
func TestCreateGroupLeafParameters(t *testing.T) {
	h := newHarness(t)
	for i, tc := range []struct {
		name string
		edit func(*mls.LeafNode)
		ok   bool
	}{
		{"suite and version listed", nil, true},
		{"suite missing", func(l *mls.LeafNode) { l.Capabilities.CipherSuites = []mls.CipherSuite{mls.P256AES128GCMSHA256P256} }, false},
		{"version missing", func(l *mls.LeafNode) { l.Capabilities.Versions = []mls.ProtocolVersion{mls.MLS10 + 1} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			creator := h.newTClientEdit(t, "creator", fmt.Sprint("device", i), false, tc.edit)
			gid := []byte("group of " + tc.name)
			_, err := h.do(t, createBody(t, creator, gid))
			switch {
			case tc.ok && err != nil:
				t.Fatalf("answer %v, want ok", err)
			case !tc.ok && codeOf(err) != moh.CodeInvalidMLS:
				t.Fatalf("answer %v, want invalid_mls", err)
			case !tc.ok && h.snapshot(t, gid).exists:
				t.Fatal("the refused group was stored")
			}
		})
	}
}

// TestPartialGroupInfoExtensionPlace checks that a commit whose
// PartialGroupInfo carries an RFC 9420 extension that §17.3 does not allow
// in a GroupInfo is refused invalid_mls and changes nothing: OpenMLS
// clients refuse such a GroupInfo, so none could join from the one
// external_commit_info would serve. external_pub is allowed.
func TestPartialGroupInfoExtensionPlace(t *testing.T) {
	h := newHarness(t)
	alice := h.newTClient(t, "alice", "phone", false)
	gid := []byte("partial group info group")
	h.mustDo(t, "create_group", createBody(t, alice, gid))
	for _, tc := range []struct {
		name string
		typ  mls.ExtensionType
		ok   bool
	}{
		{"application_id", mls.ExtApplicationID, false},
		{"required_capabilities", mls.ExtRequiredCapabilities, false},
		{"external_senders", mls.ExtExternalSenders, false},
		{"external_pub", mls.ExtExternalPub, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := commit(t, alice.m, nil, nil, nil)
			resignGroupInfo(t, res, alice, func(gi *mls.GroupInfo) {
				withoutTree(gi)
				gi.Extensions = slices.DeleteFunc(gi.Extensions, func(e mls.Extension) bool { return e.Type == tc.typ })
				gi.Extensions = append(gi.Extensions, mls.Extension{Type: tc.typ, Data: []byte{0}})
			})
			before := h.snapshot(t, gid)
			_, err := h.do(t, commitBody(t, moh.UpdateClient, alice, alice.m, res))
			switch {
			case tc.ok && err != nil:
				t.Fatalf("answer %v, want ok", err)
			case tc.ok:
				adopt(t, res, alice)
			case codeOf(err) != moh.CodeInvalidMLS:
				t.Fatalf("answer %v, want invalid_mls", err)
			case !h.snapshot(t, gid).equal(before):
				t.Fatal("the refusal changed the stored group")
			}
		})
	}
}
