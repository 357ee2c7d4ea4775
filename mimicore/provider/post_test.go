package provider

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestPostDiscoversOnce checks that requests to one recipient, posted and
// relayed, share one discovery (cached for AuthorityTTL) rather than each
// reading the recipient's discovery endpoint first.
func TestPostDiscoversOnce(t *testing.T) {
	var discoveries, posts atomic.Int32
	mux := http.NewServeMux()
	var srv *httptest.Server
	mux.HandleFunc("/.well-known/mimi/ds-domain", func(w http.ResponseWriter, r *http.Request) {
		discoveries.Add(1)
		io.WriteString(w, "ds.example.com:"+srv.URL[strings.LastIndexByte(srv.URL, ':')+1:]+"\n")
	})
	answer, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseOK})
	for _, path := range []string{"/connection_key_packages", "/group_operation"} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			posts.Add(1)
			w.Write(answer)
		})
	}
	srv = httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	f := NewKeyFetcher(FetchPolicy{
		AllowPrivate: true, AllowedPorts: []int{srv.Listener.Addr().(*net.TCPAddr).Port},
		RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
		Resolve: map[string]string{"peer.example.com": addr, "ds.example.com": addr},
	})
	t.Cleanup(f.Close)
	c := &Client{Sender: "a.example.com", Fetcher: f}
	for range 3 {
		if _, err := c.Post(t.Context(), "peer.example.com", moh.ConnectionKeyPackages, []byte{0}); err != nil {
			t.Fatal(err)
		}
		resp, err := f.RelayStream(t.Context(), "peer.example.com", "/group_operation", strings.NewReader("x"), 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if posts.Load() != 6 || discoveries.Load() != 1 {
		t.Fatalf("%d requests made %d discoveries, want 6 and 1", posts.Load(), discoveries.Load())
	}
}
