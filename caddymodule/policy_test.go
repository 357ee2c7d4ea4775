package caddymodule

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/internal/metricstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
	"github.com/caddy-mimi/caddy-mimi/policy/admission"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

func TestUnmarshalPolicy(t *testing.T) {
	g := new(Gateway)
	err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`mimi {
		provider example.com
		ds_domain ds.example.com
		rate_limit per_ip {
			key ip_prefix 24 48
			rate 10/1s
			burst 20
			endpoints /group_operation welcome_information
			max_keys 1000
		}
		rate_limit per_provider {
			key sender_provider
			rate 60/1m
			endpoints connection_request
			over_limit token
		}
		rate_limit per_user {
			key {http.request.header.X-User}
			rate 1/1h
		}
		privacy_pass {
			issuer_name issuer.example.com
			origin_info ds.example.com
			token_key 2 /etc/mimi/k2.json
			token_key 1 /etc/mimi/k1.json
			issuer_directory https://issuer.example.com/.well-known/private-token-issuer-directory
			directory_refresh 30m
			require connection_key_packages group_operation
			lifetime 10m
			context window
			secret {env.PP_SECRET}
			grease
		}
		issuer {
			key /etc/mimi/k2.json
			key /etc/mimi/k1.json
			request_path /pp/token-request
		}
		peers {
			allow a.example b.example
			deny c.example
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Gateway{
		Providers: []string{"example.com"},
		DSDomain:  "ds.example.com",
		RateLimits: []*RateLimitZone{
			{Name: "per_ip", Key: "ip_prefix", IPv4Prefix: 24, IPv6Prefix: 48, Events: 10, Window: caddy.Duration(time.Second),
				Burst: 20, Endpoints: []string{"/group_operation", "welcome_information"}, MaxKeys: 1000},
			{Name: "per_provider", Key: "sender_provider", Events: 60, Window: caddy.Duration(time.Minute),
				Endpoints: []string{"connection_request"}, OverLimit: "token"},
			{Name: "per_user", Key: "{http.request.header.X-User}", Events: 1, Window: caddy.Duration(time.Hour)},
		},
		PrivacyPass: &PrivacyPass{
			IssuerName: "issuer.example.com", OriginInfo: []string{"ds.example.com"},
			TokenKeys:        []TokenKeyFile{{2, "/etc/mimi/k2.json"}, {1, "/etc/mimi/k1.json"}},
			IssuerDirectory:  "https://issuer.example.com/.well-known/private-token-issuer-directory",
			DirectoryRefresh: caddy.Duration(30 * time.Minute),
			Require:          []string{"connection_key_packages", "group_operation"},
			Lifetime:         caddy.Duration(10 * time.Minute), Context: "window", Secret: "{env.PP_SECRET}", Grease: true,
		},
		Issuer: &TokenIssuer{KeyFiles: []string{"/etc/mimi/k2.json", "/etc/mimi/k1.json"}, RequestPath: "/pp/token-request"},
		Peers:  &PeerList{Allow: []string{"a.example", "b.example"}, Deny: []string{"c.example"}},
	}
	if !reflect.DeepEqual(g, want) {
		t.Fatalf("got  %+v\nwant %+v", g, want)
	}
	if err := g.Validate(); err != nil {
		t.Fatalf("the parsed config does not validate: %v", err)
	}
	// The JSON field names are the documented ones (README "JSON").
	js, err := json.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{
		`"rate_limits":[{"name":"per_ip","key":"ip_prefix","ipv4_prefix":24,"ipv6_prefix":48,"events":10,"window":1000000000,"burst":20,"endpoints":["/group_operation","welcome_information"],"max_keys":1000}`,
		`{"name":"per_provider","key":"sender_provider","events":60,"window":60000000000,"endpoints":["connection_request"],"over_limit":"token"}`,
		`"privacy_pass":{"issuer_name":"issuer.example.com","origin_info":["ds.example.com"],"token_keys":[{"type":2,"file":"/etc/mimi/k2.json"},{"type":1,"file":"/etc/mimi/k1.json"}],"issuer_directory":"https://issuer.example.com/.well-known/private-token-issuer-directory","directory_refresh":1800000000000,"require":["connection_key_packages","group_operation"],"lifetime":600000000000,"context":"window","secret":"{env.PP_SECRET}","grease":true}`,
		`"issuer":{"key_files":["/etc/mimi/k2.json","/etc/mimi/k1.json"],"request_path":"/pp/token-request"}`,
		`"peers":{"allow":["a.example","b.example"],"deny":["c.example"]}`,
	} {
		if !strings.Contains(string(js), field) {
			t.Errorf("JSON %s\nlacks %s", js, field)
		}
	}
}

func TestUnmarshalPolicyErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`rate_limit z { key remote_ip; rate 1/1s }` + "\n" + `rate_limit z { key remote_ip; rate 1/1s }`, "duplicate rate_limit zone 'z'"},
		{"rate_limit z {\nkey remote_ip\nkey remote_ip\nrate 1/1s\n}", "duplicate rate_limit z option 'key'"},
		{"rate_limit Z {\nkey remote_ip\nrate 1/1s\n}", "invalid rate_limit zone name 'Z'"},
		{"rate_limit peers {\nkey remote_ip\nrate 1/1s\n}", "invalid rate_limit zone name 'peers'"},
		{"rate_limit z {\nkey remote_ip\n}", "rate_limit z needs both key and rate"},
		{"rate_limit z {\nkey hostname\nrate 1/1s\n}", "invalid key 'hostname'"},
		{"rate_limit z {\nkey remote_ip 24\nrate 1/1s\n}", "key 'remote_ip' takes no further value, got '24'"},
		{"rate_limit z {\nkey ip_prefix 33 64\nrate 1/1s\n}", "invalid ip_prefix IPv4 bits '33'"},
		{"rate_limit z {\nkey ip_prefix 24\nrate 1/1s\n}", "key ip_prefix takes <ipv4_bits> <ipv6_bits>"},
		{"rate_limit z {\nkey remote_ip\nrate 10\n}", "invalid rate '10'"},
		{"rate_limit z {\nkey remote_ip\nrate 10/soon\n}", "invalid rate '10/soon': bad duration 'soon'"},
		{"rate_limit z {\nkey remote_ip\nrate 0/1s\n}", "invalid rate '0/1s'"},
		{"rate_limit z {\nkey remote_ip\nrate 1/1s\nburst -2\n}", "invalid burst '-2'"},
		{"rate_limit z {\nkey remote_ip\nrate 1/1s\nmax_keys 10\n}", "invalid max_keys '10': want at least 64"},
		{"rate_limit z {\nkey remote_ip\nrate 1/1s\nover_limit wait\n}", "invalid over_limit 'wait'"},
		{"rate_limit z {\nkey remote_ip\nrate 1/1s\nwindow 1s\n}", "unrecognized rate_limit option 'window'"},
		{"privacy_pass {\ntoken_key 2 /k\n}", "privacy_pass needs issuer_name"},
		{"privacy_pass {\nissuer_name i\ntoken_key 3 /k\n}", "invalid token_key type '3'"},
		{"privacy_pass {\nissuer_name i\ncontext sometimes\n}", "invalid context 'sometimes'"},
		{"privacy_pass {\nissuer_name i\nlifetime 1s\nlifetime 2s\n}", "duplicate privacy_pass option 'lifetime'"},
		{"issuer {\nrequest_path /x\n}", "issuer: at least one key file is required"},
		{"issuer {\nkey /k\nrequest_path relative\n}", `request_path "relative" is not an absolute path`},
		{"peers {\nallow a.example\ndeny a.example\n}", "duplicate peers entry 'a.example'"},
		{"peers {\npermit a.example\n}", "unrecognized peers option 'permit'"},
		{"peers {\n}", "peers needs allow or deny"},
	} {
		in := "mimi {\n" + strings.ReplaceAll(tc.in, "; ", "\n") + "\n}"
		in = strings.ReplaceAll(in, "{ ", "{\n")
		in = strings.ReplaceAll(in, " }", "\n}")
		t.Run(tc.in, func(t *testing.T) {
			err := new(Gateway).UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestValidatePolicy(t *testing.T) {
	base := func() *Gateway { return &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"} }
	zone := func(key string, endpoints ...string) *RateLimitZone {
		return &RateLimitZone{Name: "z", Key: key, Events: 1, Window: caddy.Duration(time.Second), Endpoints: endpoints}
	}
	for _, tc := range []struct {
		name string
		edit func(g *Gateway)
		want string
	}{
		{"sender key on a DS endpoint", func(g *Gateway) { g.RateLimits = []*RateLimitZone{zone("sender_provider", "group_operation")} },
			`key sender_provider needs a provider endpoint, not "group_operation"`},
		{"group key on a provider endpoint", func(g *Gateway) { g.RateLimits = []*RateLimitZone{zone("member", "/deliver_message")} },
			`key member needs a client-signed DS endpoint, not "deliver_message"`},
		{"endpoint listed twice", func(g *Gateway) {
			g.RateLimits = []*RateLimitZone{zone("remote_ip", "connection_request", "/connection_request")}
		}, `"/connection_request" is listed twice`},
		{"unknown endpoint", func(g *Gateway) { g.RateLimits = []*RateLimitZone{zone("remote_ip", "/nowhere")} },
			`"/nowhere" is not an endpoint of this gateway`},
		{"token_request without issuer", func(g *Gateway) { g.RateLimits = []*RateLimitZone{zone("remote_ip", "token_request")} },
			`"token_request" is not an endpoint`},
		{"over_limit token without privacy_pass", func(g *Gateway) {
			z := zone("remote_ip")
			z.OverLimit = "token"
			g.RateLimits = []*RateLimitZone{z}
		}, "over_limit token needs a privacy_pass block"},
		{"prefix bits on remote_ip", func(g *Gateway) {
			z := zone("remote_ip")
			z.IPv6Prefix = 56
			g.RateLimits = []*RateLimitZone{z}
		}, "apply only to key ip_prefix"},
		{"max_keys below the shard count", func(g *Gateway) {
			z := zone("remote_ip")
			z.MaxKeys = 10
			g.RateLimits = []*RateLimitZone{z}
		}, "max_keys 10 is below 64"},
		{"no key source", func(g *Gateway) { g.PrivacyPass = &PrivacyPass{IssuerName: "issuer.example"} },
			"token_key or issuer_directory is required"},
		{"http directory", func(g *Gateway) {
			g.PrivacyPass = &PrivacyPass{IssuerName: "issuer.example", IssuerDirectory: "http://issuer.example/d"}
		}, `issuer_directory "http://issuer.example/d" is not an https URL`},
		{"secret with random contexts", func(g *Gateway) {
			g.PrivacyPass = &PrivacyPass{IssuerName: "issuer.example", TokenKeys: []TokenKeyFile{{2, "k"}}, Secret: "x"}
		}, "secret applies only to context window"},
		{"directory refresh too often", func(g *Gateway) {
			g.PrivacyPass = &PrivacyPass{IssuerName: "issuer.example", IssuerDirectory: "https://issuer.example/d",
				DirectoryRefresh: caddy.Duration(10 * time.Second)}
		}, "directory_refresh 10s: needs issuer_directory and at least 1m0s"},
		{"require on discovery", func(g *Gateway) {
			g.PrivacyPass = &PrivacyPass{IssuerName: "issuer.example", TokenKeys: []TokenKeyFile{{2, "k"}}, Require: []string{"ds_domain"}}
		}, `"ds_domain" is not a MoH endpoint`},
		{"issuer on a MoH path", func(g *Gateway) { g.Issuer = &TokenIssuer{KeyFiles: []string{"k"}, RequestPath: "/deliver_message"} },
			`issuer request_path: "/deliver_message" is a MoH endpoint`},
		{"peer with a port", func(g *Gateway) { g.Peers = &PeerList{Deny: []string{"a.example:443"}} },
			`"a.example:443" is not a lowercase provider domain`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := base()
			tc.edit(g)
			err := g.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// tls13 marks r as received over TLS 1.3.
func tls13(r *http.Request) *http.Request {
	r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true}
	return r
}

// dsErrorCode decodes the DSError of an answer.
func dsErrorCode(t *testing.T, body []byte) moh.Code {
	t.Helper()
	var resp moh.DSResponse
	if err := wire.Unmarshal(body, &resp, "DSResponse"); err != nil || resp.Type != moh.ResponseError {
		t.Fatalf("answer %x is not a DSError: %v", body, err)
	}
	return resp.Error.Code
}

func TestRateLimitHandler(t *testing.T) {
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com",
		RateLimits: []*RateLimitZone{{Name: "per_ip", Key: "remote_ip", Events: 2, Window: caddy.Duration(time.Minute),
			Endpoints: []string{"ds_domain"}}}})
	get := func(remote, clientIP string) *httptest.ResponseRecorder {
		r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		caddyhttp.NewTestReplacer(r)
		if clientIP != "" {
			ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: clientIP})
			r = r.WithContext(ctx)
		}
		if err := g.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })); err != nil {
			t.Fatal(err)
		}
		return w
	}
	before := decision(t, "per_ip", "ds_domain", "limited")
	start := time.Now()
	for i := 0; i < 2; i++ {
		if w := get("192.0.2.1:1000", ""); w.Code != http.StatusOK {
			t.Fatalf("request %d: status %d", i, w.Code)
		}
	}
	w := get("192.0.2.1:1001", "")
	elapsed := time.Since(start)
	if w.Code != http.StatusTooManyRequests || dsErrorCode(t, w.Body.Bytes()) != moh.CodeRateLimited {
		t.Fatalf("over the limit: status %d", w.Code)
	}
	// 2 events per minute: the next one is 30 s after the first, less
	// what elapsed since, rounded up: 30 unless the requests took a whole
	// second on a loaded machine, ceil(30 - e) = 30 - floor(e).
	ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
	if lo := 30 - int(elapsed/time.Second); err != nil || ra < lo || ra > 30 {
		t.Fatalf("Retry-After %q %v after the first request, want %d to 30", w.Header().Get("Retry-After"), elapsed, lo)
	}
	if got := decision(t, "per_ip", "ds_domain", "limited") - before; got != 1 {
		t.Fatalf("limited counter rose by %v", got)
	}
	// Another address has its own bucket; the client_ip variable (set by
	// Caddy from trusted_proxies) wins over the socket address.
	if w := get("192.0.2.2:1000", ""); w.Code != http.StatusOK {
		t.Fatalf("other client: status %d", w.Code)
	}
	if w := get("192.0.2.2:1000", "192.0.2.1"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("client_ip of a limited client behind a proxy: status %d", w.Code)
	}
	// IPv6 clients share a /64.
	get("[2001:db8:1:2::1]:1000", "")
	get("[2001:db8:1:2::2]:1000", "")
	if w := get("[2001:db8:1:2:ffff::3]:1000", ""); w.Code != http.StatusTooManyRequests {
		t.Fatalf("third address of one /64: status %d", w.Code)
	}
	if w := get("[2001:db8:1:3::1]:1000", ""); w.Code != http.StatusOK {
		t.Fatalf("another /64: status %d", w.Code)
	}
	// Endpoints outside the zone are not limited.
	r := tls13(httptest.NewRequest(http.MethodGet, "/healthz", nil))
	r.RemoteAddr = "192.0.2.1:1000"
	if w, _ := serve(g, r); w.Code != http.StatusOK {
		t.Fatalf("healthz: status %d", w.Code)
	}
}

func TestRateLimitSurvivesReload(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	cfg := func(window time.Duration) *Gateway {
		return &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir,
			RateLimits: []*RateLimitZone{{Name: "survives_reload", Key: "remote_ip", Events: 1, Window: caddy.Duration(window),
				Endpoints: []string{"/verification_key"}}}}
	}
	status := func(g *Gateway) int {
		r := tls13(httptest.NewRequest(http.MethodGet, "/verification_key", nil))
		r.RemoteAddr = "198.51.100.7:1"
		w, _ := serve(g, r)
		return w.Code
	}
	a := cfg(time.Hour)
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if s := status(a); s != http.StatusOK {
		t.Fatalf("first request: %d", s)
	}
	// The reloaded config, provisioned before the old one is cleaned up,
	// finds the same bucket: still empty.
	b := cfg(time.Hour)
	if err := b.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if s := status(b); s != http.StatusTooManyRequests {
		t.Fatalf("after reload: %d, want 429 (bucket state lost)", s)
	}
	// A reload with a faster rate applies it to the existing bucket, which
	// refills at the new rate: 1 event per millisecond.
	c := cfg(time.Millisecond)
	if err := c.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if s := status(c); s != http.StatusOK {
		t.Fatalf("after raising the rate: %d", s)
	}
	if !zoneLive(t, "survives_reload") {
		t.Fatal("the zone is not live while a config uses it")
	}
	if err := c.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if zoneLive(t, "survives_reload") {
		t.Fatal("the zone outlived every config using it")
	}
}

// ppFixture is a gateway that is its own issuer, with one key per type.
type ppFixture struct {
	keys map[privacypass.TokenType]*privacypass.Key
	dir  string
}

func newPPFixture(t testing.TB) *ppFixture {
	t.Helper()
	f := &ppFixture{keys: map[privacypass.TokenType]*privacypass.Key{}, dir: t.TempDir()}
	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		k, err := privacypass.GenerateKey(typ)
		if err != nil {
			t.Fatal(err)
		}
		if err := privacypass.WriteKeyFile(f.file(typ), k); err != nil {
			t.Fatal(err)
		}
		f.keys[typ] = k
	}
	return f
}

func (f *ppFixture) file(typ privacypass.TokenType) string {
	return filepath.Join(f.dir, "k"+typ.String()+".json")
}

// gateway returns the configuration of a gateway requiring tokens on
// /welcome_information.
func (f *ppFixture) gateway(dataDir string) *Gateway {
	return &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dataDir,
		Issuer: &TokenIssuer{KeyFiles: []string{f.file(privacypass.TypeBlindRSA), f.file(privacypass.TypeVOPRF)}},
		PrivacyPass: &PrivacyPass{IssuerName: "issuer.example.com", Require: []string{"welcome_information"},
			Context: "window", Secret: strings.Repeat("s", 32)},
	}
}

// challenge asks g for a challenge of the given type.
func challengeOf(t testing.TB, g *Gateway, typ privacypass.TokenType) []byte {
	t.Helper()
	w, _ := serve(g, tls13(httptest.NewRequest(http.MethodPost, "/welcome_information", nil)))
	if w.Code != http.StatusUnauthorized {
		t.Fatalf("without a token: status %d", w.Code)
	}
	cs, err := privacypass.ParseWWWAuthenticate(w.Header().Get("WWW-Authenticate"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.TokenType() == typ {
			return c.TokenChallenge
		}
	}
	t.Fatalf("no challenge of type %s in %q", typ, w.Header().Get("WWW-Authenticate"))
	return nil
}

// mint gets a token for challenge from g's issuer endpoint.
func (f *ppFixture) mint(t testing.TB, g *Gateway, challenge []byte, typ privacypass.TokenType) string {
	t.Helper()
	p, err := privacypass.NewTokenRequest(challenge, f.keys[typ].Public())
	if err != nil {
		t.Fatal(err)
	}
	r := tls13(httptest.NewRequest(http.MethodPost, "/token-request", bytes.NewReader(p.Request)))
	r.Header.Set("Content-Type", privacypass.MediaTypeTokenRequest)
	w, _ := serve(g, r)
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != privacypass.MediaTypeTokenResponse {
		t.Fatalf("token request: status %d %q", w.Code, w.Body.String())
	}
	tok, err := p.Finalize(w.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return privacypass.FormatAuthorization(tok)
}

// endpointAnswer is what /welcome_information answers a request with no
// body once the policy admitted it.
const endpointAnswer = http.StatusUnsupportedMediaType

// redeemAt sends a request with the Authorization value to the protected
// endpoint and returns the answer.
func redeemAt(g *Gateway, auth string) *httptest.ResponseRecorder {
	r := tls13(httptest.NewRequest(http.MethodPost, "/welcome_information", nil))
	r.Header.Set("Authorization", auth)
	w, _ := serve(g, r)
	return w
}

func TestPrivacyPassRedemption(t *testing.T) {
	f := newPPFixture(t)
	g := provisioned(t, f.gateway(""))

	// Without a token: 401 token_required with challenges for both types.
	w, _ := serve(g, tls13(httptest.NewRequest(http.MethodPost, "/welcome_information", nil)))
	if w.Code != http.StatusUnauthorized || dsErrorCode(t, w.Body.Bytes()) != moh.CodeTokenRequired {
		t.Fatalf("no token: status %d", w.Code)
	}
	cs, err := privacypass.ParseWWWAuthenticate(w.Header().Get("WWW-Authenticate"))
	if err != nil || len(cs) != 2 || cs[0].MaxAge <= 0 || cs[0].TokenKey == nil {
		t.Fatalf("challenges %+v: %v", cs, err)
	}
	tc, err := privacypass.ParseTokenChallenge(cs[0].TokenChallenge)
	if err != nil || tc.IssuerName != "issuer.example.com" || !reflect.DeepEqual(tc.OriginInfo, []string{"ds.example.com"}) {
		t.Fatalf("challenge %+v: %v", tc, err)
	}

	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		auth := f.mint(t, g, challengeOf(t, g, typ), typ)
		// The token admits the request to the endpoint, which then
		// refuses the body without content type: 415, not 401.
		if w := redeemAt(g, auth); w.Code != endpointAnswer {
			t.Fatalf("%s: valid token: status %d", typ, w.Code)
		}
		w := redeemAt(g, auth)
		if w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") == "" {
			t.Fatalf("%s: replayed token: status %d", typ, w.Code)
		}
		// A modified token is refused.
		other := f.mint(t, g, challengeOf(t, g, typ), typ)
		raw, _ := base64.URLEncoding.DecodeString(strings.TrimSuffix(strings.TrimPrefix(other, `PrivateToken token="`), `"`))
		raw[len(raw)-1] ^= 1
		if w := redeemAt(g, "PrivateToken token="+base64.URLEncoding.EncodeToString(raw)); w.Code != http.StatusUnauthorized {
			t.Fatalf("%s: modified token: status %d", typ, w.Code)
		}
	}
	// A token for another origin is refused.
	foreign, err := (&privacypass.TokenChallenge{TokenType: privacypass.TypeBlindRSA, IssuerName: "issuer.example.com",
		OriginInfo: []string{"other.example"}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if w := redeemAt(g, f.mint(t, g, foreign, privacypass.TypeBlindRSA)); w.Code != http.StatusUnauthorized {
		t.Fatalf("token for another origin: status %d", w.Code)
	}
	if w := redeemAt(g, "Bearer abc"); w.Code != http.StatusUnauthorized {
		t.Fatalf("other scheme: status %d", w.Code)
	}
}

// A token spent before a restart stays spent after it: the record is in
// the SQLite store, and window contexts keep the challenge valid.
func TestPrivacyPassSpentAcrossRestart(t *testing.T) {
	f := newPPFixture(t)
	dataDir := t.TempDir()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	first := f.gateway(dataDir)
	if err := first.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	challenge := challengeOf(t, first, privacypass.TypeBlindRSA)
	spent := f.mint(t, first, challenge, privacypass.TypeBlindRSA)
	unspent := f.mint(t, first, challenge, privacypass.TypeBlindRSA)
	if w := redeemAt(first, spent); w.Code != endpointAnswer {
		t.Fatalf("first redemption: %d", w.Code)
	}
	if err := first.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, ok := servicePool.References(dataDir); ok {
		t.Fatal("the store is still open: this is not a restart")
	}
	second := f.gateway(dataDir)
	if err := second.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer second.Cleanup()
	if w := redeemAt(second, spent); w.Code != http.StatusUnauthorized {
		t.Fatalf("token spent before the restart: status %d", w.Code)
	}
	// The challenge itself is still accepted: a token for it that was not
	// spent goes through, so the refusal above is the double-spend record.
	if w := redeemAt(second, unspent); w.Code != endpointAnswer {
		t.Fatalf("unspent token after the restart: status %d", w.Code)
	}
}

func TestIssuerEndpoints(t *testing.T) {
	f := newPPFixture(t)
	g := provisioned(t, f.gateway(""))
	w, _ := serve(g, tls13(httptest.NewRequest(http.MethodGet, privacypass.DirectoryPath, nil)))
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != privacypass.MediaTypeIssuerDirectory {
		t.Fatalf("directory: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	dir, err := privacypass.ParseDirectory(w.Body.Bytes())
	if err != nil || dir.IssuerRequestURI != "/token-request" || len(dir.TokenKeys) != 2 {
		t.Fatalf("directory %+v: %v", dir, err)
	}
	post := func(ct string, body []byte) *httptest.ResponseRecorder {
		r := tls13(httptest.NewRequest(http.MethodPost, "/token-request", bytes.NewReader(body)))
		r.Header.Set("Content-Type", ct)
		w, _ := serve(g, r)
		return w
	}
	refusedBefore := decision(t, "issuer", "token_request", "issue_refused")
	if w := post("application/octet-stream", []byte{0, 2}); w.Code != http.StatusUnsupportedMediaType {
		t.Fatalf("wrong content type: %d", w.Code)
	}
	if w := post(privacypass.MediaTypeTokenRequest, []byte{0, 2, 1}); w.Code != http.StatusUnprocessableEntity {
		t.Fatalf("truncated request: %d", w.Code)
	}
	if w := post(privacypass.MediaTypeTokenRequest, make([]byte, 2000)); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized request: %d", w.Code)
	}
	if n := decision(t, "issuer", "token_request", "issue_refused") - refusedBefore; n != 3 {
		t.Fatalf("issue_refused rose by %v, want 3", n)
	}
	w, _ = serve(g, tls13(httptest.NewRequest(http.MethodGet, "/token-request", nil)))
	if w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("GET on the request path: %d", w.Code)
	}
	// Without an issuer block the paths are not the gateway's.
	plain := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com"})
	if _, next := serve(plain, tls13(httptest.NewRequest(http.MethodGet, privacypass.DirectoryPath, nil))); !next {
		t.Fatal("a gateway without issuer answered the issuer directory")
	}
}

// senderAdmit runs the sender stage of the provider endpoint at path as
// serveProvider runs it once the envelope signature verified: the admission
// request of the HTTP request with the verified sender, the endpoint's
// plan, and the refusal answer. A signed provider request needs a peer
// serving its keys over HTTPS; caddymodule/integration's
// TestSenderRateLimit sends real ones.
func senderAdmit(g *Gateway, path, sender, auth string) (*httptest.ResponseRecorder, error) {
	r := tls13(httptest.NewRequest(http.MethodPost, path, nil))
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	x := &exchange{w: w, r: r, rt: g.routes[path]}
	defer x.release()
	x.adm = admission.Request{ClientIP: clientAddr(r), Authorization: r.Header.Get("Authorization"), Sender: []byte(sender)}
	err := x.rt.plan.Sender(r.Context(), &x.adm)
	if err != nil {
		g.refuse(x, err)
	}
	return w, err
}

// TestOverLimitToken checks "connection_request needs a token or is under
// the per-provider limit" on the plan the gateway built for the endpoint,
// with the sender taken from a verified request, and the answers the
// handler writes for its refusals.
func TestOverLimitToken(t *testing.T) {
	f := newPPFixture(t)
	cfg := func(overLimit string) *Gateway {
		c := f.gateway("")
		c.PrivacyPass.Require = nil
		c.RateLimits = []*RateLimitZone{{Name: "per_provider", Key: "sender_provider", Events: 1,
			Window: caddy.Duration(time.Hour), Endpoints: []string{"connection_request"}, OverLimit: overLimit}}
		return c
	}
	g := provisioned(t, cfg(overLimitToken))
	if !g.routes["/connection_request"].plan.HasSenderZones() {
		t.Fatal("the sender zone is not in the plan of /connection_request")
	}
	admit := func(sender, auth string) (*httptest.ResponseRecorder, error) {
		return senderAdmit(g, "/connection_request", sender, auth)
	}
	if _, err := admit("a.example", ""); err != nil {
		t.Fatalf("under the limit: %v", err)
	}
	w, err := admit("a.example", "")
	if moh.DSErrorOf(err).Code != moh.CodeTokenRequired || w.Code != http.StatusUnauthorized ||
		dsErrorCode(t, w.Body.Bytes()) != moh.CodeTokenRequired {
		t.Fatalf("over the limit without a token: %v, status %d", err, w.Code)
	}
	cs, perr := privacypass.ParseWWWAuthenticate(w.Header().Get("WWW-Authenticate"))
	if perr != nil || len(cs) == 0 {
		t.Fatalf("no challenge with the refusal: %q", w.Header().Get("WWW-Authenticate"))
	}
	if _, err := admit("b.example", ""); err != nil {
		t.Fatalf("another provider has its own budget: %v", err)
	}
	auth := f.mint(t, g, cs[0].TokenChallenge, cs[0].TokenType())
	if _, err := admit("a.example", auth); err != nil {
		t.Fatalf("over the limit with a token: %v", err)
	}
	if w, err := admit("a.example", auth); moh.DSErrorOf(err).Code != moh.CodeTokenRequired || w.Code != http.StatusUnauthorized {
		t.Fatalf("over the limit with a spent token: %v, status %d", err, w.Code)
	}
	// Zones refuse with 429 when over_limit is refuse (a gateway of its
	// own data directory, so with buckets of its own).
	refusing := provisioned(t, cfg(""))
	if _, err := senderAdmit(refusing, "/connection_request", "a.example", ""); err != nil {
		t.Fatalf("refuse, under the limit: %v", err)
	}
	w, err = senderAdmit(refusing, "/connection_request", "a.example", "")
	if moh.DSErrorOf(err).Code != moh.CodeRateLimited || w.Code != http.StatusTooManyRequests ||
		w.Header().Get("Retry-After") != "3600" || w.Header().Get("WWW-Authenticate") != "" {
		t.Fatalf("refuse: %v, status %d, Retry-After %q", err, w.Code, w.Header().Get("Retry-After"))
	}
}

// TestAdmitDS checks the group and member zones as the DS reaches them:
// through the handler's admitMember, with the verified group and member,
// on the plan the gateway built for the endpoint.
func TestAdmitDS(t *testing.T) {
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com",
		RateLimits: []*RateLimitZone{
			{Name: "per_member", Key: "member", Events: 1, Window: caddy.Duration(time.Hour), Endpoints: []string{"group_operation"}},
			{Name: "per_group", Key: "group", Events: 2, Window: caddy.Duration(time.Hour), Endpoints: []string{"group_operation"}},
		}})
	code := func(path, group, member string) moh.Code {
		r := tls13(httptest.NewRequest(http.MethodPost, path, nil))
		x := &exchange{w: httptest.NewRecorder(), r: r, rt: g.routes[path]}
		err := x.admitMember(r.Context(), []byte(group), []byte(member))
		if err == nil {
			return 0
		}
		return moh.DSErrorOf(err).Code
	}
	if c := code("/group_operation", "g1", "alice"); c != 0 {
		t.Fatalf("first: %v", c)
	}
	if c := code("/group_operation", "g1", "alice"); c != moh.CodeRateLimited {
		t.Fatalf("member over its limit: %v", c)
	}
	if c := code("/group_operation", "g1", "bob"); c != 0 {
		t.Fatalf("another member: %v", c)
	}
	if c := code("/group_operation", "g1", "carol"); c != moh.CodeRateLimited {
		t.Fatalf("group over its limit: %v", c)
	}
	if c := code("/group_operation", "g2", "carol"); c != 0 {
		t.Fatalf("another group: %v", c)
	}
	// Other endpoints have no DS zones.
	if c := code("/welcome_information", "g1", "alice"); c != 0 {
		t.Fatalf("welcome_information: %v", c)
	}
}

// TestPeerList checks the peers lists the gateway installs in the verifier,
// which runs them before any key is fetched.
func TestPeerList(t *testing.T) {
	peers := func(pl *PeerList) func(string) error {
		t.Helper()
		g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", Peers: pl})
		if g.inbound.Verifier.Peers == nil {
			t.Fatal("peers list not installed in the verifier")
		}
		return g.inbound.Verifier.Peers
	}
	check := peers(&PeerList{Allow: []string{"a.example", "b.example"}, Deny: []string{"b.example"}})
	for sender, ok := range map[string]bool{"a.example": true, "b.example": false, "c.example": false} {
		if err := check(sender); (err == nil) != ok {
			t.Errorf("%s: %v", sender, err)
		}
	}
	deny := peers(&PeerList{Deny: []string{"evil.example"}})
	if deny("evil.example") == nil || deny("good.example") != nil {
		t.Error("deny-only list")
	}
}

func TestIssuerDirectoryFetch(t *testing.T) {
	f := newPPFixture(t)
	iss, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: f.keys[privacypass.TypeBlindRSA]},
		privacypass.IssuerKey{Key: f.keys[privacypass.TypeVOPRF]})
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := iss.Directory("/token-request").Marshal()
	var served atomic.Pointer[[]byte]
	served.Store(&dir)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case privacypass.DirectoryPath:
			w.Header().Set("Content-Type", privacypass.MediaTypeIssuerDirectory)
			d := *served.Load()
			if d == nil {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			w.Write(d)
		case "/redirect":
			http.Redirect(w, r, privacypass.DirectoryPath, http.StatusFound)
		case "/huge":
			w.Write(bytes.Repeat([]byte(" "), admission.MaxDirectoryBody+10))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	fed := &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{port}, RootCAFiles: []string{rootFile},
		Resolve: map[string]string{"example.com": srv.Listener.Addr().String()}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	policyOf := func(f *Federation) provider.FetchPolicy {
		p, err := f.fetchPolicy(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := "https://example.com:" + strconv.Itoa(port)

	keys, err := admission.FetchDirectoryKeys(ctx, base+privacypass.DirectoryPath, policyOf(fed), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].ID() != f.keys[privacypass.TypeBlindRSA].ID() {
		t.Fatalf("keys %v: want the type 2 key only", keys)
	}
	for path, want := range map[string]string{"/redirect": "status 302", "/huge": "larger than", "/missing": "status 404"} {
		if _, err := admission.FetchDirectoryKeys(ctx, base+path, policyOf(fed), zap.NewNop()); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", path, err, want)
		}
	}
	// The production policy refuses loopback, and ports other than 443.
	strict := &Federation{RootCAFiles: []string{rootFile}, AllowedPorts: []int{port},
		Resolve: fed.Resolve}
	if _, err := admission.FetchDirectoryKeys(ctx, base+privacypass.DirectoryPath, policyOf(strict), zap.NewNop()); err == nil ||
		!strings.Contains(err.Error(), "not a public address") {
		t.Fatalf("loopback issuer under the production policy: %v", err)
	}
	noPort := &Federation{AllowPrivateAddresses: true, RootCAFiles: []string{rootFile}, Resolve: fed.Resolve}
	if _, err := admission.FetchDirectoryKeys(ctx, base+privacypass.DirectoryPath, policyOf(noPort), zap.NewNop()); err == nil ||
		!strings.Contains(err.Error(), "refused by fetch policy: port") {
		t.Fatalf("port not allowed: %v", err)
	}

	// A gateway configured with the directory accepts tokens under its key.
	g := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", Federation: fed,
		PrivacyPass: &PrivacyPass{IssuerName: "example.com", IssuerDirectory: base + privacypass.DirectoryPath,
			Require: []string{"welcome_information"}}})
	oldKey := f.keys[privacypass.TypeBlindRSA]
	if w := redeemAt(g, mintBlindRSA(t, g, iss, oldKey)); w.Code != endpointAnswer {
		t.Fatalf("token under a directory key: status %d", w.Code)
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
	var down []byte
	served.Store(&down)
	if err := g.origin.Refresh(ctx); err == nil || !strings.Contains(err.Error(), "status 503") {
		t.Fatalf("refresh from a failing issuer: %v", err)
	}
	if w := redeemAt(g, mintBlindRSA(t, g, iss, oldKey)); w.Code != endpointAnswer {
		t.Fatalf("old key after a failed refresh: status %d", w.Code)
	}
	newDir, _ := newIss.Directory("/token-request").Marshal()
	served.Store(&newDir)
	before := g.origin.Current()
	if err := g.origin.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if g.origin.Current() == before {
		t.Fatal("the origin was not rebuilt after a key change")
	}
	if w := redeemAt(g, mintBlindRSA(t, g, newIss, newKey)); w.Code != endpointAnswer {
		t.Fatalf("new key after the refresh: status %d", w.Code)
	}
	if w := redeemAt(g, mintBlindRSA(t, g, iss, oldKey)); w.Code != http.StatusUnauthorized {
		t.Fatalf("old key after the refresh: status %d", w.Code)
	}
	// An unchanged directory does not rebuild the origin.
	same := g.origin.Current()
	if err := g.origin.Refresh(ctx); err != nil || g.origin.Current() != same {
		t.Fatalf("refresh of an unchanged directory: %v", err)
	}
}

// gatherPolicy gathers the admission policy's collectors, as a Caddy
// metrics registry does.
func gatherPolicy(t testing.TB) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	for _, c := range admission.Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// labelsOf returns the labels of a metric.
func labelsOf(m *dto.Metric) map[string]string {
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	return labels
}

// decision reads caddy_mimi_policy_decisions_total{zone,endpoint,outcome}
// from the admission policy's collectors: 0 for a series not created yet.
// The counters are package-level: callers compare deltas.
func decision(t testing.TB, zone, endpoint, outcome string) float64 {
	t.Helper()
	for _, f := range gatherPolicy(t) {
		if f.GetName() != "caddy_mimi_policy_decisions_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if l := labelsOf(m); l["zone"] == zone && l["endpoint"] == endpoint && l["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// zoneLive reports whether a rate-limit zone of that name is held by some
// configuration: the admission policy reports caddy_mimi_rate_limit_keys
// for every live zone, and for live zones only.
func zoneLive(t testing.TB, zone string) bool {
	t.Helper()
	for _, f := range gatherPolicy(t) {
		if f.GetName() != "caddy_mimi_rate_limit_keys" {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelsOf(m)["zone"] == zone {
				return true
			}
		}
	}
	return false
}

func TestPolicyMetrics(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: t.TempDir(),
		RateLimits: []*RateLimitZone{{Name: "metrics_zone", Key: "remote_ip", Events: 1, Window: caddy.Duration(time.Hour),
			Endpoints: []string{"ds_domain"}}}}
	if err := g.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer g.Cleanup()
	// A second handler of the same config registers again without error.
	register(ctx.GetMetricsRegistry(), zap.NewNop(), admission.Collectors()...)
	gather := func() map[string]float64 { return metricstest.Values(t, ctx.GetMetricsRegistry()) }
	// The decision counters live across configs (and test runs): compare
	// deltas.
	before := gather()
	for _, remote := range []string{"192.0.2.1:1", "192.0.2.2:1", "192.0.2.2:1"} {
		r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
		r.RemoteAddr = remote
		serve(g, r)
	}
	after := gather()
	got := map[string]float64{}
	for k, v := range after {
		if strings.HasPrefix(k, "caddy_mimi_policy_decisions_total") {
			v -= before[k]
		}
		got[k] = v
	}
	for name, want := range map[string]float64{
		"caddy_mimi_rate_limit_keys{zone=metrics_zone,}":                                           2,
		"caddy_mimi_rate_limit_evictions_total{zone=metrics_zone,}":                                0,
		"caddy_mimi_policy_decisions_total{endpoint=ds_domain,outcome=allowed,zone=metrics_zone,}": 2,
		"caddy_mimi_policy_decisions_total{endpoint=ds_domain,outcome=limited,zone=metrics_zone,}": 1,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}

// TestOverLimitTokenByIP checks over_limit token on a zone keyed on the
// request, through ServeHTTP: over the limit a token admits the request.
func TestOverLimitTokenByIP(t *testing.T) {
	f := newPPFixture(t)
	cfg := f.gateway("")
	cfg.PrivacyPass.Require = nil
	cfg.RateLimits = []*RateLimitZone{{Name: "per_ip", Key: "remote_ip", Events: 1, Window: caddy.Duration(time.Hour),
		Endpoints: []string{"welcome_information"}, OverLimit: "token"}}
	g := provisioned(t, cfg)
	// Under the limit no token is needed (and none is spent).
	if w := redeemAt(g, ""); w.Code != endpointAnswer {
		t.Fatalf("under the limit: status %d", w.Code)
	}
	w := redeemAt(g, "")
	if w.Code != http.StatusUnauthorized || dsErrorCode(t, w.Body.Bytes()) != moh.CodeTokenRequired {
		t.Fatalf("over the limit without a token: status %d", w.Code)
	}
	auth := f.mint(t, g, challengeOf(t, g, privacypass.TypeBlindRSA), privacypass.TypeBlindRSA)
	if w := redeemAt(g, auth); w.Code != endpointAnswer {
		t.Fatalf("over the limit with a token: status %d", w.Code)
	}
	if w := redeemAt(g, auth); w.Code != http.StatusUnauthorized {
		t.Fatalf("over the limit with the same token again: status %d", w.Code)
	}
}

// TestOriginSurvivesReload checks that a reload with the same privacy_pass
// settings keeps the running origin, so a random-context challenge minted
// before the reload is still accepted after it, while changed settings
// make a new origin.
func TestOriginSurvivesReload(t *testing.T) {
	f := newPPFixture(t)
	dataDir := t.TempDir()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	cfg := func(lifetime time.Duration) *Gateway {
		g := f.gateway(dataDir)
		g.PrivacyPass.Context, g.PrivacyPass.Secret = "random", ""
		g.PrivacyPass.Lifetime = caddy.Duration(lifetime)
		return g
	}
	old := cfg(time.Minute)
	if err := old.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	challenge := challengeOf(t, old, privacypass.TypeBlindRSA)
	first := f.mint(t, old, challenge, privacypass.TypeBlindRSA)
	second := f.mint(t, old, challenge, privacypass.TypeBlindRSA)

	same := cfg(time.Minute)
	if err := same.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if same.origin != old.origin {
		t.Fatal("a reload with the same settings built a new origin")
	}
	if w := redeemAt(same, first); w.Code != endpointAnswer {
		t.Fatalf("challenge from before the reload: status %d", w.Code)
	}

	changed := cfg(2 * time.Minute)
	if err := changed.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := same.Cleanup(); err != nil {
		t.Fatal(err)
	}
	defer changed.Cleanup()
	if changed.origin == same.origin {
		t.Fatal("changed settings reused the origin")
	}
	if w := redeemAt(changed, second); w.Code != http.StatusUnauthorized {
		t.Fatalf("random-context challenge of a replaced origin: status %d", w.Code)
	}
}

// failingStore is a SpentStore whose backend is down.
type failingStore struct{}

func (failingStore) MarkSpent(context.Context, []byte, time.Time) (bool, error) {
	return false, errors.New("disk on fire")
}

// withOrigin rebuilds g's admission policy around origin o, from g's
// configuration as provisionPolicy builds it, and installs its plans in
// g's routes. The policy is closed when the test ends.
func withOrigin(t testing.TB, g *Gateway, o *admission.Origin) {
	t.Helper()
	rebuildPolicy(t, g, func(cfg *admission.Config) { cfg.Origin = o })
}

// rebuildPolicy rebuilds g's admission policy from g's own configuration,
// its issuer and origin, as edit changes it, and gives every route its new
// plan.
func rebuildPolicy(tb testing.TB, g *Gateway, edit func(*admission.Config)) {
	tb.Helper()
	cfg, err := g.admissionConfig()
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Origin, cfg.Issuer = g.origin, g.issuer
	edit(&cfg)
	p, err := admission.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	for _, rt := range g.routes {
		rt.plan = p.Plan(rt.name)
	}
}

// TestRedeemStoreFailure checks that a double-spend store failure is a 503
// backend_unavailable, not a 401: the token is fine and may be retried.
func TestRedeemStoreFailure(t *testing.T) {
	f := newPPFixture(t)
	g := provisioned(t, f.gateway(""))
	// The same origin as g's, but its double-spend record is down.
	o, err := admission.NewOrigin(context.Background(), admission.OriginConfig{OriginConfig: privacypass.OriginConfig{
		IssuerName: "issuer.example.com", OriginInfo: []string{"ds.example.com"},
		Keys:  []*privacypass.Key{f.keys[privacypass.TypeBlindRSA], f.keys[privacypass.TypeVOPRF]},
		Spent: failingStore{}}})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	withOrigin(t, g, o)
	auth := f.mint(t, g, challengeOf(t, g, privacypass.TypeBlindRSA), privacypass.TypeBlindRSA)
	before := decision(t, "privacy_pass", "welcome_information", "token_unavailable")
	w := redeemAt(g, auth)
	if w.Code != http.StatusServiceUnavailable || dsErrorCode(t, w.Body.Bytes()) != moh.CodeBackendUnavailable {
		t.Fatalf("store failure: status %d", w.Code)
	}
	if w.Header().Get("WWW-Authenticate") != "" {
		t.Fatal("a store failure asked for another token")
	}
	if decision(t, "privacy_pass", "welcome_information", "token_unavailable")-before != 1 {
		t.Fatal("token_unavailable not counted")
	}
}

// TestRedeemStoreFailureLogSampled replays one token 1000 times while the
// double-spend store is down: each replay is a 503, and its error line is
// sampled, so that a peer cannot flood the log.
func TestRedeemStoreFailureLogSampled(t *testing.T) {
	f := newPPFixture(t)
	g := provisioned(t, f.gateway(""))
	core, logs := observer.New(zapcore.InfoLevel)
	g.logger = zap.New(core)
	g.sampled = sampled(g.logger)
	o, err := admission.NewOrigin(context.Background(), admission.OriginConfig{OriginConfig: privacypass.OriginConfig{
		IssuerName: "issuer.example.com", OriginInfo: []string{"ds.example.com"},
		Keys:  []*privacypass.Key{f.keys[privacypass.TypeBlindRSA], f.keys[privacypass.TypeVOPRF]},
		Spent: failingStore{}}})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	withOrigin(t, g, o) // the policy as provisionPolicy builds it, with g's loggers
	auth := f.mint(t, g, challengeOf(t, g, privacypass.TypeBlindRSA), privacypass.TypeBlindRSA)
	for i := range 1000 {
		if w := redeemAt(g, auth); w.Code != http.StatusServiceUnavailable {
			t.Fatalf("replay %d: status %d, want 503", i, w.Code)
		}
	}
	if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n == 0 || n > 50 {
		t.Errorf("one token replayed 1000 times while the store was down wrote %d error lines, want 1 to 50", n)
	}
}

// tokenDecisions sums the Privacy Pass outcomes counted on an endpoint.
func tokenDecisions(t testing.TB, endpoint string) float64 {
	t.Helper()
	var n float64
	for _, o := range []string{"token_accepted", "token_refused", "token_missing", "token_unavailable"} {
		n += decision(t, "privacy_pass", endpoint, o)
	}
	return n
}

// TestZonesBeforeTokens checks that a client over a refusing zone is
// answered 429 before any token is looked at, even on an endpoint that
// requires one.
func TestZonesBeforeTokens(t *testing.T) {
	f := newPPFixture(t)
	cfg := f.gateway("")
	cfg.RateLimits = []*RateLimitZone{{Name: "per_ip", Key: "remote_ip", Events: 1, Window: caddy.Duration(time.Hour),
		Endpoints: []string{"welcome_information"}}}
	g := provisioned(t, cfg)
	challenge := challengeOf(t, g, privacypass.TypeBlindRSA) // spends the only event
	auth := f.mint(t, g, challenge, privacypass.TypeBlindRSA)
	before := tokenDecisions(t, "welcome_information")
	w := redeemAt(g, auth)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("WWW-Authenticate") != "" {
		t.Fatalf("over the limit with a token: status %d", w.Code)
	}
	if tokenDecisions(t, "welcome_information") != before {
		t.Fatal("the token was checked although the zone refused the request")
	}
}

// originReload is a gateway config whose origin accepts the keys of an
// issuer directory, reached through the federation policy at one of two
// addresses: before publishes the fixture's blind RSA key, after the
// rotated key.
type originReload struct {
	before, after *httptest.Server
	rotated       *privacypass.Key
	cfg           func(issuerAt *httptest.Server) *Gateway
}

func newOriginReload(t *testing.T) *originReload {
	t.Helper()
	f := newPPFixture(t)
	rotated, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
	if err != nil {
		t.Fatal(err)
	}
	directory := func(k *privacypass.Key) *httptest.Server {
		iss, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k})
		if err != nil {
			t.Fatal(err)
		}
		dir, err := iss.Directory("/token-request").Marshal()
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", privacypass.MediaTypeIssuerDirectory)
			w.Write(dir) //nolint:errcheck // test server
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	before, after := directory(f.keys[privacypass.TypeBlindRSA]), directory(rotated)
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: before.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	port := func(s *httptest.Server) int { return s.Listener.Addr().(*net.TCPAddr).Port }
	dataDir := t.TempDir()
	os.Chmod(dataDir, 0o700) //nolint:errcheck // else the service tightens it and says so
	return &originReload{before: before, after: after, rotated: rotated, cfg: func(issuerAt *httptest.Server) *Gateway {
		return &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dataDir,
			Federation: &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{port(before), port(after)},
				RootCAFiles: []string{rootFile}, Resolve: map[string]string{"example.com": issuerAt.Listener.Addr().String()}},
			PrivacyPass: &PrivacyPass{IssuerName: "example.com", Require: []string{"welcome_information"},
				IssuerDirectory: "https://example.com:" + strconv.Itoa(port(before)) + privacypass.DirectoryPath}}
	}}
}

// acceptsRotated refreshes g's origin and reports whether a token under
// the rotated key is then accepted, which it is when the refresh reached
// the issuer at the after address.
func (o *originReload) acceptsRotated(t *testing.T, g *Gateway) bool {
	t.Helper()
	if err := g.origin.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	iss, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: o.rotated})
	if err != nil {
		t.Fatal(err)
	}
	return redeemAt(g, mintBlindRSA(t, g, iss, o.rotated)).Code == endpointAnswer
}

// TestOriginTakesReloadedFetchPolicy reloads a gateway whose origin
// accepts the keys of an issuer directory with the same privacy_pass
// settings but a federation policy that reaches the issuer at another
// address: the reloaded config keeps the pooled origin, and its next
// directory refresh goes through the new policy, so a token under the key
// the issuer publishes there is accepted.
func TestOriginTakesReloadedFetchPolicy(t *testing.T) {
	o := newOriginReload(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	old := o.cfg(o.before)
	if err := old.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	reloaded := o.cfg(o.after)
	if err := reloaded.Provision(ctx); err != nil {
		old.Cleanup()
		t.Fatal(err)
	}
	defer reloaded.Cleanup()
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if reloaded.origin != old.origin {
		t.Fatal("the reload with the same privacy_pass settings built a new origin")
	}
	if !o.acceptsRotated(t, reloaded) {
		t.Fatal("a token under the key of the issuer the reloaded fetch policy reaches was refused (the refresh used the first config's policy)")
	}
}

// TestOriginKeepsPolicyOfRejectedReload provisions, beside a running
// gateway, a config with the same privacy_pass settings whose federation
// policy reaches the issuer at another address, and cleans it up, as
// Caddy does with a config it rejects after its gateways provisioned (an
// app failed to start): the pooled origin's next refresh must go through
// the running config's policy, not the rejected one's.
func TestOriginKeepsPolicyOfRejectedReload(t *testing.T) {
	o := newOriginReload(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	running := o.cfg(o.after)
	if err := running.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer running.Cleanup()
	rejected := o.cfg(o.before)
	err := rejected.Provision(ctx)
	if cerr := rejected.Cleanup(); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !o.acceptsRotated(t, running) {
		t.Fatal("a token under the key of the issuer the running config reaches was refused: the origin refreshed through the rejected config's policy")
	}
}

// mintBlindRSA answers a blind RSA challenge of g with a token that iss
// issues under its key k, as an Authorization header value.
func mintBlindRSA(t *testing.T, g *Gateway, iss *privacypass.Issuer, k *privacypass.Key) string {
	t.Helper()
	p, err := privacypass.NewTokenRequest(challengeOf(t, g, privacypass.TypeBlindRSA), k.Public())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := iss.Issue(p.Request)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := p.Finalize(resp)
	if err != nil {
		t.Fatal(err)
	}
	return privacypass.FormatAuthorization(tok)
}
