package admission

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

func TestIssuer(t *testing.T) {
	f := newPPFixture(t)
	t.Run("directory", func(t *testing.T) {
		dir, err := privacypass.ParseDirectory(f.issuer.Directory())
		if err != nil || dir.IssuerRequestURI != DefaultRequestPath || len(dir.TokenKeys) != 2 {
			t.Fatalf("directory %+v: %v", dir, err)
		}
		if f.issuer.RequestPath() != DefaultRequestPath {
			t.Fatalf("request path %q", f.issuer.RequestPath())
		}
	})
	t.Run("keys are a copy", func(t *testing.T) {
		keys := f.issuer.Keys()
		if len(keys) != 2 || keys[0].ID() != f.keys[privacypass.TypeBlindRSA].ID() {
			t.Fatalf("keys %v", keys)
		}
		keys[0] = nil
		if f.issuer.Keys()[0] == nil {
			t.Fatal("Keys aliases the issuer's slice")
		}
	})
	t.Run("issue counts", func(t *testing.T) {
		issued, refused := counter(zoneIssuer, "token_request", "issued"), counter(zoneIssuer, "token_request", "issue_refused")
		if _, err := f.issuer.Issue([]byte{0, 2, 1}); privacypass.ReasonOf(err) == "" {
			t.Fatalf("truncated request: %v, want a privacypass reason", err)
		}
		f.issuer.CountRefusal()
		challenge, _ := (&privacypass.TokenChallenge{TokenType: privacypass.TypeBlindRSA, IssuerName: "issuer.example.com"}).Marshal()
		mintWith(t, f.issuer.Issue, f.keys[privacypass.TypeBlindRSA], challenge)
		if n := counter(zoneIssuer, "token_request", "issue_refused") - refused; n != 2 {
			t.Fatalf("issue_refused rose by %v, want 2", n)
		}
		if n := counter(zoneIssuer, "token_request", "issued") - issued; n != 1 {
			t.Fatalf("issued rose by %v, want 1", n)
		}
	})
	public := filepath.Join(t.TempDir(), "public.json")
	data, err := privacypass.MarshalKeyFile(f.keys[privacypass.TypeBlindRSA], false)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFile(public, data); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		files []string
		path  string
		want  string
	}{
		{"no key file", nil, "", "at least one key file is required"},
		{"relative request path", f.files, "relative", `request_path "relative" is not an absolute path`},
		{"missing file", []string{"/nonexistent/k.json"}, "", "key /nonexistent/k.json"},
		{"public key only", []string{public}, "", "holds no private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewIssuer(tc.files, tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	t.Run("request path", func(t *testing.T) {
		is, err := NewIssuer(f.files, "/pp/token-request")
		if err != nil {
			t.Fatal(err)
		}
		dir, _ := privacypass.ParseDirectory(is.Directory())
		if is.RequestPath() != "/pp/token-request" || dir.IssuerRequestURI != "/pp/token-request" {
			t.Fatalf("request path %q, directory %q", is.RequestPath(), dir.IssuerRequestURI)
		}
	})
}

