package provider

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

var t0 = time.Unix(1_790_000_000, 0)

func TestSignVerifyBothSchemes(t *testing.T) {
	for _, scheme := range []moh.SignatureScheme{moh.SchemeEd25519, moh.SchemeECDSAP256SHA256} {
		k, err := GenerateKey(scheme, t0, t0.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		sig, err := k.SignWithLabel("test", []byte("content"))
		if err != nil {
			t.Fatal(err)
		}
		pub := k.Public()
		if err := VerifyWithLabel(&pub, "test", []byte("content"), sig); err != nil {
			t.Fatalf("scheme %04x: %v", scheme, err)
		}
		for _, tc := range []struct{ label, content string }{{"test2", "content"}, {"test", "content!"}} {
			if err := VerifyWithLabel(&pub, tc.label, []byte(tc.content), sig); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("scheme %04x: modified input verified: %v", scheme, err)
			}
		}
		pemBytes, err := k.MarshalPEM()
		if err != nil {
			t.Fatal(err)
		}
		k2, err := ParsePEM(pemBytes)
		if err != nil || !bytes.Equal(k2.ID, k.ID) || !k2.NotAfter.Equal(k.NotAfter) {
			t.Fatalf("PEM round trip: %v", err)
		}
	}
}

// TestSignContentEncoding pins SignContent to RFC 9420 §5.1.2: the label
// gets the "MLS 1.0 " prefix and both fields are <V> vectors.
func TestSignContentEncoding(t *testing.T) {
	got, err := signContent("L", []byte{0xaa})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte{9}, "MLS 1.0 L"...)
	want = append(want, 1, 0xaa)
	if !bytes.Equal(got, want) {
		t.Fatalf("signContent = %x, want %x", got, want)
	}
	// A content of 64 bytes or more takes a two-byte length; a buffer
	// that holds something keeps it in front.
	long := bytes.Repeat([]byte{0xbb}, 300)
	got, err = appendSignContent([]byte{0xee}, "L", long)
	if err != nil {
		t.Fatal(err)
	}
	want = append([]byte{0xee, 9}, "MLS 1.0 L"...)
	want = append(append(want, 0x41, 0x2c), long...)
	if !bytes.Equal(got, want) {
		t.Fatalf("appendSignContent = %x, want %x", got, want)
	}
}

