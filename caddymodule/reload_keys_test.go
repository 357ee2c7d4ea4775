package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
)

// signingKeyID is the id of the key the service of dir signs with now.
func signingKeyID(t *testing.T, dir string) string {
	t.Helper()
	svc := poolService(dir)
	if svc == nil {
		t.Fatalf("no service is open on %s", dir)
	}
	k, err := svc.Keys().Current(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", k.ID)
}

// TestRejectedStartKeepsSigningKey posts, to a real Caddy running a
// gateway on ed25519 keys, configs that change its key_scheme and have an
// app whose Start fails, until Caddy has started the mimi app before the
// failing one. While the failing app waits in Start, and once Caddy
// rejected the config (in either order), the running gateway must sign
// with its key and publish its keys alone: the mimi app's Start made a
// key of the rejected scheme, which signed and was published from then
// on, and its Stop, putting the running scheme back, made yet another
// one. A config without the failing app then makes exactly one key, of
// the new scheme, which signs.
func TestRejectedStartKeepsSigningKey(t *testing.T) {
	storage, dir := startAppReloadCaddy(t)
	before := publishedKeys(t, appReloadRun)
	keys, signing := keyIDs(before), signingKeyID(t, dir)
	changed := oldSettings
	changed.scheme = newSettings.scheme

	t.Cleanup(startGate.disarm)
	mimiFirst := false
	for i := 0; i < 40 && !mimiFirst; i++ {
		reached, release := startGate.arm()
		loaded := postLoad(appReloadAdmin, appReloadConfig(t, storage, dir, appReloadNew, changed, false, true))
		mimiFirst = (<-reached).started
		if mimiFirst {
			if got := keyIDs(publishedKeys(t, appReloadRun)); got != keys {
				t.Errorf("while an app of the new config starts, after its mimi app, the running gateway publishes keys %s, want %s", got, keys)
			}
			if got := signingKeyID(t, dir); got != signing {
				t.Errorf("while an app of the new config starts, after its mimi app, the gateway signs with key %s, want %s", got, signing)
			}
		}
		close(release)
		if err := <-loaded; err == nil || !strings.Contains(err.Error(), "test start gate") {
			t.Fatalf("the new config was not refused by the start gate: %v", err)
		}
		wantKeysKept(t, fmt.Sprintf("after Caddy rejected the config (mimi app started first: %v)", mimiFirst),
			dir, publishedKeys(t, appReloadRun), keys, signing)
	}
	if !mimiFirst {
		t.Fatal("Caddy never started the mimi app before the failing app in 40 loads")
	}

	if err := <-postLoad(appReloadAdmin, appReloadConfig(t, storage, dir, appReloadRun, changed, false, false)); err != nil {
		t.Fatalf("loading the new config without the failing app: %v", err)
	}
	wantOneNewKey(t, dir, before, publishedKeys(t, appReloadRun))
}

// TestLocalOnlyConfigKeepsSigningKey runs, in a real Caddy, a config
// whose only mimi module is a mimi_local with data_dir, whose first
// request opens the provider service with the default key scheme. Configs
// adding a gateway on that directory with another key scheme, and an app
// whose Start fails, are posted until Caddy has started the mimi app
// before the failing one: the service must keep signing with its key and
// publishing its keys alone (a config without a mimi app ran, so the
// gateway's key options were put in force in Start). A config without the
// failing app then makes exactly one key, of the gateway's scheme, which
// signs once the reload returns.
func TestLocalOnlyConfigKeepsSigningKey(t *testing.T) {
	storage, dir := startLocalOnlyCaddy(t)
	if resp, body := postAliceBinding(t); resp.StatusCode != http.StatusOK {
		t.Fatalf("the mimi_local's first request answered %d %x", resp.StatusCode, body)
	}
	svc := poolService(dir)
	if svc == nil {
		t.Fatal("the mimi_local's first request opened no service")
	}
	before := svc.Keys().Published(time.Now())
	keys, signing := keyIDs(before), signingKeyID(t, dir)

	// gatewayConfig is the config with the gateway, without the failing
	// handler after it; with startGateApp, with the failing app.
	gatewayConfig := func(startGateApp bool) []byte {
		t.Helper()
		var cfg map[string]any
		if err := json.Unmarshal(reloadConfig(t, storage, dir, true), &cfg); err != nil {
			t.Fatal(err)
		}
		apps := cfg["apps"].(map[string]any)
		route := apps["http"].(map[string]any)["servers"].(map[string]any)["gate"].(map[string]any)["routes"].([]any)[0].(map[string]any)
		route["handle"] = route["handle"].([]any)[:1]
		if startGateApp {
			apps["mimi_test_start_gate"] = map[string]any{}
		}
		raw, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}

	t.Cleanup(startGate.disarm)
	mimiFirst := false
	for i := 0; i < 40 && !mimiFirst; i++ {
		reached, release := startGate.arm()
		loaded := postLoad(reloadAdminAddr, gatewayConfig(true))
		mimiFirst = (<-reached).started
		close(release)
		if err := <-loaded; err == nil || !strings.Contains(err.Error(), "test start gate") {
			t.Fatalf("the new config was not refused by the start gate: %v", err)
		}
		wantKeysKept(t, fmt.Sprintf("after Caddy rejected the config (mimi app started first: %v)", mimiFirst),
			dir, svc.Keys().Published(time.Now()), keys, signing)
	}
	if !mimiFirst {
		t.Fatal("Caddy never started the mimi app before the failing app in 40 loads")
	}

	if err := <-postLoad(reloadAdminAddr, gatewayConfig(false)); err != nil {
		t.Fatalf("loading the config with the gateway: %v", err)
	}
	if poolService(dir) != svc {
		t.Fatal("the gateway did not take over the running service")
	}
	wantOneNewKey(t, dir, before, svc.Keys().Published(time.Now()))
}

// wantKeysKept fails t unless published, the keys published when, are
// those of the ids keys and the service of dir signs with the key
// signing.
func wantKeysKept(t *testing.T, when, dir string, published []moh.VerificationKey, keys, signing string) {
	t.Helper()
	if got := keyIDs(published); got != keys {
		t.Fatalf("%s, the service of %s publishes keys %s, want %s", when, dir, got, keys)
	}
	if got := signingKeyID(t, dir); got != signing {
		t.Fatalf("%s, the service of %s signs with key %s, want %s", when, dir, got, signing)
	}
}

// wantOneNewKey fails t unless after, the keys published after a reload
// that changed the key scheme to ecdsa_secp256r1_sha256, are before with
// one key of that scheme ahead of them, and the service of dir signs with
// that key.
func wantOneNewKey(t *testing.T, dir string, before, after []moh.VerificationKey) {
	t.Helper()
	if len(after) != len(before)+1 || keyIDs(after[1:]) != keyIDs(before) || after[0].Scheme != moh.SchemeECDSAP256SHA256 {
		t.Fatalf("after the reload, the service publishes keys %s, want one ecdsa_secp256r1_sha256 key before %s", keyIDs(after), keyIDs(before))
	}
	if got, want := signingKeyID(t, dir), fmt.Sprintf("%x", after[0].KeyID); got != want {
		t.Errorf("after the reload, the service signs with key %s, want the new key %s", got, want)
	}
}