// TestIssuerDirectory fetches an issuer directory from a real TLS server on
// loopback, under the fetch policy, then refreshes an origin built on it
// as the issuer rotates its key.
func TestIssuerDirectory(t *testing.T) {
	f := newPPFixture(t)
	dir := f.issuer.Directory()
	var served atomic.Pointer[[]byte]
	var fetches atomic.Int64
	served.Store(&dir)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case privacypass.DirectoryPath:
			fetches.Add(1)
			w.Header().Set("Content-Type", privacypass.MediaTypeIssuerDirectory)
			d := *served.Load()
			if d == nil {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			w.Write(d) //nolint:errcheck // test server
		case "/redirect":
			http.Redirect(w, r, privacypass.DirectoryPath, http.StatusFound)
		case "/huge":
			w.Write(bytes.Repeat([]byte(" "), MaxDirectoryBody+10)) //nolint:errcheck // test server
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	resolve := map[string]string{"example.com": srv.Listener.Addr().String()}
	pol := provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{port}, RootCAs: roots, Resolve: resolve}
	base := "https://example.com:" + strconv.Itoa(port)
	ctx := context.Background()

	t.Run("type 2 keys only", func(t *testing.T) {
		keys, err := FetchDirectoryKeys(ctx, base+privacypass.DirectoryPath, pol, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 || keys[0].ID() != f.keys[privacypass.TypeBlindRSA].ID() {
			t.Fatalf("keys %v: want the type 2 key only", keys)
		}
	})
	for _, tc := range []struct {
		name, path string
		pol        provider.FetchPolicy
		want       string
	}{
		{"no redirects", "/redirect", pol, "status 302"},
		{"bounded body", "/huge", pol, "larger than"},
		{"missing", "/missing", pol, "status 404"},
		{"loopback under the production policy", privacypass.DirectoryPath,
			provider.FetchPolicy{AllowedPorts: []int{port}, RootCAs: roots, Resolve: resolve}, "not a public address"},
		{"port not allowed", privacypass.DirectoryPath,
			provider.FetchPolicy{AllowPrivate: true, RootCAs: roots, Resolve: resolve}, "refused by fetch policy: port"},
		{"unknown roots", privacypass.DirectoryPath,
			provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{port}, RootCAs: x509.NewCertPool(), Resolve: resolve}, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := FetchDirectoryKeys(ctx, base+tc.path, tc.pol, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}

	// An origin configured with the directory accepts tokens under its key.
	o, err := NewOrigin(ctx, OriginConfig{
		OriginConfig: privacypass.OriginConfig{IssuerName: "example.com", OriginInfo: []string{"ds.example.com"}, Spent: f.store},
		DirectoryURL: base + privacypass.DirectoryPath, Fetch: pol,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	p := newPolicy(t, Config{Origin: o, RequireToken: []string{"welcome_information"}})
	pl := p.Plan("welcome_information")
	redeem := func(auth string) error { return pl.Before(ctx, &Request{Authorization: auth}) }
	mintUnder := func(issue func([]byte) ([]byte, error), k *privacypass.Key) string {
		t.Helper()
		return mintWith(t, issue, k, challengeOf(t, redeem(""), privacypass.TypeBlindRSA))
	}
	oldKey := f.keys[privacypass.TypeBlindRSA]
	if err := redeem(mintUnder(f.issuer.Issue, oldKey)); err != nil {
		t.Fatalf("token under a directory key: %v", err)
	}

	// The issuer rotates: the refresh picks the new key up and drops the
	// old one. A failed refresh keeps the current keys.
	newKey, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
	if err != nil {
		t.Fatal(err)
	}
	newIss, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: newKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("failed refresh keeps the keys", func(t *testing.T) {
		var down []byte
		served.Store(&down)
		current := o.Current()
		if err := o.Refresh(ctx); err == nil || !strings.Contains(err.Error(), "status 503") {
			t.Fatalf("refresh from a failing issuer: %v", err)
		}
		if o.Current() != current {
			t.Fatal("a failed refresh replaced the origin")
		}
		if err := redeem(mintUnder(f.issuer.Issue, oldKey)); err != nil {
			t.Fatalf("old key after a failed refresh: %v", err)
		}
	})
	t.Run("new keys rebuild the origin", func(t *testing.T) {
		newDir, _ := newIss.Directory(DefaultRequestPath).Marshal()
		served.Store(&newDir)
		before := o.Current()
		if err := o.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if o.Current() == before {
			t.Fatal("the origin was not rebuilt after a key change")
		}
		if err := redeem(mintUnder(newIss.Issue, newKey)); err != nil {
			t.Fatalf("new key after the refresh: %v", err)
		}
		if err := redeem(mintUnder(f.issuer.Issue, oldKey)); codeOf(err) != moh.CodeTokenRequired {
			t.Fatalf("old key after the refresh: %v", err)
		}
	})
	t.Run("token under an unknown key refetches once a minute", func(t *testing.T) {
		// The issuer rotates again; this origin has not refreshed, but a
		// client got the new key elsewhere (another gateway's challenge).
		mk := func() (*privacypass.Key, *privacypass.Issuer) {
			k, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
			if err != nil {
				t.Fatal(err)
			}
			is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k})
			if err != nil {
				t.Fatal(err)
			}
			return k, is
		}
		k3, is3 := mk()
		dir3, _ := is3.Directory(DefaultRequestPath).Marshal()
		served.Store(&dir3)
		// The previous subtest's token under the dropped key spent this
		// minute's refetch.
		o.unknownMu.Lock()
		o.lastUnknown = time.Time{}
		o.unknownMu.Unlock()
		before := fetches.Load()
		if err := redeem(mintUnder(is3.Issue, k3)); err != nil {
			t.Fatalf("token under the issuer's newest key: %v (fetches %d)", err, fetches.Load()-before)
		}
		if n := fetches.Load() - before; n != 1 {
			t.Fatalf("%d directory fetches for the unknown key, want 1", n)
		}
		k4, is4 := mk()
		dir4, _ := is4.Directory(DefaultRequestPath).Marshal()
		served.Store(&dir4)
		if err := redeem(mintUnder(is4.Issue, k4)); codeOf(err) != moh.CodeTokenRequired {
			t.Fatalf("second unknown key within a minute: %v, want token_required", err)
		}
		if n := fetches.Load() - before; n != 1 {
			t.Fatalf("%d directory fetches after a second unknown key within a minute, want still 1", n)
		}
		served.Store(&dir3)
	})
	t.Run("a request cancelled during the refetch does not spend it", func(t *testing.T) {
		// A client that sends a token under a made-up key and hangs up at
		// once must not use up the minute's refetch without it happening:
		// the refetch runs to its end whatever becomes of the request that
		// caused it, so the next client's token under the issuer's new key
		// is accepted.
		k5, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
		if err != nil {
			t.Fatal(err)
		}
		is5, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k5})
		if err != nil {
			t.Fatal(err)
		}
		dir5, _ := is5.Directory(DefaultRequestPath).Marshal()
		served.Store(&dir5)
		o.unknownMu.Lock()
		o.lastUnknown = time.Time{}
		o.unknownMu.Unlock()
		gone, cancel := context.WithCancel(ctx)
		cancel()
		tok := mintUnder(is5.Issue, k5)
		pl.Before(gone, &Request{Authorization: tok}) //nolint:errcheck // nobody reads the answer of a cancelled request
		if err := redeem(mintUnder(is5.Issue, k5)); err != nil {
			t.Fatalf("token under the issuer's new key after a cancelled refetch: %v", err)
		}
	})
	t.Run("unchanged directory keeps the origin", func(t *testing.T) {
		same := o.Current()
		if err := o.Refresh(ctx); err != nil || o.Current() != same {
			t.Fatalf("refresh of an unchanged directory: %v", err)
		}
	})
	t.Run("close is idempotent", func(t *testing.T) {
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		if err := o.Destruct(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unreachable directory fails NewOrigin", func(t *testing.T) {
		_, err := NewOrigin(ctx, OriginConfig{
			OriginConfig: privacypass.OriginConfig{IssuerName: "example.com", Spent: f.store},
			DirectoryURL: base + "/missing", Fetch: pol,
		})
		if err == nil || !strings.Contains(err.Error(), "status 404") {
			t.Fatalf("NewOrigin: %v", err)
		}
	})
}

func TestNewOriginErrors(t *testing.T) {
	f := newPPFixture(t)
	for _, tc := range []struct {
		name string
		cfg  OriginConfig
		want string
	}{
		{"no key source", OriginConfig{OriginConfig: privacypass.OriginConfig{IssuerName: "issuer.example", Spent: f.store}},
			"token_key or issuer_directory is required"},
		{"invalid", OriginConfig{OriginConfig: privacypass.OriginConfig{Keys: f.issuer.Keys(), Spent: f.store}},
			"issuer_name is required"},
		{"short secret", OriginConfig{OriginConfig: privacypass.OriginConfig{IssuerName: "issuer.example", Keys: f.issuer.Keys(),
			Spent: f.store, Mode: privacypass.ContextWindow, Secret: []byte("short")}}, "secret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewOrigin(context.Background(), tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// directoryOf is an issuer directory listing keys, in order, repeats
// included.
func directoryOf(t testing.TB, keys ...*privacypass.Key) []byte {
	t.Helper()
	d := &privacypass.Directory{IssuerRequestURI: DefaultRequestPath}
	for _, k := range keys {
		d.TokenKeys = append(d.TokenKeys, privacypass.DirectoryKey{TokenType: k.Type(),
			TokenKey: base64.URLEncoding.EncodeToString(k.TokenKey())})
	}
	b, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// directoryServer serves *served as the issuer directory of example.com
// and returns its URL and the fetch policy that reaches it.
func directoryServer(t testing.TB, served *atomic.Pointer[[]byte]) (string, provider.FetchPolicy) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", privacypass.MediaTypeIssuerDirectory)
		w.Write(*served.Load()) //nolint:errcheck // test server
	}))
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	pol := provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{port}, RootCAs: roots,
		Resolve: map[string]string{"example.com": srv.Listener.Addr().String()}}
	return "https://example.com:" + strconv.Itoa(port) + privacypass.DirectoryPath, pol
}

