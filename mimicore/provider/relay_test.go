package provider

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestRetryAfterSeconds checks which Retry-After values of a hub's answer
// a relay passes on: a delay in whole seconds of at most nine digits, not
// an HTTP date, nothing else.
func TestRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"seconds", "120", "120"},
		{"zero", "0", "0"},
		{"nine digits", "999999999", "999999999"},
		{"empty", "", ""},
		{"ten digits", "1000000000", ""},
		{"an HTTP date", "Wed, 21 Oct 2015 07:28:00 GMT", ""},
		{"negative", "-1", ""},
		{"with a header after it", "1\r\nSet-Cookie: x", ""},
		{"spaces", " 5", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RetryAfterSeconds(tc.in); got != tc.want {
				t.Fatalf("RetryAfterSeconds(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// relayHub starts a TLS server standing in for a group's hub at
// hub.example.com, answering /group_operation with handle, and returns a
// KeyFetcher of policy that reaches it.
func relayHub(t *testing.T, policy FetchPolicy, handle http.HandlerFunc) *KeyFetcher {
	t.Helper()
	mux := http.NewServeMux()
	var srv *httptest.Server
	mux.HandleFunc("/.well-known/mimi/ds-domain", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ds.example.com:"+srv.URL[strings.LastIndexByte(srv.URL, ':')+1:]+"\n")
	})
	mux.HandleFunc("/group_operation", handle)
	srv = httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	policy.AllowPrivate = true
	policy.AllowedPorts = []int{srv.Listener.Addr().(*net.TCPAddr).Port}
	policy.RootCAs = srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	policy.Resolve = map[string]string{"hub.example.com": addr, "ds.example.com": addr}
	f := NewKeyFetcher(policy)
	t.Cleanup(f.Close)
	return f
}

// primeRelay relays "prime" to the hub of f, which answers it at once,
// until it is answered (up to 30 s, only against a hang), so that the
// discovery is cached and a connection to the hub is open: the relayed
// request that follows neither discovers nor dials, which f's short
// Timeout would bound however slow the machine is.
func primeRelay(t *testing.T, f *KeyFetcher) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ans, err := f.Relay(t.Context(), "hub.example.com", "/group_operation", []byte("prime"))
		if err == nil && ans.Status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("priming the relay for 30 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// primed answers a request of primeRelay at once, and reports whether r
// was one; it reads r's body.
func primed(w http.ResponseWriter, r *http.Request, answer []byte) bool {
	body, err := io.ReadAll(r.Body)
	if err == nil && string(body) == "prime" {
		w.Write(answer)
		return true
	}
	return false
}

// TestRelayDeadline checks what bounds a relayed request: not the
// fetcher's Timeout for one key fetch (a hub that takes longer to store a
// commit must not have its answer dropped after the commit is stored),
// but RelayTimeout and the client's request context.
func TestRelayDeadline(t *testing.T) {
	const short = 100 * time.Millisecond
	answer, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseOK})

	t.Run("a hub slower than Timeout is waited for", func(t *testing.T) {
		// Failed discoveries are not cached: primeRelay tries again.
		f := relayHub(t, FetchPolicy{Timeout: short, MinInterval: time.Millisecond}, func(w http.ResponseWriter, r *http.Request) {
			if primed(w, r, answer) {
				return
			}
			// The commit takes three times as long as Timeout.
			select {
			case <-time.After(3 * short):
			case <-r.Context().Done():
				return
			}
			w.Write(answer)
		})
		primeRelay(t, f)
		ans, err := f.Relay(t.Context(), "hub.example.com", "/group_operation", []byte{1})
		if err != nil {
			t.Fatalf("relaying to a hub that answers after Timeout: %v", err)
		}
		if ans.Status != http.StatusOK || !bytes.Equal(ans.Body, answer) {
			t.Fatalf("relayed answer %d %x, want 200 %x", ans.Status, ans.Body, answer)
		}
	})

	t.Run("RelayTimeout bounds it", func(t *testing.T) {
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		f := relayHub(t, FetchPolicy{Timeout: short, RelayTimeout: 2 * short}, func(w http.ResponseWriter, r *http.Request) {
			select { // never answers
			case <-stop:
			case <-r.Context().Done():
			}
		})
		if ans, err := f.Relay(t.Context(), "hub.example.com", "/group_operation", []byte{1}); err == nil {
			t.Fatalf("relaying to a hub that never answers gave %d, want an error", ans.Status)
		}
	})

	t.Run("the client's context bounds it", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		f := relayHub(t, FetchPolicy{}, func(w http.ResponseWriter, r *http.Request) {
			cancel() // the client gives up while the hub works
			select {
			case <-stop:
			case <-r.Context().Done():
			}
		})
		_, err := f.Relay(ctx, "hub.example.com", "/group_operation", []byte{1})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("relaying for a client that went away: %v, want context.Canceled", err)
		}
	})
}

// TestRelayLargeAnswer: Relay, which holds the answer, refuses one over
// MaxRelayAnswer, and RelayStream, by which a follower relays the answers
// that carry a ratchet tree (welcome_info, external_commit_info), passes
// on a larger one, here 16 MiB + 1 KiB, whole.
func TestRelayLargeAnswer(t *testing.T) {
	answer := bytes.Repeat([]byte{0xa5}, 16<<20+1<<10)
	f := relayHub(t, FetchPolicy{}, func(w http.ResponseWriter, r *http.Request) {
		w.Write(answer)
	})
	if ans, err := f.Relay(t.Context(), "hub.example.com", "/group_operation", []byte{1}); err == nil {
		t.Fatalf("Relay held a %d-byte answer (%d bytes), over MaxRelayAnswer", len(answer), len(ans.Body))
	}
	resp, err := f.RelayStream(t.Context(), "hub.example.com", "/group_operation", bytes.NewReader([]byte{1}), 1, nil)
	if err != nil {
		t.Fatalf("relaying a %d-byte answer: %v", len(answer), err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, answer) {
		t.Fatalf("relayed answer of %d bytes, %v; want the hub's %d", len(got), err, len(answer))
	}
}

// TestRelayStreamSlowHub checks that the streamed relay waits for a hub
// that takes longer than the fetcher's Timeout to answer once it has the
// whole upload (storing it, completing an S3 upload): a follower that gave
// up would answer 503 for an upload the hub kept.
func TestRelayStreamSlowHub(t *testing.T) {
	const short = 100 * time.Millisecond
	answer, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseOK})
	// Failed discoveries are not cached: primeRelay tries again.
	f := relayHub(t, FetchPolicy{Timeout: short, MinInterval: time.Millisecond}, func(w http.ResponseWriter, r *http.Request) {
		if primed(w, r, answer) {
			return
		}
		select {
		case <-time.After(3 * short):
		case <-r.Context().Done():
			return
		}
		w.Write(answer)
	})
	primeRelay(t, f)
	resp, err := f.RelayStream(t.Context(), "hub.example.com", "/group_operation", strings.NewReader("upload"), 6, nil)
	if err != nil {
		t.Fatalf("relaying an upload to a hub that answers after Timeout: %v", err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, answer) {
		t.Fatalf("relayed answer %d %x, %v; want 200 %x", resp.StatusCode, got, err, answer)
	}
}
