package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass/pptest"
)

// writePolicyKeys writes the issuer keys and the context secret of
// c.localhost before Caddy loads the configuration.
func writePolicyKeys(dir string) error {
	ppDir := filepath.Join(dir, "pp")
	if err := os.MkdirAll(ppDir, 0o700); err != nil {
		return err
	}
	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		k, err := privacypass.GenerateKey(typ)
		if err != nil {
			return err
		}
		if err := privacypass.WriteKeyFile(ppKeyFile(dir, typ), k); err != nil {
			return err
		}
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	return os.WriteFile(filepath.Join(ppDir, "secret"), []byte(hex.EncodeToString(secret)), 0o600)
}

func ppKeyFile(dir string, typ privacypass.TokenType) string {
	return filepath.Join(dir, "pp", fmt.Sprintf("k%d.json", typ))
}

const policySite = "https://c.localhost:9443"

// protected posts to c.localhost's token-protected endpoint with the
// Authorization value auth (none when empty).
func protected(t *testing.T, auth string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, policySite+"/welcome_information", nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client(tls.VersionTLS13).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// admittedStatus is what /welcome_information answers a bodiless request
// once the token check passed: the endpoint itself refuses the missing
// content type.
const admittedStatus = http.StatusUnsupportedMediaType

func TestPrivacyPassInterop(t *testing.T) {
	startCaddy(t)
	dir := pptest.Dir(t)

	resp := protected(t, "")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: status %d", resp.StatusCode)
	}
	wwwAuth := resp.Header.Get("WWW-Authenticate")
	challenges, err := privacypass.ParseWWWAuthenticate(wwwAuth)
	if err != nil || len(challenges) != 2 || challenges[0].MaxAge <= 0 {
		t.Fatalf("challenges in %q: %v", wwwAuth, err)
	}

	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		t.Run(typ.String(), func(t *testing.T) {
			// privacypass-ts plays client and issuer (with the issuer key
			// the gateway also uses), answering the gateway's own header.
			tokens := strings.Fields(pptest.Run(t, dir, 0, "token", "--key", ppKeyFile(env.dir, typ),
				"--www-authenticate", wwwAuth, "--count", "2"))
			if len(tokens) != 4 { // "PrivateToken token=..." twice
				t.Fatalf("pp-peer printed %q", tokens)
			}
			first, second := tokens[0]+" "+tokens[1], tokens[2]+" "+tokens[3]

			// A modified token (one bit of the authenticator) is refused.
			if r := protected(t, flipLastBit(t, second)); r.StatusCode != http.StatusUnauthorized {
				t.Fatalf("modified token: status %d", r.StatusCode)
			}
			if r := protected(t, first); r.StatusCode != admittedStatus {
				t.Fatalf("valid token: status %d", r.StatusCode)
			}
			r := protected(t, first)
			if r.StatusCode != http.StatusUnauthorized || r.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("replayed token: status %d", r.StatusCode)
			}
			// The unmodified second token is still good: the modified copy
			// did not spend it.
			if r := protected(t, second); r.StatusCode != admittedStatus {
				t.Fatalf("second token: status %d", r.StatusCode)
			}
		})
	}

	// Tokens for a challenge this origin did not make: another origin, and
	// the right origin with a context the gateway never issued.
	for name, origin := range map[string]string{"another origin": "other.example", "another challenge": "c.localhost:9443"} {
		out := pptest.Run(t, dir, 0, "challenge", "--key", ppKeyFile(env.dir, privacypass.TypeBlindRSA),
			"--issuer", "c.localhost:9443", "--origin", origin, "--context", "random")
		wa := jsonField(t, out, "www_authenticate")
		tok := strings.TrimSpace(pptest.Run(t, dir, 0, "token", "--key", ppKeyFile(env.dir, privacypass.TypeBlindRSA),
			"--www-authenticate", wa))
		if r := protected(t, tok); r.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s: status %d", name, r.StatusCode)
		}
	}
}

// TestIssuerOverHTTPS runs the whole flow on c.localhost: directory,
// issuance, redemption, with a Go client.
func TestIssuerOverHTTPS(t *testing.T) {
	startCaddy(t)
	c := client(tls.VersionTLS13)
	resp, err := c.Get(policySite + privacypass.DirectoryPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	dir, err := privacypass.ParseDirectory(body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("directory: %d %v", resp.StatusCode, err)
	}
	keys, err := dir.Keys()
	if err != nil || len(keys) != 2 {
		t.Fatalf("directory keys: %v %v", keys, err)
	}
	r := protected(t, "")
	cs, err := privacypass.ParseWWWAuthenticate(r.Header.Get("WWW-Authenticate"))
	if err != nil || len(cs) == 0 {
		t.Fatal("no challenge")
	}
	for _, k := range keys {
		var challenge []byte
		for _, ch := range cs {
			if ch.TokenType() == k.Type() {
				challenge = ch.TokenChallenge
			}
		}
		p, err := privacypass.NewTokenRequest(challenge, k)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Post(policySite+dir.IssuerRequestURI, privacypass.MediaTypeTokenRequest, bytes.NewReader(p.Request))
		if err != nil {
			t.Fatal(err)
		}
		tr, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: issuance status %d: %s", k.Type(), resp.StatusCode, tr)
		}
		tok, err := p.Finalize(tr)
		if err != nil {
			t.Fatal(err)
		}
		if r := protected(t, privacypass.FormatAuthorization(tok)); r.StatusCode != admittedStatus {
			t.Fatalf("%s: token from the gateway's issuer: status %d", k.Type(), r.StatusCode)
		}
	}
}

