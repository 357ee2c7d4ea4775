package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestPublicAddr checks the fetch policy's address filter against the IANA
// IPv4 and IPv6 special-purpose registries: every range that is not
// globally reachable, and every form that embeds an IPv4 address in IPv6
// (NAT64, 6to4, Teredo, IPv4-compatible, SIIT), is refused.
func TestPublicAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		// Public unicast.
		"1.1.1.1": true, "8.8.8.8": true, "93.184.215.14": true, "192.0.1.1": true, "198.17.255.255": true,
		"198.20.0.1": true, "223.255.255.254": true, "100.63.255.255": true, "100.128.0.1": true,
		"2606:4700:4700::1111": true, "2a00:1450:4001:80b::200e": true, "2001:4860:4860::8888": true,
		"::ffff:8.8.8.8": true, // IPv4-mapped: dialed as IPv4, judged as IPv4
		// IPv4 special-purpose.
		"0.0.0.0": false, "0.1.2.3": false, "10.1.2.3": false, "100.64.0.1": false, "100.127.255.254": false,
		"127.0.0.1": false, "169.254.169.254": false, "172.16.0.1": false, "172.31.255.255": false,
		"192.0.0.8": false, "192.0.0.170": false, "192.0.2.1": false, "192.88.99.1": false,
		"192.168.1.1": false, "198.18.0.1": false, "198.19.255.255": false, "198.51.100.7": false,
		"203.0.113.9": false, "224.0.0.1": false, "239.255.255.250": false, "240.0.0.1": false,
		"255.255.255.255":  false,
		"::ffff:127.0.0.1": false, "::ffff:10.0.0.1": false, "::ffff:198.18.0.1": false,
		// IPv6 special-purpose.
		"::": false, "::1": false, "fe80::1": false, "fec0::1": false, "fc00::1": false, "fd12:3456::1": false,
		"ff02::1": false, "ff0e::1": false, "100::1": false, "2001:db8::1": false, "3fff::1": false,
		"2001:2::1": false, "2001:10::1": false, "2001:20::1": false, "5f00::1": false,
		// IPv4 embedded in IPv6: refused outright, whatever the IPv4 part.
		"64:ff9b::8.8.8.8": false, "64:ff9b::127.0.0.1": false, "64:ff9b::a9fe:a9fe": false,
		"64:ff9b:1::8.8.8.8": false, "64:ff9b:1:ffff::1": false,
		"2002:0808:0808::1": false, "2002:7f00:0001::1": false, "2002:c0a8:0101::1": false,
		"2001::1": false, "2001:0:4136:e378:8000:63bf:3fff:fdd2": false,
		"::8.8.8.8": false, "::127.0.0.1": false, "::10.0.0.1": false,
		"::ffff:0:8.8.8.8": false, "::ffff:0:127.0.0.1": false,
	} {
		t.Run(addr, func(t *testing.T) {
			if got := publicAddr(netip.MustParseAddr(addr)); got != want {
				t.Errorf("publicAddr(%s) = %v, want %v", addr, got, want)
			}
		})
	}
}

// loopbackPeer serves a peer provider's discovery and keys over real TLS on
// loopback (peerServer) and returns a fetcher whose policy reaches it for
// every name in hosts, with a clock the test controls.
func loopbackPeer(t *testing.T, keys []moh.VerificationKey, fetches *atomic.Int32, hosts ...string) (*KeyFetcher, *time.Time) {
	t.Helper()
	return fetcherFor(t, peerServer(t, keys, fetches), hosts...)
}

// fetcherFor returns a fetcher that reaches srv for ds.example.com and every
// name in hosts, with a clock the test controls.
func fetcherFor(t *testing.T, srv *httptest.Server, hosts ...string) (*KeyFetcher, *time.Time) {
	t.Helper()
	addr := srv.Listener.Addr().String()
	resolve := map[string]string{"ds.example.com": addr}
	for _, h := range hosts {
		resolve[h] = addr
	}
	f := NewKeyFetcher(FetchPolicy{
		AllowPrivate: true, AllowedPorts: []int{srv.Listener.Addr().(*net.TCPAddr).Port},
		RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, Resolve: resolve,
	})
	t.Cleanup(f.Close)
	clock := t0
	f.now = func() time.Time { return clock }
	return f, &clock
}

