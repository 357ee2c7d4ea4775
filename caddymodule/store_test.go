package caddymodule

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mimi/caddy-mimi/internal/metricstest"
	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestStoreCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        *Gateway
		wantErr     string
	}{
		{"sqlite", `mimi {
			store sqlite
		}`, &Gateway{Store: &StoreConfig{Backend: "sqlite"}}, ""},
		{"postgres", `mimi {
			store postgres "postgres://mimi:{env.PGPASS}@db.internal/mimi?sslmode=verify-full" {
				max_conns 8
			}
			key_secret {env.MIMI_KEY_SECRET}
		}`, &Gateway{Store: &StoreConfig{Backend: "postgres", DSN: "postgres://mimi:{env.PGPASS}@db.internal/mimi?sslmode=verify-full", MaxConns: 8},
			KeySecret: "{env.MIMI_KEY_SECRET}"}, ""},
		{"postgres from placeholders", `mimi {
			store postgres {env.MIMI_PG_DSN}
			key_secret_file /run/secrets/mimi_key
		}`, &Gateway{Store: &StoreConfig{Backend: "postgres", DSN: "{env.MIMI_PG_DSN}"}, KeySecretFile: "/run/secrets/mimi_key"}, ""},
		{"no backend", "mimi {\n store\n}", nil, "wrong argument count"},
		{"unknown backend", "mimi {\n store mysql dsn\n}", nil, "invalid store backend 'mysql'"},
		{"postgres without dsn", "mimi {\n store postgres\n}", nil, "one argument, the connection string"},
		{"postgres with two arguments", "mimi {\n store postgres a b\n}", nil, "one argument, the connection string"},
		{"sqlite with an argument", "mimi {\n store sqlite x\n}", nil, "store sqlite takes no arguments"},
		{"sqlite with a block", "mimi {\n store sqlite {\n max_conns 2\n }\n}", nil, "store sqlite takes no arguments"},
		{"zero max_conns", "mimi {\n store postgres x {\n max_conns 0\n }\n}", nil, "invalid max_conns '0'"},
		{"duplicate max_conns", "mimi {\n store postgres x {\n max_conns 2\n max_conns 3\n }\n}", nil, "duplicate store option 'max_conns'"},
		{"unknown store option", "mimi {\n store postgres x {\n min_conns 2\n }\n}", nil, "unrecognized store option 'min_conns'"},
		{"duplicate store", "mimi {\n store sqlite\n store sqlite\n}", nil, "duplicate mimi option 'store'"},
		{"key_secret without value", "mimi {\n key_secret\n}", nil, "key_secret takes one argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := new(Gateway)
			err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if !parsedAsWanted(t, err, tc.wantErr) {
				return
			}
			if !reflect.DeepEqual(g, tc.want) {
				t.Fatalf("got %+v, want %+v", g, tc.want)
			}
		})
	}
}