// TestRateLimitOverHTTPS checks the 429 answer as a client sees it: status,
// Retry-After and DSError, for the zone of 3 per minute on /healthz keyed
// by a request header (a placeholder key).
func TestRateLimitOverHTTPS(t *testing.T) {
	startCaddy(t)
	c := client(tls.VersionTLS13)
	// Buckets live as long as the in-process Caddy: fresh keys per run keep
	// the test repeatable under -count.
	run := fmt.Sprintf("client-%d", time.Now().UnixNano())
	get := func(clientID string) (*http.Response, error) {
		req, err := http.NewRequest(http.MethodGet, policySite+"/healthz", nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("X-Test-Client", clientID)
		return c.Do(req)
	}
	var last *http.Response
	var body []byte
	start := time.Now()
	for i := 0; i < 4; i++ {
		resp, err := get(run + "-1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		last = resp
		if i < 3 && resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	elapsed := time.Since(start)
	if last.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("fourth request: status %d", last.StatusCode)
	}
	// 3 per minute: the next event is at most 20 s away, and at least 19
	// s less the whole seconds these requests took (none unless the
	// machine is loaded).
	ra, err := strconv.Atoi(last.Header.Get("Retry-After"))
	if lo := 19 - int(elapsed/time.Second); err != nil || ra < lo || ra > 20 {
		t.Fatalf("Retry-After %q %v after the first request, want %d to 20", last.Header.Get("Retry-After"), elapsed, lo)
	}
	var resp moh.DSResponse
	if err := wire.Unmarshal(body, &resp, "DSResponse"); err != nil || resp.Error.Code != moh.CodeRateLimited {
		t.Fatalf("body %x: %v", body, err)
	}
	// Another key has its own bucket.
	if r, err := get(run + "-2"); err != nil || r.StatusCode != http.StatusOK {
		t.Fatalf("another client: %v %v", r, err)
	} else {
		r.Body.Close()
	}
	// Other sites are not limited by c.localhost's zone.
	for i := 0; i < 5; i++ {
		r, err := c.Get("https://a.localhost:9443/healthz")
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusOK {
			t.Fatalf("a.localhost: status %d", r.StatusCode)
		}
	}
}

// flipLastBit changes one bit of the token's authenticator.
func flipLastBit(t *testing.T, auth string) string {
	t.Helper()
	enc, ok := strings.CutPrefix(auth, "PrivateToken token=")
	if !ok {
		t.Fatalf("unexpected Authorization %q", auth)
	}
	raw, err := base64.URLEncoding.DecodeString(strings.Trim(enc, `"`))
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] ^= 1
	return "PrivateToken token=" + base64.URLEncoding.EncodeToString(raw)
}

// jsonField extracts a string member from pp-peer's JSON output.
func jsonField(t *testing.T, out, name string) string {
	t.Helper()
	_, rest, ok := strings.Cut(out, `"`+name+`":`)
	if !ok {
		t.Fatalf("no %s in %q", name, out)
	}
	rest = strings.TrimSpace(rest)
	v, err := strconv.QuotedPrefix(rest)
	if err != nil {
		t.Fatalf("%s in %q: %v", name, out, err)
	}
	s, _ := strconv.Unquote(v)
	return s
}

// senderZoneSpent records that TestSenderRateLimit used a.localhost's one
// event an hour in the per_provider zone of this process's Caddy.
var senderZoneSpent bool

// TestSenderRateLimit checks the zone keyed on the verified sending
// provider (1 per hour on connection_key_packages): a forged request
// claiming a.localhost does not spend a.localhost's budget, a signed one
// does, and the next is answered 429.
func TestSenderRateLimit(t *testing.T) {
	startCaddy(t)
	if senderZoneSpent {
		t.Skip("a.localhost's per_provider budget (1/h) was spent by an earlier run in this process (-count > 1)")
	}
	senderZoneSpent = true
	a := peerClient(t, "a.localhost")
	payload, _ := wire.Marshal(&moh.ConnectionKeyPackagesRequest{
		Requester: []byte("mimi://a.localhost/u/alice"), UserID: []byte("mimi://c.localhost/u/carol"),
	})
	post := func(raw []byte) (*http.Response, []byte) {
		t.Helper()
		resp, err := client(tls.VersionTLS13).Post(policySite+"/connection_key_packages", "application/octet-stream", bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, body
	}
	sign := func() []byte {
		raw, err := a.Sign("c.localhost", moh.ConnectionKeyPackages, payload)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	forged := sign()
	forged[len(forged)-1] ^= 1
	for i := 0; i < 3; i++ {
		if resp, _ := post(forged); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("forged request: status %d", resp.StatusCode)
		}
	}
	if resp, body := post(sign()); resp.StatusCode != http.StatusOK {
		t.Fatalf("first signed request: status %d %q (the forged ones spent the budget?)", resp.StatusCode, body)
	}
	resp, body := post(sign())
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second signed request: status %d", resp.StatusCode)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 3590 || ra > 3600 {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	var dsr moh.DSResponse
	if err := wire.Unmarshal(body, &dsr, "DSResponse"); err != nil || dsr.Error.Code != moh.CodeRateLimited {
		t.Fatalf("body %x: %v", body, err)
	}
}
