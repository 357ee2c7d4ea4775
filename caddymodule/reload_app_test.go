package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// Loopback addresses of the Caddy of the reload tests in this file: the
// admin endpoint, the running config's site, and the site of the
// configs Caddy rejects (so that a request to the running site is
// answered by the running config even when Caddy started the rejected
// config's http app before rejecting it).
const (
	appReloadAdmin = "127.0.0.1:31100"
	appReloadRun   = "127.0.0.1:31101"
	appReloadNew   = "127.0.0.1:31102"
)

// appReloadSettings are the gateway options the reload tests change.
type appReloadSettings struct {
	// burst is the number of requests the zone `probe` admits per key
	// (a fresh key's bucket, in an hour).
	burst int
	// scheme is the key_scheme.
	scheme string
}

var (
	oldSettings = appReloadSettings{burst: 3, scheme: "ed25519"}
	newSettings = appReloadSettings{burst: 1, scheme: "ecdsa_secp256r1_sha256"}
)

// appReloadConfig is a Caddy JSON config with a gateway on dir with s,
// listening on addr; with gate, its route has a testGate after the
// gateway (Caddy rejects the config in Provision); with startGate, the
// config has a mimi_test_start_gate app (Caddy rejects it in Start).
func appReloadConfig(t *testing.T, storage, dir, addr string, s appReloadSettings, gate, startGateApp bool) []byte {
	t.Helper()
	gw := map[string]any{"handler": "mimi", "providers": []string{localProvider}, "ds_domain": "ds.example.com",
		"data_dir": dir, "key_scheme": s.scheme, "trusted_tls_proxies": []string{"127.0.0.1"},
		"rate_limits": []any{map[string]any{"name": "probe", "key": "{http.request.header.X-Zone-Key}",
			"events": s.burst, "window": "1h", "endpoints": []string{"ds_domain"}}}}
	handle := []any{gw}
	if gate {
		handle = append(handle, map[string]any{"handler": "mimi_test_gate"})
	}
	apps := map[string]any{"http": map[string]any{"servers": map[string]any{
		"site": map[string]any{"listen": []string{addr}, "automatic_https": map[string]any{"disable": true},
			"routes": []any{map[string]any{"handle": handle}}},
	}}}
	if startGateApp {
		apps["mimi_test_start_gate"] = map[string]any{}
	}
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"listen": appReloadAdmin, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": storage},
		"apps":    apps,
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// zoneKeys numbers the rate-limit keys of the probes, each a fresh
// bucket.
var zoneKeys atomic.Int64

// probeBurst answers how many of 5 requests to the ds_domain endpoint of
// the site on addr, all with one fresh key of the zone `probe`, are
// admitted before one is refused with 429: the burst in force.
func probeBurst(t *testing.T, addr string) int {
	t.Helper()
	key := "k" + strconv.FormatInt(zoneKeys.Add(1), 10)
	for i := range 5 {
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/.well-known/mimi/ds-domain", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Zone-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusTooManyRequests:
			return i
		default:
			t.Fatalf("ds_domain answered %d: %q", resp.StatusCode, body)
		}
	}
	return 5
}

// publishedKeys answers the verification keys the site on addr
// publishes.
func publishedKeys(t *testing.T, addr string) []moh.VerificationKey {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/verification_key", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := exchangeHTTP(t, http.DefaultClient, req)
	var ds moh.DSResponse
	if resp.StatusCode != http.StatusOK || wire.Unmarshal(body, &ds, "DSResponse") != nil || ds.Type != moh.ResponseVerificationKeys {
		t.Fatalf("/verification_key answered %d %x", resp.StatusCode, body)
	}
	return ds.VerificationKeys
}

// keyIDs lists the ids of keys, for comparing key sets.
func keyIDs(keys []moh.VerificationKey) string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = fmt.Sprintf("%x/%d", k.KeyID, k.Scheme)
	}
	return strings.Join(ids, " ")
}

// postLoad posts cfg to the /load of the admin endpoint at admin and
// sends its outcome on the returned channel.
func postLoad(admin string, cfg []byte) <-chan error {
	loaded := make(chan error, 1)
	go func() {
		resp, err := http.Post("http://"+admin+"/load", "application/json", bytes.NewReader(cfg))
		if err != nil {
			loaded <- err
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
		}
		loaded <- err
	}()
	return loaded
}

