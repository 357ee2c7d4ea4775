package admission

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// gatewayEndpoints is the endpoint table of a gateway with the issuer role,
// as the glue describes it.
func gatewayEndpoints() []Endpoint {
	eps := []Endpoint{
		{Name: "ds_domain", Path: "/.well-known/mimi/ds-domain", NoToken: true},
		{Name: "healthz", Path: "/healthz", NotDefault: true, NoToken: true},
		{Name: "verification_key", Path: "/verification_key"},
		{Name: "issuer_directory", Path: privacypass.DirectoryPath, Kind: KindIssuer, NotDefault: true, NoToken: true},
		{Name: "token_request", Path: DefaultRequestPath, Kind: KindIssuer, NoToken: true},
	}
	for _, n := range []string{"group_operation", "welcome_information", "external_commit_information",
		"attachment_upload", "attachment_download", "attachment_delete", "attachment_copy"} {
		eps = append(eps, Endpoint{Name: n, Path: "/" + n, Kind: KindClient})
	}
	for _, n := range []string{"deliver_message", "connection_request", "connection_key_packages", "group_key_packages"} {
		eps = append(eps, Endpoint{Name: n, Path: "/" + n, Kind: KindProvider})
	}
	return eps
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newPolicy builds a policy over the gateway endpoints in a scope of its
// own and commits it, as an accepted configuration does; it is closed when
// the test ends.
func newPolicy(t testing.TB, cfg Config) *Policy {
	t.Helper()
	if cfg.Scope == "" {
		cfg.Scope = t.Name()
	}
	if cfg.Endpoints == nil {
		cfg.Endpoints = gatewayEndpoints()
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// zoneCfg is a zone of events per window with burst events.
func zoneCfg(name string, key KeyKind, events int, window time.Duration, endpoints ...string) ZoneConfig {
	return ZoneConfig{Name: name, Key: key, Rate: float64(events) / window.Seconds(), Burst: events, Endpoints: endpoints}
}

// ip parses an address.
func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// counter reads a decision counter.
func counter(zone, endpoint, outcome string) float64 {
	var m dto.Metric
	if err := decisions.WithLabelValues(zone, endpoint, outcome).Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// codeOf returns the DSError code of err, 0 for nil.
func codeOf(err error) moh.Code {
	if err == nil {
		return 0
	}
	return moh.DSErrorOf(err).Code
}

// refusal returns err as a *Refusal or fails.
func refusal(t testing.TB, err error) *Refusal {
	t.Helper()
	r, ok := err.(*Refusal)
	if !ok {
		t.Fatalf("%v (%T) is not a *Refusal", err, err)
	}
	return r
}

// ppFixture is a Privacy Pass issuer with one key per type, written to key
// files, and an SQLite store for the double-spend record.
type ppFixture struct {
	keys   map[privacypass.TokenType]*privacypass.Key
	files  []string
	issuer *Issuer
	dbPath string
	store  *sqlitestore.Store
}

func newPPFixture(t testing.TB) *ppFixture {
	t.Helper()
	dir := t.TempDir()
	f := &ppFixture{keys: map[privacypass.TokenType]*privacypass.Key{}, dbPath: filepath.Join(dir, sqlitestore.DefaultFileName)}
	for _, typ := range []privacypass.TokenType{privacypass.TypeBlindRSA, privacypass.TypeVOPRF} {
		k, err := privacypass.GenerateKey(typ)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "k"+typ.String()+".json")
		if err := privacypass.WriteKeyFile(file, k); err != nil {
			t.Fatal(err)
		}
		f.keys[typ] = k
		f.files = append(f.files, file)
	}
	var err error
	if f.issuer, err = NewIssuer(f.files, ""); err != nil {
		t.Fatal(err)
	}
	f.openStore(t)
	return f
}

// openStore opens the SQLite store, closed when the test ends.
func (f *ppFixture) openStore(t testing.TB) {
	t.Helper()
	s, err := sqlitestore.Open(context.Background(), f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f.store = s
}

// origin returns an origin accepting the issuer's keys with window
// contexts, bound to ds.example.com, closed when the test ends.
func (f *ppFixture) origin(t testing.TB) *Origin {
	t.Helper()
	o, err := NewOrigin(context.Background(), OriginConfig{OriginConfig: privacypass.OriginConfig{
		IssuerName: "issuer.example.com", OriginInfo: []string{"ds.example.com"}, Keys: f.issuer.Keys(),
		Mode: privacypass.ContextWindow, Secret: []byte(strings.Repeat("s", 32)), Spent: f.store,
	}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// challengeOf returns the challenge of the given type in a token_required
// refusal.
func challengeOf(t testing.TB, err error, typ privacypass.TokenType) []byte {
	t.Helper()
	r := refusal(t, err)
	if r.Err.Code != moh.CodeTokenRequired {
		t.Fatalf("refusal %v is not token_required", r)
	}
	cs, perr := privacypass.ParseWWWAuthenticate(r.Challenge)
	if perr != nil {
		t.Fatal(perr)
	}
	for _, c := range cs {
		if c.TokenType() == typ {
			return c.TokenChallenge
		}
	}
	t.Fatalf("no challenge of type %s in %q", typ, r.Challenge)
	return nil
}

// mint gets a token for challenge from the fixture's issuer and returns
// its Authorization value.
func (f *ppFixture) mint(t testing.TB, challenge []byte, typ privacypass.TokenType) string {
	t.Helper()
	return mintWith(t, f.issuer.Issue, f.keys[typ], challenge)
}

// mintWith mints a token for challenge under k through issue.
func mintWith(t testing.TB, issue func([]byte) ([]byte, error), k *privacypass.Key, challenge []byte) string {
	t.Helper()
	p, err := privacypass.NewTokenRequest(challenge, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := issue(p.Request)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := p.Finalize(resp)
	if err != nil {
		t.Fatal(err)
	}
	return privacypass.FormatAuthorization(tok)
}

// mapReplacer expands "{x}" to m["x"].
type mapReplacer map[string]string

func (m mapReplacer) ReplaceAll(input, empty string) string {
	v, ok := m[strings.Trim(input, "{}")]
	if !ok || v == "" {
		return empty
	}
	return v
}

// writeFile writes a test file readable by its owner only.
func writeFile(path string, data []byte) error { return os.WriteFile(path, data, 0o600) }