// keysPeer is a TLS peer whose discovery points at itself and whose
// /verification_key is served by keys.
func keysPeer(t *testing.T, keys http.HandlerFunc) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	var srv *httptest.Server
	mux.HandleFunc("/.well-known/mimi/ds-domain", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ds.example.com:"+srv.URL[strings.LastIndexByte(srv.URL, ':')+1:]+"\n")
	})
	mux.HandleFunc("/verification_key", keys)
	srv = httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// TestKeyLifetimeOverflow checks that validity bounds near 2^64 seconds
// neither pass the 90-day rule through an overflow nor wrap when they become
// times: a key is used only if not_after - not_before, in whole seconds, is
// at most 90 days.
func TestKeyLifetimeOverflow(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	maxLife := uint64(MaxKeyLifetime / time.Second)
	now := uint64(t0.Unix())
	rows := []struct {
		name     string
		nb, na   uint64
		accepted bool
	}{
		{"ordinary", now - 3600, now + 3600, true},
		{"exactly 90 days", now - 3600, now - 3600 + maxLife, true},
		{"90 days and a second", now - 3600, now - 3600 + maxLife + 1, false},
		{"ns overflow to 0.29 s", 0, 18446744074, false},
		{"ns overflow near 2^64", now - 3600, math.MaxUint64, false},
		{"int64 overflow of not_before", 1 << 63, 1<<63 + 60, false},
		{"past int64", math.MaxUint64 - 60, math.MaxUint64, false},
		{"not_after before not_before", now + 3600, now - 3600, false},
	}
	var keys []moh.VerificationKey
	for i, r := range rows {
		pub := k.Public()
		pub.KeyID = []byte{byte(i)}
		pub.NotBefore, pub.NotAfter = r.nb, r.na
		keys = append(keys, pub)
	}
	var fetches atomic.Int32
	f, _ := loopbackPeer(t, keys, &fetches, "peer.example.com")
	for i, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			got, err := f.VerificationKey(t.Context(), "peer.example.com", []byte{byte(i)}, t0)
			if r.accepted != (err == nil) {
				t.Fatalf("accepted = %v (%v), want %v", err == nil, err, r.accepted)
			}
			if err == nil && (got.NotBefore != r.nb || got.NotAfter != r.na) {
				t.Fatalf("validity changed to %d..%d", got.NotBefore, got.NotAfter)
			}
		})
	}
	for _, ck := range f.peers["peer.example.com"].keys {
		if exp := ck.expires; exp.Before(t0) || exp.After(t0.Add(maxKeyCacheTTL)) {
			t.Errorf("key %x cached until %v, outside [now, now+24h]", ck.key.KeyID, exp)
		}
	}
	t.Run("conversions", func(t *testing.T) {
		if got := unixTime(math.MaxUint64); got.Before(t0) || got.Unix() != maxUnixSeconds {
			t.Errorf("unixTime(2^64-1) = %v", got)
		}
		if got := unixSeconds(time.Unix(-5, 0)); got != 0 {
			t.Errorf("unixSeconds(before 1970) = %d", got)
		}
		old, _ := GenerateKey(moh.SchemeEd25519, time.Unix(-3600, 0), time.Unix(3600, 0))
		if pub := old.Public(); pub.NotBefore != 0 || pub.NotAfter != 3600 {
			t.Errorf("Public of a pre-1970 key = %d..%d", pub.NotBefore, pub.NotAfter)
		}
	})
}

