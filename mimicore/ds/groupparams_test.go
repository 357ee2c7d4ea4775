package ds

import (
	"fmt"
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
