package federation

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// freezingProxy forwards TCP from addr to target until frozen: then the
// connections it carries go silent both ways (what it reads is dropped),
// and the connections it accepts after are never answered.
type freezingProxy struct {
	frozen atomic.Bool
}

func startFreezingProxy(t *testing.T, addr, target string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &freezingProxy{}
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !p.frozen.Load() {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			if p.frozen.Load() {
				go func() { _, _ = io.Copy(io.Discard, c) }()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { u.Close() })
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	return p
}

// TestSenderHaltsOnDeadConnection has 20 groups wait for a destination
// reached over an HTTP/2 connection, pooled by an earlier request, that
// then goes silent both ways (a proxy on loopback that stops forwarding,
// and never answers a new connection). Each request sent on it used to
// time out in turn, as a group's timeout does (20 attempts, 20 s of the
// pass with a 1 s timeout): the connection's unanswered PING now fails
// the request as a lost connection, which halts the pass after one
// attempt. A group whose answer is slow on a live connection (its peer
// answers the PING) still times out on its own and halts nothing: all 20
// groups are tried.
func TestSenderHaltsOnDeadConnection(t *testing.T) {
	for _, tc := range []struct {
		name              string
		proxyPort, dsPort int
		freeze            bool
		attempts          uint64
	}{
		{"dead connection", 31801, 31802, true, 1},
		{"one slow group, live connection", 31803, 31804, false, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", tc.dsPort))
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					fmt.Fprint(w, "example.com") // discovery: the DS is here too
					return
				}
				body, _ := io.ReadAll(r.Body)
				if bytes.Contains(body, []byte("slow-group")) {
					<-r.Context().Done() // answers after the client gave up
					return
				}
				w.WriteHeader(http.StatusServiceUnavailable)
			}))
			srv.Listener.Close()
			srv.Listener = l
			srv.EnableHTTP2 = true
			srv.StartTLS()
			t.Cleanup(srv.Close)
			proxy := startFreezingProxy(t, fmt.Sprintf("127.0.0.1:%d", tc.proxyPort), l.Addr().String())
			f := provider.NewKeyFetcher(provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{tc.proxyPort},
				RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, Timeout: time.Second,
				Resolve: map[string]string{"example.com": fmt.Sprintf("127.0.0.1:%d", tc.proxyPort)}})
			t.Cleanup(f.Close)
			k, err := provider.GenerateKey(moh.SchemeEd25519, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			tr := Clients{Keys: keyOf{k}, Fetcher: func() *provider.KeyFetcher { return f }}
			// Discovery and a first post pool the connection.
			if a, err := tr.Send(t.Context(), "a.example", "example.com", moh.DeliverMessage, []byte("x")); a == nil || a.Status != http.StatusServiceUnavailable {
				t.Fatalf("the first post: %+v, %v; want the 503 answer", a, err)
			}
			st := openOutbox(t)
			for g := range 20 {
				group := fmt.Appendf(nil, "g%d", g)
				if g == 0 {
					group = []byte("slow-group")
				}
				if _, err := st.OutboxAdd(t.Context(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example",
					Destination: "example.com", GroupID: group, Recipients: []string{"mimi://example.com/d/u/d"},
					Message: []byte("m")}}}); err != nil {
					t.Fatal(err)
				}
			}
			proxy.frozen.Store(tc.freeze)
			s := &Sender{Outbox: st, Parallel: 1, MinBackoff: time.Hour, MaxBackoff: 2 * time.Hour, Transport: tr}
			runSender(t, s)
			waitFor(t, "the pass's end", func() bool {
				s.mu.Lock()
				defer s.mu.Unlock()
				d := s.status["example.com"]
				return d != nil && !d.NextAttempt.IsZero() && d.Failures >= int(tc.attempts)
			})
			if n := s.Stats().Attempts; n != tc.attempts {
				t.Fatalf("%d attempts in the pass, want %d", n, tc.attempts)
			}
		})
	}
}