// TestKeyFetchMethodAndContentType pins how keys are fetched: a POST with
// the body 0001 (VerificationKeyRequest, version 1), Content-Type and Accept
// application/octet-stream; one retry with a body-less GET when the peer
// answers 405; and only an application/octet-stream answer is accepted,
// parameters ignored, case-insensitively.
func TestKeyFetchMethodAndContentType(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	answer, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: []moh.VerificationKey{k.Public()}})
	for _, tc := range []struct {
		name        string
		getOnly     bool
		contentType string
		wantMethods string
		ok          bool
	}{
		{"post", false, "application/octet-stream", "POST", true},
		{"get only peer", true, "application/octet-stream", "POST GET", true},
		{"parameters and case", false, "Application/Octet-Stream; charset=binary", "POST", true},
		{"get only peer, parameters", true, "APPLICATION/OCTET-STREAM ; x=y", "POST GET", true},
		{"text", false, "text/plain; charset=utf-8", "POST", false},
		{"no type", false, "", "POST", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var methods []string
			srv := keysPeer(t, func(w http.ResponseWriter, r *http.Request) {
				methods = append(methods, r.Method)
				body, _ := io.ReadAll(r.Body)
				if accept := r.Header.Get("Accept"); accept != "application/octet-stream" {
					t.Errorf("%s: Accept = %q", r.Method, accept)
				}
				switch r.Method {
				case http.MethodPost:
					if !bytes.Equal(body, []byte{0, 1}) || r.Header.Get("Content-Type") != "application/octet-stream" {
						t.Errorf("POST body %x, Content-Type %q", body, r.Header.Get("Content-Type"))
					}
					if tc.getOnly {
						w.Header().Set("Allow", "GET")
						w.WriteHeader(http.StatusMethodNotAllowed)
						return
					}
				case http.MethodGet:
					if len(body) != 0 || r.Header.Get("Content-Type") != "" {
						t.Errorf("GET body %x, Content-Type %q", body, r.Header.Get("Content-Type"))
					}
				}
				w.Header()["Content-Type"] = []string{tc.contentType}
				w.Write(answer)
			})
			f, _ := fetcherFor(t, srv, "peer.example.com")
			_, err := f.VerificationKey(t.Context(), "peer.example.com", k.ID, t0)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want success %v", err, tc.ok)
			}
			if !tc.ok && !errors.Is(err, ErrFetchFailed) {
				t.Fatalf("refusal %v does not wrap ErrFetchFailed", err)
			}
			if got := strings.Join(methods, " "); got != tc.wantMethods {
				t.Fatalf("methods %q, want %q", got, tc.wantMethods)
			}
		})
	}
}

// TestKeyFetcherClose checks that Close drops the fetcher's idle
// connections and that later fetches fail with ErrFetcherClosed, reaching
// no peer and caching nothing, while cached keys still answer. How fast
// they fail is not measured: a loaded machine makes any bound flaky, and
// a fetch that reached the network would be counted as a request.
func TestKeyFetcherClose(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	answer, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: []moh.VerificationKey{k.Public()}})
	var requests atomic.Int32
	closed := make(chan struct{}, 16)
	mux := http.NewServeMux()
	srv := httptest.NewUnstartedServer(mux)
	mux.HandleFunc("/.well-known/mimi/ds-domain", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		io.WriteString(w, "ds.example.com:"+srv.URL[strings.LastIndexByte(srv.URL, ':')+1:])
	})
	mux.HandleFunc("/verification_key", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(answer)
	})
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f, _ := fetcherFor(t, srv, "peer.example.com", "other.example.com")
	if _, err := f.VerificationKey(t.Context(), "peer.example.com", k.ID, t0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close left the idle connection open")
	}
	before := requests.Load()
	if _, err := f.VerificationKey(t.Context(), "peer.example.com", k.ID, t0); err != nil {
		t.Fatalf("cached key after Close: %v", err)
	}
	for _, domain := range []string{"other.example.com", "other.example.com"} {
		if _, err := f.VerificationKey(t.Context(), domain, k.ID, t0); !errors.Is(err, ErrFetcherClosed) {
			t.Fatalf("fetch after Close: %v, want ErrFetcherClosed", err)
		}
	}
	c := &Client{Sender: "a.example", Fetcher: f}
	if _, err := c.Post(t.Context(), "other.example.com", moh.ConnectionKeyPackages, []byte{0}); !errors.Is(err, ErrFetcherClosed) {
		t.Fatalf("Client.Post after Close: %v, want ErrFetcherClosed", err)
	}
	if n := requests.Load() - before; n != 0 {
		t.Fatalf("after Close: %d requests reached the peer", n)
	}
	if e := f.peers["other.example.com"]; e != nil && e.lastErr != nil {
		t.Fatalf("a closed fetcher cached a peer failure: %v", e.lastErr)
	}
	f.Close() // idempotent
}