func TestStoreValidate(t *testing.T) {
	// Gateways on one database must name a storage for attachments
	// (TestAttachmentStorageNamedWithPostgres); these need none.
	base := func() *Gateway {
		return &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", Attachments: &Attachments{Disabled: true}}
	}
	pg := &StoreConfig{Backend: "postgres", DSN: "postgres://db/mimi"}
	for _, tc := range []struct {
		name    string
		edit    func(*Gateway)
		wantErr string // "" when valid
	}{
		{"default", func(*Gateway) {}, ""},
		{"sqlite with a secret", func(g *Gateway) { g.KeySecret = "{env.S}" }, ""},
		{"postgres with a secret", func(g *Gateway) { g.Store, g.KeySecret = pg, "{env.S}" }, ""},
		{"postgres with a secret file", func(g *Gateway) { g.Store, g.KeySecretFile = pg, "/run/s" }, ""},
		{"postgres without a secret", func(g *Gateway) { g.Store = pg }, "needs key_secret"},
		{"both secrets", func(g *Gateway) { g.KeySecret, g.KeySecretFile = "{env.S}", "/run/s" }, "at most one"},
		{"unknown backend", func(g *Gateway) { g.Store = &StoreConfig{Backend: "mysql"} }, "not sqlite or postgres"},
		{"postgres without dsn", func(g *Gateway) { g.Store, g.KeySecret = &StoreConfig{Backend: "postgres"}, "x" }, "dsn) is required"},
		{"sqlite with a dsn", func(g *Gateway) { g.Store = &StoreConfig{Backend: "sqlite", DSN: "x"} }, "apply to backend postgres only"},
		{"too many conns", func(g *Gateway) {
			g.Store, g.KeySecret = &StoreConfig{Backend: "postgres", DSN: "x", MaxConns: maxStoreConns + 1}, "x"
		}, "max_conns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := base()
			tc.edit(g)
			err := g.Validate()
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestStoreSecretResolution checks that the secret and the connection
// string are read through placeholders and files, and that errors never
// quote them.
func TestStoreSecretResolution(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	encoded := base64.StdEncoding.EncodeToString(secret)
	t.Setenv("MIMI_TEST_KEY_SECRET", encoded)
	t.Setenv("MIMI_TEST_PG_PASS", "hunter2")
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte(encoded+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		g       Gateway
		wantDSN string
		wantErr string
	}{
		{"placeholder", Gateway{KeySecret: "{env.MIMI_TEST_KEY_SECRET}"}, "", ""},
		{"file", Gateway{KeySecretFile: file}, "", ""},
		{"dsn placeholder", Gateway{KeySecret: encoded, Store: &StoreConfig{Backend: "postgres", DSN: "postgres://mimi:{env.MIMI_TEST_PG_PASS}@db/mimi"}},
			"postgres://mimi:hunter2@db/mimi", ""},
		{"unset placeholder", Gateway{KeySecret: "{env.MIMI_TEST_UNSET}"}, "", "key_secret"},
		{"unset dsn placeholder", Gateway{KeySecret: encoded, Store: &StoreConfig{Backend: "postgres", DSN: "postgres://mimi:{env.MIMI_TEST_UNSET}@db/mimi"}},
			"", "connection string"},
		{"short secret", Gateway{KeySecret: "c2hvcnQ="}, "", "not 32 bytes"},
		{"missing file", Gateway{KeySecretFile: file + ".missing"}, "", "key_secret_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts, got, err := tc.g.storeOptions()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), encoded) || strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error quotes a secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, secret) || opts.Postgres != tc.wantDSN {
				t.Fatalf("secret %x, dsn %q; want %x, %q", got, opts.Postgres, secret, tc.wantDSN)
			}
		})
	}
}

// verificationKeys answers GET /verification_key on g.
func verificationKeys(t *testing.T, g *Gateway) []byte {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/verification_key", nil)
	r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true}
	w, _ := serve(g, r)
	if w.Code != http.StatusOK {
		t.Fatalf("/verification_key answered %d", w.Code)
	}
	return w.Body.Bytes()
}

// pgGateway returns the options of a gateway of example.com on dsn with
// its own data directory, as one of several behind a load balancer.
func pgGateway(t *testing.T, dsn, scheme string) *Gateway {
	dir := t.TempDir()
	os.Chmod(dir, 0o700) //nolint:errcheck
	return &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir,
		Store:     &StoreConfig{Backend: "postgres", DSN: dsn, MaxConns: 4},
		KeySecret: "{env.MIMI_TEST_KEY_SECRET}", KeyScheme: scheme,
		// Gateways on one database must name a storage for attachments
		// (TestAttachmentStorageNamedWithPostgres); these need none.
		Attachments: &Attachments{Disabled: true}}
}

