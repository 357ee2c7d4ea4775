package caddymodule

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// Ports of the two sites of the data-directory conflict tests.
const (
	conflictSiteA = "127.0.0.1:31410"
	conflictSiteB = "127.0.0.1:31411"
)

// conflictBackendKey is a legacy backend key of the tests (32 bytes).
const conflictBackendKey = "0123456789abcdef0123456789abcdef"

// conflictDir makes a data directory for the gateways of a test.
func conflictDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// conflictConfig is a Caddy JSON config with two sites, on conflictSiteA
// and conflictSiteB, each with a gateway on dir: provider a.example and
// b.example, with the options a and b added.
func conflictConfig(t *testing.T, dir string, a, b map[string]any) []byte {
	t.Helper()
	gateway := func(p string, extra map[string]any) map[string]any {
		g := map[string]any{"handler": "mimi", "providers": []string{p}, "ds_domain": "ds." + p, "data_dir": dir}
		maps.Copy(g, extra)
		return g
	}
	server := func(listen string, g map[string]any) map[string]any {
		return map[string]any{"listen": []string{listen}, "automatic_https": map[string]any{"disable": true},
			"routes": []any{map[string]any{"handle": []any{g}}}}
	}
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(filepath.Dir(dir), "storage")},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{
			"a": server(conflictSiteA, gateway("a.example", a)),
			"b": server(conflictSiteB, gateway("b.example", b)),
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// loadCaddy loads cfg into the process's Caddy; a config that loads is
// stopped when the test ends.
func loadCaddy(t *testing.T, cfg []byte) error {
	t.Helper()
	if err := caddy.Load(cfg, true); err != nil {
		return err
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
	})
	return nil
}

// TestDataDirConflictRefused loads, in a real Caddy, configs whose two
// sites share a data directory but differ in an option of a part pooled
// per directory: each must be refused, naming both gateways, the
// directory and the option. Before, the config loaded and the pooled part
// ran with the option of the site that committed last: with delivery
// backend on site A and the local queues on B, A's messages waited in the
// outbox for a backend the sender did not have, until give_up_after
// dropped them.
func TestDataDirConflictRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	backend := map[string]any{"target": "backend", "url": "http://127.0.0.1:31412/mimi", "key": conflictBackendKey}
	otherBackend := map[string]any{"target": "backend", "url": "http://127.0.0.1:31413/mimi", "key": conflictBackendKey}
	zone := func(events int) map[string]any {
		return map[string]any{"name": "by_peer", "key": "sender_provider", "events": events, "window": "1s", "burst": 10}
	}
	secret := "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	for _, tc := range []struct {
		name   string
		a, b   map[string]any
		option string
	}{
		{"delivery backend vs local queues", map[string]any{"delivery": backend}, nil, "delivery (backend vs local_queues)"},
		{"two backends", map[string]any{"delivery": backend}, map[string]any{"delivery": otherBackend}, "delivery backend url"},
		{"give_up_after", map[string]any{"federation": map[string]any{"give_up_after": "1h"}}, nil,
			"federation give_up_after (1h0m0s vs 72h0m0s)"},
		{"max_backoff", nil, map[string]any{"federation": map[string]any{"max_backoff": "10s"}}, "federation max_backoff (5m0s vs 10s)"},
		{"max_backlog_messages", map[string]any{"federation": map[string]any{"max_backlog_messages": 10}}, nil,
			"federation max_backlog_messages (10 vs 100000)"},
		{"max_backlog_bytes", map[string]any{"federation": map[string]any{"max_backlog_bytes": 4 << 20}}, nil,
			"federation max_backlog_bytes"},
		{"fetch policy", map[string]any{"federation": map[string]any{"allow_private_addresses": true}}, nil,
			"federation allow_private_addresses (true vs false)"},
		{"allowed ports", map[string]any{"federation": map[string]any{"allowed_ports": []int{8443}}}, nil, "federation allow_ports"},
		{"fetch timeout", map[string]any{"federation": map[string]any{"timeout": "20s"}}, nil, "federation timeout (20s vs 5s)"},
		{"key_rotation", map[string]any{"key_rotation": "240h"}, nil, "key_rotation (240h0m0s vs 720h0m0s)"},
		{"key_scheme", nil, map[string]any{"key_scheme": "ecdsa_secp256r1_sha256"}, "key_scheme (ed25519 vs ecdsa_secp256r1_sha256)"},
		{"key_secret", map[string]any{"key_secret": secret}, nil, "key_secret (set vs none)"},
		{"rate-limit zone", map[string]any{"rate_limits": []any{zone(5)}}, map[string]any{"rate_limits": []any{zone(50)}},
			"rate_limit by_peer rate (5/s vs 50/s)"},
		{"mutual tls", map[string]any{"mutual_tls": map[string]any{"present_only": true}}, nil,
			"mutual_tls certificate presented to peers (Caddy's certificate of ds.a.example vs off)"},
		{"attachment storage", map[string]any{"attachments": map[string]any{"storage": map[string]any{"backend": "local", "root": t.TempDir()}}},
			nil, "attachments storage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := conflictDir(t)
			err := loadCaddy(t, conflictConfig(t, dir, tc.a, tc.b))
			if err == nil {
				t.Fatalf("a config whose sites on one data_dir differ in %s loaded", tc.option)
			}
			msg := err.Error()
			for _, want := range []string{"ds_domain ds.a.example (provider a.example)", "ds_domain ds.b.example (provider b.example)",
				"share data_dir " + dir, "give them separate data_dirs or the same setting"} {
				if !strings.Contains(msg, want) {
					t.Errorf("the refusal %q does not say %q", msg, want)
				}
			}
			if !saysDiffer(msg, tc.option) {
				t.Errorf("the refusal %q does not say it differs in %s", msg, tc.option)
			}
			if strings.Contains(msg, conflictBackendKey) || strings.Contains(msg, secret) || strings.Contains(msg, "127.0.0.1:31412") {
				t.Errorf("the refusal %q shows a secret or the backend's URL", msg)
			}
		})
	}
}