// TestForgedKeyIDDoesNotBlockRotation checks that a forged request naming an
// unknown key_id of a known peer does not keep the peer's next genuine key
// out for the minimum interval: only failures and key_ids already missing
// from a fetch wait MinInterval; a new key_id waits at most minRefetchGap.
func TestForgedKeyIDDoesNotBlockRotation(t *testing.T) {
	k1, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	k2, _ := GenerateKey(moh.SchemeEd25519, t0, t0.Add(2*time.Hour))
	var published atomic.Pointer[[]byte]
	publish := publisher(&published)
	publish(k1)
	var fetches atomic.Int32
	srv := keysPeer(t, func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(*published.Load())
	})
	f, clock := fetcherFor(t, srv, "peer.example.com")
	ctx := t.Context()
	lookup := func(at time.Duration, id []byte) error {
		*clock = t0.Add(at)
		_, err := f.VerificationKey(ctx, "peer.example.com", id, *clock)
		return err
	}
	steps := []struct {
		name    string
		at      time.Duration
		id      []byte
		ok      bool
		fetches int32
	}{
		{"genuine key fetched", 0, k1.ID, true, 1},
		{"forged key_id refetches once the interval passed", 61 * time.Second, []byte("forged-1"), false, 2},
		{"rotated key right after the forged refetch", 71 * time.Second, k2.ID, true, 3},
		{"a new forged key_id within the gap does not refetch", 72 * time.Second, []byte("forged-2"), false, 3},
		{"the forged key_id again does not refetch", 80 * time.Second, []byte("forged-1"), false, 3},
		{"a new forged key_id after the gap refetches", 90 * time.Second, []byte("forged-2"), false, 4},
		{"then it is remembered as missing", 100 * time.Second, []byte("forged-2"), false, 4},
		{"the old key still answers from the cache", 101 * time.Second, k1.ID, true, 4},
	}
	for i, s := range steps {
		if i == 2 {
			publish(k2, k1)
		}
		t.Run(s.name, func(t *testing.T) {
			err := lookup(s.at, s.id)
			if (err == nil) != s.ok || (!s.ok && !errors.Is(err, ErrUnknownKey)) {
				t.Errorf("err = %v, want success %v", err, s.ok)
			}
			if n := fetches.Load(); n != s.fetches {
				t.Errorf("%d fetches, want %d", n, s.fetches)
			}
		})
	}
}