// TestTwoGatewaysOnePostgres provisions two gateways of one provider on one
// PostgreSQL database, each with its own data directory: they publish the
// same keys and sign with the same key; a reload of both with a new key
// scheme (each decides to rotate at once) creates one key, which both then
// publish. A mimi_local provisioned before its gateway joins the gateway's
// PostgreSQL-backed service, not a SQLite one of its own.
func TestTwoGatewaysOnePostgres(t *testing.T) {
	t.Setenv("MIMI_TEST_KEY_SECRET", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32)))
	dsn := pgtest.NewDB(t)

	// mimi_local first: Caddy provisions a config's servers in no set
	// order.
	a := pgGateway(t, dsn, "")
	local := newLocalServer(t, &LocalAPI{Providers: []string{"example.com"}, DataDir: a.DataDir})
	if local.h.svc != nil {
		t.Fatal("mimi_local joined a service before its gateway chose the store")
	}
	if n, _ := servicePool.References(a.DataDir); n != 0 {
		t.Fatal("mimi_local opened a service before its gateway chose the store")
	}
	a = provisioned(t, a)
	b := provisioned(t, pgGateway(t, dsn, ""))
	if a.svc == b.svc {
		t.Fatal("the gateways share one in-process service; the test needs two")
	}
	if ka, kb := verificationKeys(t, a), verificationKeys(t, b); !bytes.Equal(ka, kb) {
		t.Fatal("the gateways publish different keys")
	}
	now := time.Now()
	ca, _ := a.svc.Keys().Current(now)
	cb, _ := b.svc.Keys().Current(now)
	if !bytes.Equal(ca.ID, cb.ID) {
		t.Fatalf("the gateways sign with %x and %x", ca.ID, cb.ID)
	}

	if code, _ := local.do(t, "alice", http.MethodGet, "/key_packages?client=mimi://example.com/u/alice/1", nil); code == http.StatusServiceUnavailable {
		t.Fatal("mimi_local could not join the service at its first request")
	}
	local.h.joined.mu.Lock()
	joined := local.h.svc
	local.h.joined.mu.Unlock()
	if joined != a.svc {
		t.Fatal("mimi_local did not join the gateway's service at its first request")
	}

	// Both gateways reloaded with a new scheme at once.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	var wg sync.WaitGroup
	reloaded := make([]*Gateway, 2)
	for i, old := range []*Gateway{a, b} {
		wg.Go(func() {
			g := pgGateway(t, dsn, "ecdsa_secp256r1_sha256")
			g.DataDir = old.DataDir
			if err := g.Provision(ctx); err != nil {
				t.Errorf("reloading gateway %d: %v", i, err)
				return
			}
			t.Cleanup(func() { g.Cleanup() })
			reloaded[i] = g
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ka, kb := verificationKeys(t, reloaded[0]), verificationKeys(t, reloaded[1])
		now = time.Now()
		ca, _ = a.svc.Keys().Current(now)
		cb, _ = b.svc.Keys().Current(now)
		if bytes.Equal(ka, kb) && len(a.svc.Keys().Published(now)) == 2 && bytes.Equal(ca.ID, cb.ID) {
			// Both publish the new key at once; it signs on both from its
			// not_before, SuccessorLead after the rotation.
			succ := a.svc.Keys().Published(now)[0]
			from := time.Unix(int64(succ.NotBefore), 0)
			if succ.Scheme != moh.SchemeECDSAP256SHA256 || bytes.Equal(succ.KeyID, ca.ID) || from.Sub(now) > provider.SuccessorLead {
				t.Fatalf("the new key %x has scheme 0x%04x and signs from %v; the gateways sign with %x now", succ.KeyID, uint16(succ.Scheme), from, ca.ID)
			}
			ca, _ = a.svc.Keys().Current(from)
			cb, _ = b.svc.Keys().Current(from)
			if !bytes.Equal(ca.ID, succ.KeyID) || !bytes.Equal(cb.ID, succ.KeyID) {
				t.Fatalf("at the new key's not_before the gateways sign with %x and %x, want %x", ca.ID, cb.ID, succ.KeyID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the gateways do not publish the same two keys 30 s after the reload")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rows, err := a.svc.Store().ListSigningKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("the database holds %d signing keys, want 2: exactly one rotation", len(rows))
	}
}

// TestStoreRoundTripMetric checks that a gateway on PostgreSQL exports its
// store's round trips to the database, and that a write moves the counter.
func TestStoreRoundTripMetric(t *testing.T) {
	t.Setenv("MIMI_TEST_KEY_SECRET", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32)))
	g := provisioned(t, pgGateway(t, pgtest.NewDB(t), ""))
	name := "caddy_mimi_store_round_trips_total{data_dir=" + g.DataDir + ",}"
	before, ok := metricstest.Of(t, storeStats{})[name]
	if !ok {
		t.Fatalf("no %s", name)
	}
	if _, err := g.svc.Store().MarkSpent(context.Background(), bytes.Repeat([]byte{7}, 32), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if after := metricstest.Of(t, storeStats{})[name]; after < before+1 {
		t.Fatalf("%s went from %v to %v after a write", name, before, after)
	}
}
