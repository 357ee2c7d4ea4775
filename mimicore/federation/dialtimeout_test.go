package federation

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// keyOf is a Signer of one key.
type keyOf struct{ k *provider.PrivateKey }

func (s keyOf) Current(time.Time) (*provider.PrivateKey, error) { return s.k, nil }

// blackhole returns a loopback address, on a port the kernel chose, whose
// dials hang: a socket that listens with a full accept queue, whose kernel
// drops further SYNs.
func blackhole(t *testing.T) (string, int) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := sa.(*syscall.SockaddrInet4).Port
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// Fill the accept queue; never accepted.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i > 8 {
			t.Fatal("the accept queue never filled")
		}
	}
	return addr, port
}

// TestSenderHaltsOnDialTimeout has 20 groups wait for a destination
// whose DS, discovered, drops the packets of new connections (a full
// accept queue): each post's dial times out, which the HTTP client
// reports as its own deadline, not a dial error. The destination cannot
// be reached: the pass halts after the first attempt rather than trying
// each group in turn, each for the whole timeout.
func TestSenderHaltsOnDialTimeout(t *testing.T) {
	hole, holePort := blackhole(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ds.example.com")
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f := provider.NewKeyFetcher(provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{holePort, l.Addr().(*net.TCPAddr).Port},
		RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, Timeout: time.Second,
		Resolve: map[string]string{"example.com": l.Addr().String(), "ds.example.com": hole}})
	t.Cleanup(f.Close)
	k, err := provider.GenerateKey(moh.SchemeEd25519, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	st := openOutbox(t)
	for g := range 20 {
		if _, err := st.OutboxAdd(t.Context(), store.OutboxWrite{Messages: []store.OutboxMessage{{Sender: "a.example",
			Destination: "example.com", GroupID: fmt.Appendf(nil, "g%d", g), Recipients: []string{"mimi://example.com/d/u/d"},
			Message: []byte("m")}}}); err != nil {
			t.Fatal(err)
		}
	}
	s := &Sender{Outbox: st, Parallel: 1, MinBackoff: time.Hour, MaxBackoff: 2 * time.Hour,
		Transport: Clients{Keys: keyOf{k}, Fetcher: func() *provider.KeyFetcher { return f }}}
	runSender(t, s)
	waitFor(t, "the pass's backoff noted", func() bool {
		st := s.Status()
		return len(st) == 1 && !st[0].NextAttempt.IsZero()
	})
	if n := s.Stats().Attempts; n != 1 {
		t.Fatalf("%d attempts in the pass, want 1", n)
	}
}
