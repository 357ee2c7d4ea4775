package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-mimi/caddy-mimi/mimicore/localapi"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/service"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func init() {
	caddy.RegisterModule(testGate{})
}

// Addresses of TestRejectedReloadLocalJoin's Caddy: its admin endpoint
// and its two sites, on ports the kernel picked (setReloadAddrs).
var reloadAdminAddr, reloadLocalAddr, reloadGateAddr string

// setReloadAddrs sets the addresses of the Caddy of a test to loopback
// ports the kernel picked: each listened on once and closed again, for
// Caddy to bind.
func setReloadAddrs(t *testing.T) {
	t.Helper()
	addrs := make([]string, 3)
	for i := range addrs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = ln.Addr().String()
		ln.Close()
	}
	reloadAdminAddr, reloadLocalAddr, reloadGateAddr = addrs[0], addrs[1], addrs[2]
}

// gate holds the Provision of a testGate: it reports on reached, waits
// for release, and fails, so that Caddy rejects the config it is in after
// the handlers before it provisioned.
var gate struct {
	mu      sync.Mutex
	reached chan struct{}
	release chan struct{}
}

// armGate makes the next testGate's Provision close reached and wait
// until open is called (at most once it has effect; t's cleanup calls it
// and disarms the gate).
func armGate(t *testing.T) (reached chan struct{}, open func()) {
	t.Helper()
	reached, release := make(chan struct{}), make(chan struct{})
	gate.mu.Lock()
	gate.reached, gate.release = reached, release
	gate.mu.Unlock()
	var releaseOnce sync.Once
	open = func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(func() {
		open()
		gate.mu.Lock()
		gate.reached, gate.release = nil, nil
		gate.mu.Unlock()
	})
	return reached, open
}

// testGate is a handler whose Provision waits for the test and then
// fails (gate): the test acts while a config is being loaded, then Caddy
// rejects it.
type testGate struct{}

// CaddyModule returns the Caddy module information.
func (testGate) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.mimi_test_gate", New: func() caddy.Module { return new(testGate) }}
}

// Provision waits for the test, then fails.
func (testGate) Provision(caddy.Context) error {
	gate.mu.Lock()
	reached, release := gate.reached, gate.release
	gate.mu.Unlock()
	if reached != nil {
		close(reached)
		<-release
	}
	return errors.New("test gate: configuration refused")
}

// ServeHTTP passes the request on.
func (testGate) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return next.ServeHTTP(w, r)
}