// saysDiffer reports whether msg says the gateways differ in option, an
// option name with its two settings, "name (x vs y)", given for the
// sites in order a, b: Caddy provisions the servers in no set order, so
// the refusal may name them, and the settings, the other way round.
func saysDiffer(msg, option string) bool {
	if strings.Contains(msg, "differ in "+option) {
		return true
	}
	name, settings, ok := strings.Cut(option, " (")
	x, y, ok2 := strings.Cut(strings.TrimSuffix(settings, ")"), " vs ")
	return ok && ok2 && strings.Contains(msg, "differ in "+name+" ("+y+" vs "+x+")")
}

// TestDataDirAgreeingSitesLoad loads configs whose two sites on one data
// directory differ only in what each gateway applies to its own requests,
// or name a pooled option's default on one site and leave it unset on the
// other: they load, and the pooled parts have the options both name.
func TestDataDirAgreeingSitesLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	backend := map[string]any{"target": "backend", "url": "http://127.0.0.1:31412/mimi", "key": conflictBackendKey}
	zone := map[string]any{"name": "by_peer", "key": "sender_provider", "events": 5, "window": "1s", "burst": 10}
	for _, tc := range []struct {
		name string
		a, b map[string]any
	}{
		{"per-site options", map[string]any{"max_body": 4096, "queue_max_messages": 10, "peers": map[string]any{"deny": []string{"x.example"}},
			"attachments": map[string]any{"max_size": 1024, "retention": "1h"}, "relay_limit": map[string]any{"events": 5, "window": "1s"}},
			map[string]any{"attachments": map[string]any{"disabled": true}}},
		{"defaults named on one site", map[string]any{"key_rotation": "720h", "key_scheme": "ed25519",
			"federation": map[string]any{"give_up_after": "72h", "max_backoff": "5m", "timeout": "5s", "max_backlog_messages": 100000,
				"allowed_ports": []int{443}},
			"attachments": map[string]any{"storage": map[string]any{"backend": "local"}}}, nil},
		{"same pooled options", map[string]any{"delivery": backend, "rate_limits": []any{zone},
			"federation": map[string]any{"give_up_after": "1h", "allowed_ports": []int{8443, 443}}},
			map[string]any{"delivery": backend, "rate_limits": []any{zone},
				"federation": map[string]any{"give_up_after": "1h", "allowed_ports": []int{443, 8443}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := conflictDir(t)
			if err := loadCaddy(t, conflictConfig(t, dir, tc.a, tc.b)); err != nil {
				t.Fatalf("a config whose sites on one data_dir agree was refused: %v", err)
			}
		})
	}
}

