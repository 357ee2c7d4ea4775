package ds

import (
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestRelayCarriesLargestAnswer ties provider.MaxRelayAnswer, the largest
// answer a follower relays whole, to the largest answer this Delivery
// Service gives on the endpoints relayed whole (group_operation,
// welcome_information, external_commit_information): an
// external_commit_info answer with the largest GroupInfo kept and a
// ratchet tree as large as its <V> vector allows. A follower whose cap is
// lower answers its clients 503 where the hub's own clients succeed.
func TestRelayCarriesLargestAnswer(t *testing.T) {
	// The encoder's framing, measured on a real answer: the GroupInfo
	// and the tree (its vector length included) follow the 3-byte head.
	rt := mls.RatchetTree{nil}
	tree, err := wire.Marshal(&rt)
	if err != nil {
		t.Fatal(err)
	}
	gi := []byte{0, 1, 0, 4}
	enc, err := wire.Marshal(&moh.DSResponse{Type: moh.ResponseExternalCommitInfo, GroupInfo: gi, RatchetTree: tree})
	if err != nil {
		t.Fatal(err)
	}
	head := len(enc) - len(gi) - len(tree)
	// The longest <V> vector: its length's encoding, then its body.
	var b cryptobyte.Builder
	wire.AddVarint(&b, wire.MaxVarint)
	maxTree := len(b.BytesOrPanic()) + wire.MaxVarint

	if MaxGroupInfoSize > store.MaxGroupInfoSize {
		t.Fatalf("the DS keeps GroupInfos of %d bytes, the store of %d", MaxGroupInfoSize, store.MaxGroupInfoSize)
	}
	for _, tc := range []struct {
		name string
		size int
	}{
		{"external_commit_info", head + MaxGroupInfoSize + maxTree},
		{"welcome_info", head + maxTree},
		{"error", head + 2 + 2 + moh.MaxMessageLen},
		{"group_id", head + 2 + moh.MaxGroupIDLen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.size > provider.MaxRelayAnswer {
				t.Fatalf("the largest %s answer takes %d bytes, more than a follower relays (%d)", tc.name, tc.size, provider.MaxRelayAnswer)
			}
		})
	}
}