// reloadConfig is a Caddy JSON config whose only mimi module on dir is a
// mimi_local with data_dir, on reloadLocalAddr; with gateway, it also has
// a site on reloadGateAddr with a gateway on dir (another key scheme and
// fetch policy than the defaults) followed by a testGate.
func reloadConfig(t *testing.T, storage, dir string, gateway bool) []byte {
	t.Helper()
	local := map[string]any{"handler": "mimi_local", "providers": []string{localProvider}, "data_dir": dir,
		"user": "{http.request.header.X-Test-User}"}
	servers := map[string]any{
		"local": map[string]any{"listen": []string{reloadLocalAddr}, "automatic_https": map[string]any{"disable": true},
			"routes": []any{map[string]any{"handle": []any{local}}}},
	}
	if gateway {
		gw := map[string]any{"handler": "mimi", "providers": []string{localProvider}, "ds_domain": "ds.example.com",
			"data_dir": dir, "key_scheme": "ecdsa_secp256r1_sha256",
			"federation": map[string]any{"allow_private_addresses": true, "allowed_ports": []int{8443}}}
		servers["gate"] = map[string]any{"listen": []string{reloadGateAddr}, "automatic_https": map[string]any{"disable": true},
			"routes": []any{map[string]any{"handle": []any{gw, map[string]any{"handler": "mimi_test_gate"}}}}}
	}
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"listen": reloadAdminAddr, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": storage},
		"apps":    map[string]any{"http": map[string]any{"servers": servers}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// poolService is the open service of dir in servicePool, or nil.
func poolService(dir string) *service.Service {
	var svc *service.Service
	servicePool.Range(func(k, v any) bool {
		if k == dir {
			svc = v.(*service.Service)
		}
		return true
	})
	return svc
}

// postAliceBinding asks the mimi_local of reloadConfig for a binding of
// aliceURI, as the user alice, and returns the answer and its body.
func postAliceBinding(t *testing.T) (*http.Response, []byte) {
	t.Helper()
	body, err := wire.Marshal(&localapi.BindingRequest{ClientURI: []byte(aliceURI), SignatureKey: []byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, "http://"+reloadLocalAddr+"/binding", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Test-User", "alice")
	return exchangeHTTP(t, http.DefaultClient, req)
}

// startLocalOnlyCaddy runs, in a real Caddy (skipped with -short), the
// config of reloadConfig without the gateway: a mimi_local on a new data
// directory, which no request has opened yet. It returns the config's
// Caddy storage and that directory; Caddy stops when t ends.
func startLocalOnlyCaddy(t *testing.T) (storage, dir string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	setReloadAddrs(t)
	tmp := t.TempDir()
	dir = filepath.Join(tmp, "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	storage = filepath.Join(tmp, "storage")
	if err := caddy.Load(reloadConfig(t, storage, dir, false), true); err != nil {
		t.Fatalf("loading the running config: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
	})
	return storage, dir
}

// TestRejectedReloadLocalJoin runs, in a real Caddy, a config whose only
// mimi module on a data directory is a mimi_local with data_dir that has
// served no request (it joins the service at its first one). A config
// adding a gateway on that directory, with another key scheme and fetch
// policy, is posted to the admin API's /load: its gateway opens the
// service with its options, and a later handler's Provision fails. A
// request to the running mimi_local while the new config loads must not
// join that service: it is answered 503 backend_unavailable, and once
// Caddy rejected the config the mimi_local opens the service with the
// defaults. Joining it left the service open after the rejection, held by
// the running config, with the rejected config's key scheme and fetch
// policy (and its store, had it chosen PostgreSQL).
func TestRejectedReloadLocalJoin(t *testing.T) {
	storage, dir := startLocalOnlyCaddy(t)

	reached, open := armGate(t)
	loaded := postLoad(reloadAdminAddr, reloadConfig(t, storage, dir, true))
	<-reached // the new config's gateway has provisioned

	resp, body := postAliceBinding(t)
	var dsResp moh.DSResponse
	if resp.StatusCode != http.StatusServiceUnavailable || wire.Unmarshal(body, &dsResp, "DSResponse") != nil ||
		dsResp.Error.Code != moh.CodeBackendUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a request while the new config loads answered %d (Retry-After %q) %x, want 503 backend_unavailable with Retry-After",
			resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	open()
	if err := <-loaded; err == nil || !strings.Contains(err.Error(), "test gate") {
		t.Fatalf("the new config was not refused by the gate: %v", err)
	}

	if resp, body := postAliceBinding(t); resp.StatusCode != http.StatusOK {
		t.Fatalf("the running config's request after the rejection answered %d %x", resp.StatusCode, body)
	}
	// The running config's handlers are recorded under the config that
	// caddy.ActiveContext names, which the join rule relies on.
	serviceHolders.mu.Lock()
	held := serviceHolders.dirs[dir][configOf(caddy.ActiveContext())]
	serviceHolders.mu.Unlock()
	if held != 1 {
		t.Errorf("the running config holds the service %d times by the active context's identity, want 1", held)
	}
	svc := poolService(dir)
	if svc == nil {
		t.Fatal("no service is open for the running mimi_local")
	}
	if got := svc.Keys().Options().Scheme; got != moh.SchemeEd25519 {
		t.Errorf("the service signs with scheme %v, the rejected config's: want the default ed25519", got)
	}
	if opts := svc.Options(); opts.Fetch.AllowPrivate || slices.Contains(opts.Fetch.AllowedPorts, 8443) {
		t.Errorf("the rejected config's fetch policy is in force: allow private %v, ports %v", opts.Fetch.AllowPrivate, opts.Fetch.AllowedPorts)
	}
}