// startAppReloadCaddy runs, in this process, a Caddy with a gateway on a
// new data directory with oldSettings, and returns the directories of
// its storage and its gateway.
func startAppReloadCaddy(t *testing.T) (storage, dir string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	tmp := t.TempDir()
	dir = filepath.Join(tmp, "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	storage = filepath.Join(tmp, "storage")
	if err := caddy.Load(appReloadConfig(t, storage, dir, appReloadRun, oldSettings, false, false), true); err != nil {
		t.Fatalf("loading the running config: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
	})
	if got := probeBurst(t, appReloadRun); got != oldSettings.burst {
		t.Fatalf("the running config admits %d requests of a key, want %d", got, oldSettings.burst)
	}
	return storage, dir
}

// TestRejectedReloadKeepsGateway posts, to a real Caddy running a
// gateway, a config that changes the gateway's rate-limit zone and key
// scheme and has a handler after the gateway whose Provision fails. While
// Caddy loads it (the gateway provisioned, the failing handler waiting)
// and once Caddy rejected it, the running gateway must keep its zone's
// burst and its signing keys; the gateway's Provision put the new burst
// and scheme in force on the pooled zone and service at once (and the
// scheme's change made signing keys, which stayed after the rejection).
// A config without the failing handler then puts both in force.
func TestRejectedReloadKeepsGateway(t *testing.T) {
	storage, dir := startAppReloadCaddy(t)
	keys := keyIDs(publishedKeys(t, appReloadRun))

	reached, open := armGate(t)
	loaded := postLoad(appReloadAdmin, appReloadConfig(t, storage, dir, appReloadNew, newSettings, true, false))
	<-reached // the new config's gateway has provisioned
	if got := probeBurst(t, appReloadRun); got != oldSettings.burst {
		t.Errorf("while Caddy loads the new config, the running gateway admits %d requests of a key, want %d", got, oldSettings.burst)
	}
	if got := keyIDs(publishedKeys(t, appReloadRun)); got != keys {
		t.Errorf("while Caddy loads the new config, the running gateway publishes keys %s, want %s", got, keys)
	}
	open()
	if err := <-loaded; err == nil || !strings.Contains(err.Error(), "test gate") {
		t.Fatalf("the new config was not refused by the gate: %v", err)
	}
	if got := probeBurst(t, appReloadRun); got != oldSettings.burst {
		t.Errorf("after the rejection, the running gateway admits %d requests of a key, want %d", got, oldSettings.burst)
	}
	if got := keyIDs(publishedKeys(t, appReloadRun)); got != keys {
		t.Errorf("after the rejection, the running gateway publishes keys %s, want %s", got, keys)
	}

	if err := <-postLoad(appReloadAdmin, appReloadConfig(t, storage, dir, appReloadRun, newSettings, false, false)); err != nil {
		t.Fatalf("loading the new config without the failing handler: %v", err)
	}
	if got := probeBurst(t, appReloadRun); got != newSettings.burst {
		t.Errorf("after the reload, the gateway admits %d requests of a key, want %d", got, newSettings.burst)
	}
	if pub := publishedKeys(t, appReloadRun); pub[0].Scheme != moh.SchemeECDSAP256SHA256 {
		t.Errorf("after the reload, the newest published key has scheme %v, want ecdsa_secp256r1_sha256 (keys %s)", pub[0].Scheme, keyIDs(pub))
	}
}

// TestRejectedStartKeepsGateway posts, to a real Caddy running a gateway,
// configs that change the gateway's rate-limit zone and have an app
// whose Start fails, until Caddy has started them in both orders: the
// failing app before the mimi app, and after it. While the failing app
// waits in Start before the mimi app started, the running gateway must
// keep its zone's burst (the new config's gateway put its burst in force
// on the pooled zone in Provision); once Caddy rejected the config, in
// either order, the running gateway has its burst again.
func TestRejectedStartKeepsGateway(t *testing.T) {
	storage, dir := startAppReloadCaddy(t)
	changed := oldSettings
	changed.burst = newSettings.burst

	t.Cleanup(startGate.disarm)
	var before, after bool // seen the failing app start before, after the mimi app
	for i := 0; i < 40 && !(before && after); i++ {
		reached, release := startGate.arm()
		loaded := postLoad(appReloadAdmin, appReloadConfig(t, storage, dir, appReloadNew, changed, false, true))
		mimiStarted := (<-reached).started
		if !mimiStarted {
			before = true
			if got := probeBurst(t, appReloadRun); got != oldSettings.burst {
				t.Errorf("while an app of the new config starts, before its mimi app, the running gateway admits %d requests of a key, want %d",
					got, oldSettings.burst)
			}
		} else {
			after = true
		}
		close(release)
		if err := <-loaded; err == nil || !strings.Contains(err.Error(), "test start gate") {
			t.Fatalf("the new config was not refused by the start gate: %v", err)
		}
		if got := probeBurst(t, appReloadRun); got != oldSettings.burst {
			t.Errorf("after Caddy rejected the config (mimi app started first: %v), the running gateway admits %d requests of a key, want %d",
				mimiStarted, got, oldSettings.burst)
		}
	}
	if !before || !after {
		t.Fatalf("Caddy started the failing app before the mimi app: %v, after it: %v; want both in 40 loads", before, after)
	}
}

// TestReloadChangingKeySecretRefusedInProvision posts, to a real Caddy
// running a gateway with keys in files, a config that gives it a
// key_secret, which only a restart changes. Caddy must refuse it while
// provisioning the gateway, before any app of the config starts (an http
// app would start listening on the config's addresses first), and the
// running gateway keeps serving.
func TestReloadChangingKeySecretRefusedInProvision(t *testing.T) {
	storage, dir := startAppReloadCaddy(t)
	var cfg map[string]any
	if err := json.Unmarshal(appReloadConfig(t, storage, dir, appReloadNew, oldSettings, false, false), &cfg); err != nil {
		t.Fatal(err)
	}
	site := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["site"].(map[string]any)
	gw := site["routes"].([]any)[0].(map[string]any)["handle"].([]any)[0].(map[string]any)
	gw["key_secret"] = strings.Repeat("ab", 32)
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = <-postLoad(appReloadAdmin, raw)
	if err == nil || !strings.Contains(err.Error(), "key secret") || !strings.Contains(err.Error(), "provision http.handlers.mimi") {
		t.Fatalf("loading a config that changes key_secret: %v, want the gateway's provisioning to refuse the key secret's change", err)
	}
	if got := probeBurst(t, appReloadRun); got != oldSettings.burst {
		t.Errorf("after the rejection, the running gateway admits %d requests of a key, want %d", got, oldSettings.burst)
	}
}