// TestJoinedFetchDoesNotHideNewKey checks that a lookup which joins a
// fetch already in flight, begun before the peer published its new key,
// does not remember that key_id as missing: the peer's next request under
// the new key refetches once minRefetchGap has passed, instead of getting
// unknown_key for MinInterval. The lookup that started the fetch still
// remembers its key_id.
func TestJoinedFetchDoesNotHideNewKey(t *testing.T) {
	k1, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	k2, _ := GenerateKey(moh.SchemeEd25519, t0, t0.Add(2*time.Hour))
	var published atomic.Pointer[[]byte]
	publish := publisher(&published)
	publish(k1)
	var fetches atomic.Int32
	var hold atomic.Bool
	arrived, release := make(chan struct{}), make(chan struct{})
	srv := keysPeer(t, func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		answer := *published.Load() // the keys as the request reaches the peer
		if hold.CompareAndSwap(true, false) {
			arrived <- struct{}{}
			<-release
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(answer)
	})
	const peer = "peer.example.com"
	f, clock := fetcherFor(t, srv, peer)
	ctx := t.Context()
	lookup := func(id []byte) chan error {
		done := make(chan error, 1)
		go func() {
			_, err := f.VerificationKey(ctx, peer, id, *clock)
			done <- err
		}()
		return done
	}
	if err := <-lookup(k1.ID); err != nil {
		t.Fatalf("first fetch: %v", err)
	}

	// A forged key_id starts a fetch, which reaches the peer before it
	// publishes k2; the peer's first request under k2 joins that fetch.
	*clock = t0.Add(10 * time.Second)
	hold.Store(true)
	forged := lookup([]byte("forged"))
	<-arrived
	publish(k2, k1)
	genuine := lookup(k2.ID)
	for joined := false; !joined; {
		f.mu.Lock()
		joined = f.fetching[peer] != nil && f.fetching[peer].joiners == 1
		f.mu.Unlock()
		if !joined {
			runtime.Gosched()
		}
	}
	close(release)
	for name, ch := range map[string]chan error{"forged": forged, "genuine": genuine} {
		if err := <-ch; !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("%s lookup during the fetch: %v, want ErrUnknownKey", name, err)
		}
	}
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2 (the joined lookup waits for the fetch in flight)", n)
	}

	*clock = t0.Add(10*time.Second + minRefetchGap)
	if err := <-lookup(k2.ID); err != nil {
		t.Fatalf("the new key after minRefetchGap: %v (remembered missing from a fetch begun before it was published)", err)
	}
	if err := <-lookup([]byte("forged")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("the forged key_id: %v, want ErrUnknownKey", err)
	}
	if n := fetches.Load(); n != 3 {
		t.Fatalf("%d fetches, want 3 (one for the new key; the forged key_id stays missing)", n)
	}
}

// TestJoinerNotRefusedForStartersBudget checks that a lookup is refused
// for its own fetch budget only: a request from a source whose budget is
// spent (an attacker naming a genuine peer) starts no fetch that the
// peer's genuine request, from a source with budget, could join, so the
// genuine request gets its keys instead of the attacker's 503.
func TestJoinerNotRefusedForStartersBudget(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	var published atomic.Pointer[[]byte]
	publisher(&published)(k)
	srv := keysPeer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(*published.Load())
	})
	const peer = "peer.example.com"
	var spenders []string
	for i := range 5 { // a source's burst
		spenders = append(spenders, fmt.Sprintf("spender%d.example", i))
	}
	f, clock := fetcherFor(t, srv, append(spenders, peer)...)
	ctx := t.Context()
	attacker := LookupOptions{Source: netip.MustParseAddr("203.0.113.7")}
	genuine := LookupOptions{Source: netip.MustParseAddr("198.51.100.20")}
	for _, d := range spenders {
		// Fetches from the attacker's address, each under a registrable
		// domain of its own (which the test peer's certificate does not
		// name: the fetch fails, once its budget is spent).
		if _, err := f.VerificationKeyFrom(ctx, d, k.ID, *clock, attacker); !errors.Is(err, ErrFetchFailed) {
			t.Fatalf("spending the attacker's budget on %s: %v, want ErrFetchFailed", d, err)
		}
	}

	// Should the attacker's lookup put a fetch in flight, the genuine
	// lookup joins it before it runs.
	var armed atomic.Bool
	var joined chan error
	f.fetchInFlight = func(domain string) {
		if domain != peer || !armed.CompareAndSwap(true, false) {
			return
		}
		joined = make(chan error, 1)
		go func() {
			_, err := f.VerificationKeyFrom(ctx, peer, k.ID, *clock, genuine)
			joined <- err
		}()
		for {
			f.mu.Lock()
			n := f.fetching[peer].joiners
			f.mu.Unlock()
			if n == 1 {
				return
			}
			runtime.Gosched()
		}
	}
	armed.Store(true)
	if _, err := f.VerificationKeyFrom(ctx, peer, k.ID, *clock, attacker); !errors.Is(err, ErrFetchBudget) {
		t.Fatalf("the attacker's lookup: %v, want ErrFetchBudget", err)
	}
	armed.Store(false)
	var err error
	if joined != nil {
		err = <-joined
	} else {
		_, err = f.VerificationKeyFrom(ctx, peer, k.ID, *clock, genuine)
	}
	if err != nil {
		t.Fatalf("the genuine lookup: %v, want the peer's key (refused for the attacker's budget)", err)
	}
}

