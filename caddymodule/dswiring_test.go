package caddymodule

import (
	"slices"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/binding"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestDSWiring checks that a provisioned gateway's Delivery Service runs on
// the service's store with the gateway's provider domains, and checks
// client bindings with the provider's own key ring and the key fetcher
// unless unchecked_client_bindings is set.
func TestDSWiring(t *testing.T) {
	for _, unchecked := range []bool{false, true} {
		name := "checked"
		if unchecked {
			name = "unchecked"
		}
		t.Run(name, func(t *testing.T) {
			g := provisioned(t, &Gateway{Providers: []string{"example.com", "example.net"}, DSDomain: "ds.example.com",
				UncheckedClientBindings: unchecked, QueueMaxMessages: 77, QueueMaxBytes: 1 << 20})
			d := g.ds
			if d.Store == nil || d.Groups == nil || d.Seen == nil {
				t.Fatalf("DS without its store: %+v", d)
			}
			if !slices.Equal(d.Providers, g.Providers) {
				t.Fatalf("DS providers %v, gateway %v", d.Providers, g.Providers)
			}
			chk, ok := d.Bindings.(*binding.Checker)
			if !ok {
				t.Fatalf("bindings checked by %T", d.Bindings)
			}
			if chk.Unchecked != unchecked || chk.Local == nil || chk.Remote == nil || !slices.Equal(chk.Domains, g.Providers) {
				t.Fatalf("binding checker %+v, want unchecked=%t with local and remote keys", chk, unchecked)
			}
			if d.QueueLimits != (store.QueueLimits{MaxMessages: 77, MaxBytes: 1 << 20}) {
				t.Fatalf("DS queue limits %+v, want the gateway's", d.QueueLimits)
			}
			if d.Logger == nil {
				t.Fatal("the DS has no logger for what its deliveries could not do")
			}
		})
	}
}