// TestDataDirConflictReload reloads a config whose two sites on one data
// directory agree into one that changes the option on both: the reload
// succeeds (the old and the new config's gateways are not compared), and
// the new option is in force; a reload that changes it on one
// site only is refused, and the running config's option stays.
func TestDataDirConflictReload(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	dir := conflictDir(t)
	giveUp := func(d string) map[string]any { return map[string]any{"federation": map[string]any{"give_up_after": d}} }
	if err := loadCaddy(t, conflictConfig(t, dir, giveUp("1h"), giveUp("1h"))); err != nil {
		t.Fatalf("loading the first config: %v", err)
	}
	if err := caddy.Load(conflictConfig(t, dir, giveUp("2h"), giveUp("2h")), true); err != nil {
		t.Fatalf("a reload changing give_up_after on both sites was refused: %v", err)
	}
	if got := conflictGiveUpAfter(t, dir); got != 2*time.Hour {
		t.Errorf("after the reload the sender gives up after %s, want 2h", got)
	}
	err := caddy.Load(conflictConfig(t, dir, giveUp("3h"), giveUp("2h")), true)
	if err == nil || !saysDiffer(err.Error(), "federation give_up_after (3h0m0s vs 2h0m0s)") {
		t.Fatalf("a reload changing give_up_after on one site only: %v, want the conflict refused", err)
	}
	if got := conflictGiveUpAfter(t, dir); got != 2*time.Hour {
		t.Errorf("after the refused reload the sender gives up after %s, want the running 2h", got)
	}
}

// conflictGiveUpAfter is the give_up_after in force on dir's sender: that
// of the newest gateway that committed its options there.
func conflictGiveUpAfter(t *testing.T, dir string) time.Duration {
	t.Helper()
	commits.mu.Lock()
	defer commits.mu.Unlock()
	l := commits.dirs[dir]
	if len(l) == 0 {
		t.Fatalf("no gateway has committed its options on %s", dir)
	}
	return l[len(l)-1].Federation.senderPolicy().GiveUpAfter
}

// TestDataDirConflictCaddyfile loads a Caddyfile whose two sites share a
// data_dir, one delivering to a legacy backend, the other to the local
// queues: it is refused with the message naming both; with the same
// delivery on both it loads.
func TestDataDirConflictCaddyfile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	dir := conflictDir(t)
	caddyfile := func(deliveryB string) []byte {
		cf := `{
	admin off
	persist_config off
	auto_https off
	storage file_system ` + filepath.Join(filepath.Dir(dir), "storage") + `
}
http://` + conflictSiteA + ` {
	mimi {
		provider a.example
		ds_domain ds.a.example
		data_dir ` + dir + `
		delivery backend http://127.0.0.1:31412/mimi {
			key ` + conflictBackendKey + `
		}
	}
}
http://` + conflictSiteB + ` {
	mimi {
		provider b.example
		ds_domain ds.b.example
		data_dir ` + dir + `
		` + deliveryB + `
	}
}
`
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err != nil {
			t.Fatalf("adapting the Caddyfile: %v", err)
		}
		return out
	}
	err := loadCaddy(t, caddyfile("delivery local_queues"))
	if err == nil || !strings.Contains(err.Error(), "share data_dir "+dir) || !saysDiffer(err.Error(), "delivery (backend vs local_queues)") {
		t.Fatalf("a Caddyfile whose sites on one data_dir differ in delivery: %v, want it refused", err)
	}
	if err := loadCaddy(t, caddyfile("delivery backend http://127.0.0.1:31412/mimi {\n\t\t\tkey "+conflictBackendKey+"\n\t\t}")); err != nil {
		t.Fatalf("a Caddyfile whose sites on one data_dir deliver alike was refused: %v", err)
	}
}