// TestFetchBudgetUnderForgedFlood floods the fetcher with forged requests
// naming a fresh sender each time (100 per second for 20 s, no
// credentials), from one source, under one attacker domain and under fresh
// registrable domains. A known peer must keep getting its keys (also a
// rotated one, which needs a refetch) and a new genuine peer, from another
// source, must get its keys at its first try; refusals wrap ErrFetchBudget.
// The peers that succeed are real TLS servers on loopback; the forged
// senders resolve to a closed loopback port.
func TestFetchBudgetUnderForgedFlood(t *testing.T) {
	k1, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	k2, _ := GenerateKey(moh.SchemeEd25519, t0, t0.Add(2*time.Hour))
	var published atomic.Pointer[[]byte]
	publish := publisher(&published)
	publish(k1)
	srv := keysPeer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(*published.Load())
	})
	addr := srv.Listener.Addr().String()
	const perSecond, seconds = 100, 20
	forged := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("f%d.attacker.example", i)
		}
		return fmt.Sprintf("spam%d.com", i)
	}
	resolve := map[string]string{"ds.example.com": addr, "known.example.com": addr, "newpeer.example.com": addr}
	for i := 0; i < perSecond*seconds; i++ {
		resolve[forged(i)] = "127.0.0.1:1" // refused at once
		resolve[fmt.Sprintf("dist%d.example", i)] = "127.0.0.1:1"
	}
	f := NewKeyFetcher(FetchPolicy{
		AllowPrivate: true, AllowedPorts: []int{1, srv.Listener.Addr().(*net.TCPAddr).Port},
		RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, Resolve: resolve,
	})
	t.Cleanup(f.Close)
	clock := t0
	f.now = func() time.Time { return clock }
	ctx := t.Context()
	attacker := LookupOptions{Source: netip.MustParseAddr("203.0.113.7")}
	genuine := LookupOptions{Source: netip.MustParseAddr("198.51.100.20")}

	if _, err := f.VerificationKeyFrom(ctx, "known.example.com", k1.ID, clock, genuine); err != nil {
		t.Fatalf("known peer before the flood: %v", err)
	}
	var refused, knownFailures int
	newPeerTries := 0
	newPeerOK := false
	for i := 0; i < perSecond*seconds; i++ {
		clock = t0.Add(time.Minute + time.Duration(i)*time.Second/perSecond)
		if _, err := f.VerificationKeyFrom(ctx, forged(i), k1.ID, clock, attacker); errors.Is(err, ErrFetchBudget) {
			refused++
		} else if !errors.Is(err, ErrFetchFailed) {
			t.Fatalf("forged sender %s: %v", forged(i), err)
		}
		switch i {
		case perSecond * seconds / 2:
			publish(k2, k1) // the known peer rotates mid-flood
		case perSecond*seconds/2 + 1:
			// The peer's first request under its new key needs a refetch.
			if _, err := f.VerificationKeyFrom(ctx, "known.example.com", k2.ID, clock, genuine); err != nil {
				t.Errorf("known peer's rotated key during the flood: %v", err)
			}
		}
		if i%perSecond == perSecond/2 {
			if _, err := f.VerificationKeyFrom(ctx, "known.example.com", k1.ID, clock, genuine); err != nil {
				knownFailures++
			}
			if !newPeerOK {
				newPeerTries++
				_, err := f.VerificationKeyFrom(ctx, "newpeer.example.com", k1.ID, clock, genuine)
				newPeerOK = err == nil
				if err != nil && !errors.Is(err, ErrFetchBudget) {
					t.Fatalf("new peer: %v", err)
				}
			}
		}
	}
	if knownFailures > 0 {
		t.Errorf("known peer failed %d times during the flood", knownFailures)
	}
	if !newPeerOK || newPeerTries != 1 {
		t.Errorf("new genuine peer: got its keys %v after %d tries, want at the first", newPeerOK, newPeerTries)
	}
	if refused < perSecond*seconds*9/10 {
		t.Errorf("only %d of %d forged senders were refused by the budget", refused, perSecond*seconds)
	}

	// A flood from many sources under fresh registrable domains can spend
	// the budget for new senders, but not the known peers' refetches.
	publish(k1, k2)
	other, _ := GenerateKey(moh.SchemeEd25519, t0, t0.Add(2*time.Hour))
	for i := 0; i < perSecond*seconds; i++ {
		clock = t0.Add(2*time.Minute + time.Duration(i)*time.Second/perSecond)
		src := LookupOptions{Source: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})}
		f.VerificationKeyFrom(ctx, fmt.Sprintf("dist%d.example", i), k1.ID, clock, src) //nolint:errcheck // only the budget matters
		if i == perSecond*seconds/2 {
			publish(other, k2, k1)
			if _, err := f.VerificationKeyFrom(ctx, "known.example.com", other.ID, clock, genuine); err != nil {
				t.Errorf("known peer's rotated key during a distributed flood: %v", err)
			}
		}
	}
}

