package federation

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// freezingProxy forwards TCP from a loopback port the kernel chose to
// target until frozen: then the connections it carries go silent both
// ways (what it reads is dropped), and the connections it accepts after
// are never answered.
type freezingProxy struct {
	frozen atomic.Bool
	port   int

	mu    sync.Mutex
	conns []net.Conn // closed with the listener when the test ends
	done  bool
}

// track keeps c to close at the end of the test, or closes it at once
// when the test has ended; it reports whether c may be used.
func (p *freezingProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func startFreezingProxy(t *testing.T, target string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezingProxy{port: ln.Addr().(*net.TCPAddr).Port}
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		p.done = true
		for _, c := range p.conns {
			c.Close()
		}
	})
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
			if !p.track(c) {
				return
			}
			if p.frozen.Load() {
				go func() { _, _ = io.Copy(io.Discard, c) }()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(u) {
				return
			}
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
		name     string
		freeze   bool
		attempts uint64
	}{
		{"dead connection", true, 1},
		{"one slow group, live connection", false, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
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
			proxy := startFreezingProxy(t, l.Addr().String())
			f := provider.NewKeyFetcher(provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{proxy.port},
				RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, Timeout: time.Second,
				Resolve: map[string]string{"example.com": fmt.Sprintf("127.0.0.1:%d", proxy.port)}})
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