// TestDirectoryKeysOverlap checks that a key listed twice, by token_key and
// by the issuer directory or twice by the directory, is accepted once:
// the verifier refuses duplicate key ids, so an overlap must neither fail
// NewOrigin nor, when a refresh brings it, keep the directory's other keys
// out.
func TestDirectoryKeysOverlap(t *testing.T) {
	f := newPPFixture(t)
	ctx := context.Background()
	genKey := func() (*privacypass.Key, func([]byte) ([]byte, error)) {
		k, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
		if err != nil {
			t.Fatal(err)
		}
		is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k})
		if err != nil {
			t.Fatal(err)
		}
		return k, is.Issue
	}
	fixtureKey := f.keys[privacypass.TypeBlindRSA]
	pinned, pinnedIssue := genKey()
	rotated, rotatedIssue := genKey()
	for _, tc := range []struct {
		name string
		// pinned are the token_key keys; dir and then the directories
		// served at NewOrigin and at a later Refresh (then nil: none).
		pinned    []*privacypass.Key
		dir, then []byte
		// accepted are tokens under these keys after the last fetch;
		// refused, under these, are refused.
		accepted map[*privacypass.Key]func([]byte) ([]byte, error)
		refused  map[*privacypass.Key]func([]byte) ([]byte, error)
	}{
		{name: "pinned key the directory also lists",
			pinned: []*privacypass.Key{fixtureKey.Public()}, dir: directoryOf(t, fixtureKey),
			accepted: map[*privacypass.Key]func([]byte) ([]byte, error){fixtureKey: f.issuer.Issue}},
		{name: "directory lists a key twice",
			dir:      directoryOf(t, fixtureKey, fixtureKey),
			accepted: map[*privacypass.Key]func([]byte) ([]byte, error){fixtureKey: f.issuer.Issue}},
		{name: "refresh brings the pinned key and a rotation",
			pinned: []*privacypass.Key{pinned.Public()}, dir: directoryOf(t, fixtureKey), then: directoryOf(t, rotated, pinned),
			accepted: map[*privacypass.Key]func([]byte) ([]byte, error){pinned: pinnedIssue, rotated: rotatedIssue},
			refused:  map[*privacypass.Key]func([]byte) ([]byte, error){fixtureKey: f.issuer.Issue}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var served atomic.Pointer[[]byte]
			served.Store(&tc.dir)
			url, pol := directoryServer(t, &served)
			o, err := NewOrigin(ctx, OriginConfig{
				OriginConfig: privacypass.OriginConfig{IssuerName: "example.com", OriginInfo: []string{"ds.example.com"},
					Keys: tc.pinned, Spent: f.store},
				DirectoryURL: url, Fetch: pol,
			})
			if err != nil {
				t.Fatalf("NewOrigin: %v", err)
			}
			defer o.Close()
			if tc.then != nil {
				served.Store(&tc.then)
				if err := o.Refresh(ctx); err != nil {
					t.Fatalf("Refresh: %v", err)
				}
			}
			pl := newPolicy(t, Config{Origin: o, RequireToken: []string{"welcome_information"}}).Plan("welcome_information")
			redeem := func(k *privacypass.Key, issue func([]byte) ([]byte, error)) error {
				challenge := challengeOf(t, pl.Before(ctx, &Request{}), privacypass.TypeBlindRSA)
				return pl.Before(ctx, &Request{Authorization: mintWith(t, issue, k, challenge)})
			}
			for k, issue := range tc.accepted {
				if err := redeem(k, issue); err != nil {
					t.Errorf("token under key %x: %v", k.TruncatedID(), err)
				}
			}
			for k, issue := range tc.refused {
				if err := redeem(k, issue); codeOf(err) != moh.CodeTokenRequired {
					t.Errorf("token under the dropped key %x: %v, want token_required", k.TruncatedID(), err)
				}
			}
		})
	}
}