func TestKeyRingRotation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	opts := KeyRingOptions{RotateEvery: 10 * 24 * time.Hour, Overlap: 48 * time.Hour}
	r, err := OpenKeyRing(t.Context(), dir, opts, t0)
	if err != nil {
		t.Fatal(err)
	}
	first, err := r.Current(t0)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, keyFileName(first)))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi, err)
	}
	// Reopening finds the same key instead of creating one.
	r2, err := OpenKeyRing(t.Context(), dir, opts, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if cur, _ := r2.Current(t0.Add(time.Hour)); !bytes.Equal(cur.ID, first.ID) {
		t.Fatal("reopening created a new key")
	}
	// After the interval a new key signs; the old one is still published.
	later := t0.Add(10*24*time.Hour + time.Minute)
	if created, err := r.Rotate(t.Context(), later); err != nil || !created {
		t.Fatalf("Rotate = %v, %v", created, err)
	}
	cur, _ := r.Current(later)
	if bytes.Equal(cur.ID, first.ID) {
		t.Fatal("old key still signs after rotation")
	}
	if pub := r.Published(later); len(pub) != 2 || !bytes.Equal(pub[0].KeyID, cur.ID) {
		t.Fatalf("published %d keys after rotation, want 2 (newest first)", len(pub))
	}
	// Once the old key expires it is no longer published and its file goes.
	gone := first.NotAfter.Add(time.Second)
	if _, err := r.Rotate(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	if pub := r.Published(gone); len(pub) != 1 {
		t.Fatalf("published %d keys after expiry, want 1", len(pub))
	}
	if _, err := os.Stat(filepath.Join(dir, keyFileName(first))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("expired key file still present: %v", err)
	}
	if _, err := OpenKeyRing(t.Context(), dir, KeyRingOptions{RotateEvery: 89 * 24 * time.Hour, Overlap: 2 * 24 * time.Hour}, t0); err == nil {
		t.Fatal("accepted a key lifetime above 90 days")
	}
}

func TestKeyRingRefusesTamperedFileName(t *testing.T) {
	dir := t.TempDir()
	r, err := OpenKeyRing(t.Context(), dir, KeyRingOptions{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := r.Current(t0)
	if err := os.Rename(filepath.Join(dir, keyFileName(k)), filepath.Join(dir, "00"+keyFileSuffix)); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyRing(t.Context(), dir, KeyRingOptions{}, t0); err == nil {
		t.Fatal("loaded a key whose file name does not match its id")
	}
}

// staticKeys is a KeySource over a fixed key list, for verifier tests that
// are not about fetching.
type staticKeys map[string][]moh.VerificationKey

func (s staticKeys) VerificationKey(_ context.Context, domain string, keyID []byte, at time.Time) (*moh.VerificationKey, error) {
	for _, k := range s[domain] {
		if bytes.Equal(k.KeyID, keyID) {
			return checkCovers(k, at)
		}
	}
	return nil, ErrUnknownKey
}

func signedRequest(t *testing.T, k *PrivateKey, mutate func(*moh.ProviderRequest)) []byte {
	t.Helper()
	req := &moh.ProviderRequest{
		RequestType: moh.ConnectionKeyPackages, Sender: []byte("a.example"), Recipient: []byte("b.example"),
		Timestamp: uint64(t0.Unix()), RequestID: bytes.Repeat([]byte{1}, 16), Payload: []byte{1, 'x', 1, 'y'},
	}
	if mutate != nil {
		mutate(req)
	}
	raw, err := SignRequest(req, k)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestVerifier(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	other, _ := GenerateKey(moh.SchemeEd25519, t0.Add(-time.Hour), t0.Add(time.Hour))
	v := &Verifier{
		Domains: []string{"b.example"},
		Keys:    staticKeys{"a.example": {k.Public()}},
		Now:     func() time.Time { return t0.Add(10 * time.Second) },
		Peers: func(s string) error {
			if s == "evil.example" {
				return errors.New("denied")
			}
			return nil
		},
	}
	good := signedRequest(t, k, nil)
	got, err := v.Verify(context.Background(), good, moh.ConnectionKeyPackages)
	if err != nil || string(got.Request.Sender) != "a.example" {
		t.Fatalf("valid request refused: %v", err)
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name string
		raw  []byte
		typ  moh.ProviderRequestType
		want moh.Code
	}{
		{"garbage", []byte("\x00\x01hello"), moh.ConnectionKeyPackages, moh.CodeMalformed},
		{"truncated", good[:len(good)/2], moh.ConnectionKeyPackages, moh.CodeMalformed},
		{"garbage of another version", []byte("hello"), moh.ConnectionKeyPackages, moh.CodeUnsupportedVersion},
		{"version 2", append([]byte{0, 2}, good[2:]...), moh.ConnectionKeyPackages, moh.CodeUnsupportedVersion},
		{"wrong endpoint", good, moh.GroupKeyPackages, moh.CodeWrongRequestType},
		{"forwarded", signedRequest(t, k, func(r *moh.ProviderRequest) { r.Recipient = []byte("c.example") }), moh.ConnectionKeyPackages, moh.CodeRecipientMismatch},
		{"old", signedRequest(t, k, func(r *moh.ProviderRequest) { r.Timestamp -= 400 }), moh.ConnectionKeyPackages, moh.CodeStaleTimestamp},
		{"future", signedRequest(t, k, func(r *moh.ProviderRequest) { r.Timestamp += 400 }), moh.ConnectionKeyPackages, moh.CodeStaleTimestamp},
		{"denied peer", signedRequest(t, k, func(r *moh.ProviderRequest) { r.Sender = []byte("evil.example") }), moh.ConnectionKeyPackages, moh.CodeForbidden},
		{"unknown key", signedRequest(t, other, nil), moh.ConnectionKeyPackages, moh.CodeUnknownKey},
		{"bad signature", flipped, moh.ConnectionKeyPackages, moh.CodeBadSignature},
	} {
		_, err := v.Verify(context.Background(), tc.raw, tc.typ)
		var e *moh.Error
		if !errors.As(err, &e) || e.Code != tc.want {
			t.Errorf("%s: err = %v, want code %v", tc.name, err, tc.want)
		}
	}
}

// peerServer is a TLS server playing a peer provider's discovery and key
// endpoints.
func peerServer(t *testing.T, keys []moh.VerificationKey, fetches *atomic.Int32) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	var srv *httptest.Server
	mux.HandleFunc("/.well-known/mimi/ds-domain", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ds.example.com:"+srv.URL[strings.LastIndexByte(srv.URL, ':')+1:]+"\n")
	})
	mux.HandleFunc("/verification_key", func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		body, _ := wire.Marshal(&moh.DSResponse{Type: moh.ResponseVerificationKeys, VerificationKeys: keys})
		w.Write(body)
	})
	srv = httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestKeyFetcher(t *testing.T) {
	k, _ := GenerateKey(moh.SchemeECDSAP256SHA256, t0.Add(-time.Hour), t0.Add(time.Hour))
	tooLong := k.Public()
	tooLong.KeyID = []byte("long")
	tooLong.NotAfter = tooLong.NotBefore + uint64((91 * 24 * time.Hour).Seconds())
	var fetches atomic.Int32
	srv := peerServer(t, []moh.VerificationKey{k.Public(), tooLong}, &fetches)
	addr := srv.Listener.Addr().String()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs

	f := NewKeyFetcher(FetchPolicy{
		AllowPrivate: true, AllowedPorts: []int{port}, RootCAs: pool,
		Resolve: map[string]string{"peer.example.com": addr, "ds.example.com": addr},
	})
	clock := t0
	f.now = func() time.Time { return clock }
	ctx := context.Background()
	got, err := f.VerificationKey(ctx, "peer.example.com", k.ID, t0)
	if err != nil || !bytes.Equal(got.PublicKey, k.Public().PublicKey) {
		t.Fatalf("VerificationKey = %v", err)
	}
	if _, err := f.VerificationKey(ctx, "peer.example.com", k.ID, t0); err != nil || fetches.Load() != 1 {
		t.Fatalf("second lookup fetched again (%d fetches): %v", fetches.Load(), err)
	}
	// A key over 90 days is ignored; an unknown id inside the minimum
	// interval does not refetch.
	if _, err := f.VerificationKey(ctx, "peer.example.com", []byte("long"), t0); !errors.Is(err, ErrUnknownKey) || fetches.Load() != 1 {
		t.Fatalf("over-long key: err %v after %d fetches", err, fetches.Load())
	}
	if _, err := f.VerificationKey(ctx, "peer.example.com", []byte("nope"), t0); !errors.Is(err, ErrUnknownKey) || fetches.Load() != 1 {
		t.Fatalf("unknown key within interval: err %v after %d fetches", err, fetches.Load())
	}
	// A request time outside the key's validity is refused.
	if _, err := f.VerificationKey(ctx, "peer.example.com", k.ID, t0.Add(2*time.Hour)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("time outside validity accepted: %v", err)
	}
	// The cache ends at the key's not_after.
	clock = t0.Add(time.Hour + time.Minute)
	if _, err := f.VerificationKey(ctx, "peer.example.com", k.ID, clock); !errors.Is(err, ErrUnknownKey) || fetches.Load() != 2 {
		t.Fatalf("expired key: err %v after %d fetches", err, fetches.Load())
	}
}

func TestKeyFetcherRefusesPrivateAddresses(t *testing.T) {
	var fetches atomic.Int32
	srv := peerServer(t, nil, &fetches)
	addr := srv.Listener.Addr().String()
	pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	for name, policy := range map[string]FetchPolicy{
		"loopback": {AllowedPorts: []int{port}, RootCAs: pool, Resolve: map[string]string{"peer.example.com": addr}},
		"port":     {AllowPrivate: true, RootCAs: pool, Resolve: map[string]string{"peer.example.com": addr}},
	} {
		f := NewKeyFetcher(policy)
		_, err := f.VerificationKey(context.Background(), "peer.example.com", []byte("k"), t0)
		if !errors.Is(err, ErrFetchFailed) || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: err = %v, want a refused fetch", name, err)
		}
		// The failure is cached: no second attempt within the interval.
		_, err2 := f.VerificationKey(context.Background(), "peer.example.com", []byte("k"), t0)
		if err2 == nil || err2.Error() != err.Error() {
			t.Errorf("%s: failure not cached: %v", name, err2)
		}
	}
	if fetches.Load() != 0 {
		t.Fatalf("%d fetches reached the server", fetches.Load())
	}
}

func TestValidateAuthority(t *testing.T) {
	for a, ok := range map[string]bool{
		"ds.example": true, "ds.example:8443": true, "ds.example:0": false, "ds.example:08443": false,
		"ds.example:": false, "127.0.0.1": false, "[::1]:443": false, "DS.example": false,
	} {
		if err := ValidateAuthority(a); (err == nil) != ok {
			t.Errorf("ValidateAuthority(%q) = %v", a, err)
		}
	}
}
