package binding

import (
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

// BenchmarkCheck measures a binding check whose key needs no fetch: the
// local provider's key, and a remote provider's key already in the
// fetcher's cache (fetched once over TLS before the timer starts), for a
// leaf node and for a leaf of a group's tree. Ed25519 verification
// dominates.
func BenchmarkCheck(b *testing.B) {
	s := newRemoteSetup(b)
	notAfter := s.now.Add(time.Hour)
	alice := newClient(b, aliceRemote, bind(b, s.issA, notAfter))
	bob := newClient(b, bobRemote, bind(b, s.issB, notAfter))
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: suite, GroupID: []byte("bench"),
		Leaf: bob.leaf, LeafKey: bob.encPriv, Signer: bob.signer})
	if err != nil {
		b.Fatal(err)
	}
	view, _ := m.State().Member(0)
	if _, err := s.checker.CheckLeafNode(b.Context(), bob.leaf, s.now, provider.LookupOptions{}); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		check func() error
	}{
		{"local", func() error {
			_, err := s.checker.CheckLeafNode(b.Context(), alice.leaf, s.now, provider.LookupOptions{})
			return err
		}},
		{"remote cached", func() error {
			_, err := s.checker.CheckLeafNode(b.Context(), bob.leaf, s.now, provider.LookupOptions{})
			return err
		}},
		{"remote cached view", func() error {
			_, err := s.checker.CheckLeaf(b.Context(), view, s.now, provider.LookupOptions{})
			return err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.check(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	if n := s.peer.fetches.Load(); n != 1 {
		b.Fatalf("%d fetches, want 1", n)
	}
}
