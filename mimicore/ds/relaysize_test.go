package ds

import (
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestRelayCarriesLargestAnswer ties provider.MaxRelayAnswer, the largest
// answer a follower holds, to the answers of /group_operation, the
// endpoint relayed whole: an error with the longest message, and a group
// id. (welcome_info and external_commit_info answers, which carry a whole
// ratchet tree, are streamed by the follower, never held.)
func TestRelayCarriesLargestAnswer(t *testing.T) {
	enc, err := wire.Marshal(&moh.DSResponse{Type: moh.ResponseOK})
	if err != nil {
		t.Fatal(err)
	}
	head := len(enc)
	for _, tc := range []struct {
		name string
		size int
	}{
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