// sourcedKeys records the options a Verifier passes on and refuses every
// lookup as a spent budget.
type sourcedKeys struct{ got LookupOptions }

func (s *sourcedKeys) VerificationKey(context.Context, string, []byte, time.Time) (*moh.VerificationKey, error) {
	return nil, errors.New("called without options")
}

func (s *sourcedKeys) VerificationKeyFrom(_ context.Context, domain string, _ []byte, _ time.Time, opts LookupOptions) (*moh.VerificationKey, error) {
	s.got = opts
	return nil, fmt.Errorf("fetching keys of new sender %s: %w", domain, ErrFetchBudget)
}

// TestVerifyWithPassesSource checks that VerifyWith hands the request
// source to the key source and that a budget refusal is a
// backend_unavailable *moh.Error in which errors.Is finds ErrFetchBudget.
func TestVerifyWithPassesSource(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	keys := &sourcedKeys{}
	v := &Verifier{Domains: []string{"b.example"}, Keys: keys, Now: func() time.Time { return t0 }}
	src := netip.MustParseAddr("2001:4860::1")
	_, err := v.VerifyWith(t.Context(), signedRequest(t, k, nil), moh.ConnectionKeyPackages, VerifyOptions{Source: src})
	var e *moh.Error
	if !errors.As(err, &e) || e.Code != moh.CodeBackendUnavailable || !errors.Is(err, ErrFetchBudget) {
		t.Fatalf("err = %v, want backend_unavailable wrapping ErrFetchBudget", err)
	}
	if strings.Contains(e.Message, "sender") && strings.Contains(e.Message, "a.example") {
		t.Errorf("peer-visible message %q names internal detail", e.Message)
	}
	if keys.got.Source != src {
		t.Fatalf("key source saw source %v, want %v", keys.got.Source, src)
	}
}

// publisher returns a function that makes keys the verification key
// answer stored in published, which a test peer serves.
func publisher(published *atomic.Pointer[[]byte]) func(keys ...*PrivateKey) {
	return func(keys ...*PrivateKey) {
		var vk []moh.VerificationKey
		for _, k := range keys {
			vk = append(vk, k.Public())
		}
		raw, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: vk})
		published.Store(&raw)
	}
}
