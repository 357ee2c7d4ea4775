package caddymodule

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// Loopback addresses of the Caddy of TestOutboxBoundsBeforeAppStart: its
// admin endpoint, a legacy backend that nothing serves (the messages for
// it stay in the outbox), and the first port of its sites, one per load
// (Caddy closes a stopped server's listener in the background, and a
// connection to a port bound again at once may reach the closing one).
const (
	holdAdmin     = "127.0.0.1:31400"
	holdBackend   = "127.0.0.1:31599"
	holdFirstPort = 31401
	holdLoads     = 150
)

// enlisted returns the gateways enlisted with the app.
func (a *App) enlisted() []*Gateway {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*Gateway(nil), a.gateways...)
}

// rewriteTransport sends every request over plain HTTP to addr, the
// site of a gateway that trusts the loopback as a TLS proxy.
type rewriteTransport struct{ addr string }

func (rt rewriteTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host = "http", rt.addr
	return http.DefaultTransport.RoundTrip(r)
}

// TestOutboxBoundsBeforeAppStart starts a real Caddy with a gateway whose
// federation bounds a destination's outbox backlog to one message and
// whose local clients' messages go to a legacy backend that does not
// answer. Caddy starts a config's apps in no set order: when it started
// the http app, but not yet the mimi app, the gateway already serves
// requests, and its fanouts must be held to the config's bound, not to
// the store's default one (with a configured bound above the default,
// the messages of a backlog between the two were dropped until the mimi
// app started).
func TestOutboxBoundsBeforeAppStart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	config := func(site string) []byte {
		t.Helper()
		gw := map[string]any{"handler": "mimi", "providers": []string{localProvider}, "ds_domain": "ds.example.com",
			"data_dir": dir, "trusted_tls_proxies": []string{"127.0.0.1"},
			"federation": map[string]any{"max_backlog_messages": 1},
			"delivery":   map[string]any{"target": "backend", "url": "http://" + holdBackend + "/mimi", "key": strings.Repeat("k", 32)}}
		cfg, err := json.Marshal(map[string]any{
			"admin":   map[string]any{"listen": holdAdmin, "config": map[string]any{"persist": false}},
			"storage": map[string]any{"module": "file_system", "root": filepath.Join(tmp, "storage")},
			"apps": map[string]any{
				"hold_mimi_test": map[string]any{},
				"http": map[string]any{"servers": map[string]any{"site": map[string]any{"listen": []string{site},
					"automatic_https": map[string]any{"disable": true}, "routes": []any{map[string]any{"handle": []any{gw}}}}}},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
		holdGate.disarm()
	})
	for i := range holdLoads {
		holdSite := "127.0.0.1:" + strconv.Itoa(holdFirstPort+i)
		reached, release := holdGate.arm()
		loaded := make(chan error, 1)
		go func() { loaded <- caddy.Load(config(holdSite), true) }()
		var hold gateReport
		select {
		case hold = <-reached:
		case err := <-loaded:
			t.Fatalf("loading the config: %v", err)
		}
		serving := false
		if !hold.started {
			// The http app has started when its site accepts
			// connections (nothing listens there otherwise).
			if c, err := net.Dial("tcp", holdSite); err == nil {
				c.Close()
				serving = true
			}
		}
		if serving {
			func() {
				defer close(release)
				gws := hold.mimi.enlisted()
				if len(gws) != 1 {
					t.Fatalf("the mimi app has %d gateways, want 1", len(gws))
				}
				site := &peerSite{g: gws[0], addr: holdSite}
				site.clientOnce.Do(func() { site.cl = &http.Client{Transport: rewriteTransport{addr: holdSite}} })
				alice, bob, carol := newPeerMember(t, site, "alice"), newPeerMember(t, site, "bob"), newPeerMember(t, site, "carol")
				createGroupAt(t, site, alice, []byte("bounds before start"))
				addAt(t, site, alice, false, bob)
				addAt(t, site, alice, false, carol)
				b, err := gws[0].svc.Store().OutboxDestinationBacklog(t.Context(), store.BackendDestination)
				if err != nil {
					t.Fatal(err)
				}
				if b.Messages > 1 || b.Dropped.BacklogFull == 0 {
					t.Errorf("before the mimi app started, the backend's backlog holds %d messages (%d dropped as full), want at most 1, the configured bound",
						b.Messages, b.Dropped.BacklogFull)
				}
			}()
		} else {
			close(release)
		}
		if err := <-loaded; err != nil {
			t.Fatalf("loading the config: %v", err)
		}
		if err := caddy.Stop(); err != nil {
			t.Fatalf("stopping Caddy: %v", err)
		}
		if serving {
			t.Logf("the http app started before the mimi app in load %d", i+1)
			return
		}
	}
	t.Fatalf("Caddy never started the http app before the mimi app in %d loads", holdLoads)
}
