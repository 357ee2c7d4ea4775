package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/caddy-mimi/caddy-mimi/caddymodule"
	"github.com/caddy-mimi/caddy-mimi/internal/testca"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass/pptest"
)

// env is what every test of the package shares: one Caddy serving two
// providers, a.localhost and b.localhost, on 127.0.0.1:9443.
var env struct {
	dir      string
	rootFile string
	roots    *x509.CertPool
	tester   *caddytest.Tester
	failed   bool
}

const httpsAddr = "127.0.0.1:9443"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mimi-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	env.dir = dir
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	if err := writeRootCA(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := writePolicyKeys(dir); err != nil { // policy_test.go
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := setUpBackend(dir); err != nil { // backend_test.go
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 && os.Getenv("CI") != "" && env.tester == nil && !testing.Short() {
		// caddytest skips, rather than fails, when Caddy cannot start; in CI
		// a skipped integration suite is a failure.
		fmt.Fprintln(os.Stderr, "integration: Caddy never started; the integration tests did not run")
		code = 1
	}
	if env.tester != nil {
		// The gateways close their stores before the servers under them
		// stop.
		if err := caddy.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "integration: stopping Caddy:", err)
		}
	}
	if err := stopBackend(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		if code == 0 {
			code = 1
		}
	}
	os.RemoveAll(dir)
	pptest.Remove()
	os.Exit(code)
}

// writeRootCA creates the root that Caddy's internal CA issues from, so
// the tests and the gateways' key fetchers can verify the sites' certificates.
func writeRootCA(dir string) error {
	cert, err := testca.WriteRoot(dir, "caddy-mimi integration root")
	if err != nil {
		return err
	}
	env.rootFile = filepath.Join(dir, testca.CertFile)
	env.roots = x509.NewCertPool()
	env.roots.AddCert(cert)
	return nil
}

// caddyfile is the configuration under test: two providers in one Caddy,
// each allowed to fetch the other's keys over loopback. {DIR} and each
// provider's backend line (backendLine) are replaced by baseConfig.
const caddyfile = `{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
	persist_config off
	storage file_system {DIR}/storage
	pki {
		ca local {
			root {
				format pem_file
				cert {DIR}/root-cert.pem
				key {DIR}/root-key.pem
			}
		}
	}
	servers {
		0rtt off
	}
}

a.localhost:9443 {
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider a.localhost
		ds_domain a.localhost:9443
		data_dir {DIR}/a
		{BACKEND a.localhost}
		# Also the bound of a's local client API below, which serves
		# from the same data directory (TestKeyPackageMaxLifetime).
		max_key_package_lifetime 120d
		federation {
			allow_private_addresses
			allow_ports 9443
			resolve b.localhost 127.0.0.1:9443
			root_ca {DIR}/root-cert.pem
		}
	}
	# a's local client API, for the federation tests (the test header
	# stands in for an authentication handler).
	handle_path /local/* {
		mimi_local {
			provider a.localhost
			data_dir {DIR}/a
			user {http.request.header.X-Test-User}
		}
	}
	respond "not mimi" 404
}

b.localhost:9443 {
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider b.localhost
		ds_domain b.localhost:9443
		data_dir {DIR}/b
		{BACKEND b.localhost}
		max_body 64KiB
		federation {
			allow_private_addresses
			allow_ports 9443
			resolve a.localhost 127.0.0.1:9443
			root_ca {DIR}/root-cert.pem
		}
	}
	# b's local client API, for the federation tests to read b's queues;
	# the test header stands in for an authentication handler.
	handle_path /local/* {
		mimi_local {
			provider b.localhost
			data_dir {DIR}/b
			user {http.request.header.X-Test-User}
		}
	}
	respond "not mimi" 404
}

# c.localhost runs the admission policy (policy_test.go): it is its own
# Privacy Pass issuer, requires tokens on /welcome_information, limits
# /healthz per X-Test-Client header and connection_key_packages per
# sending provider.
c.localhost:9443 {
	tls internal {
		protocols tls1.3
	}
	mimi {
		provider c.localhost
		ds_domain c.localhost:9443
		data_dir {DIR}/c
		{BACKEND c.localhost}
		federation {
			allow_private_addresses
			allow_ports 9443
			resolve a.localhost 127.0.0.1:9443
			root_ca {DIR}/root-cert.pem
		}
		issuer {
			key {DIR}/pp/k2.json
			key {DIR}/pp/k1.json
		}
		privacy_pass {
			issuer_name c.localhost:9443
			require welcome_information
			context window
			secret {file.{DIR}/pp/secret}
		}
		rate_limit issuance {
			key remote_ip
			rate 50/1s
			endpoints token_request
		}
		rate_limit probe {
			key {http.request.header.X-Test-Client}
			rate 3/1m
			endpoints /healthz
		}
		rate_limit per_provider {
			key sender_provider
			rate 1/1h
			endpoints connection_key_packages
		}
	}
	respond "not mimi" 404
}
`

// baseConfig is the shared configuration as Caddy loads it: caddyfile
// with the test directory and each provider's store and storage options.
func baseConfig() string {
	return withBackend(strings.ReplaceAll(caddyfile, "{DIR}", env.dir))
}

// startCaddy loads the configuration once per test binary.
func startCaddy(t *testing.T) {
	t.Helper()
	requireBackend(t)
	if env.failed {
		t.Fatal("caddy did not start (see the first failing test)")
	}
	if env.tester != nil {
		return
	}
	// The timeouts only keep a failing test from hanging: a loaded
	// machine under -race may take seconds over a request.
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		LoadRequestTimeout: 60 * time.Second, TestRequestTimeout: 60 * time.Second,
	})
	tester.InitServer(baseConfig(), "caddyfile")
	if t.Failed() {
		env.failed = true
		t.FailNow()
	}
	// Certificates are issued by the internal CA in the background: wait
	// until both sites complete a handshake.
	deadline := time.Now().Add(30 * time.Second)
	for _, host := range []string{"a.localhost", "b.localhost", "c.localhost"} {
		for {
			resp, err := client(tls.VersionTLS13).Get("https://" + host + ":9443/healthz")
			if err == nil {
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				env.failed = true
				t.Fatalf("%s never served TLS: %v", host, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	env.tester = tester
}

// client returns an HTTP/2 client that verifies the sites' certificates
// against the test root and dials Caddy on loopback for any host name.
// Its timeout only keeps a failing test from hanging.
func client(maxTLS uint16) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, httpsAddr)
			},
			TLSClientConfig:   &tls.Config{RootCAs: env.roots, MinVersion: tls.VersionTLS12, MaxVersion: maxTLS},
			ForceAttemptHTTP2: true,
		},
	}
}

// peerClient returns a provider client for provider sender, signing with
// that provider's own keys (keyRingOf).
func peerClient(t *testing.T, sender string) *provider.Client {
	t.Helper()
	return &provider.Client{
		Sender: sender,
		Keys:   keyRingOf(t, sender),
		// A generous Timeout (the default is 5 s): it bounds each
		// discovery and key fetch, and each request's dial and TLS
		// handshake, which a loaded machine may make slow.
		Fetcher: provider.NewKeyFetcher(provider.FetchPolicy{
			AllowPrivate: true, AllowedPorts: []int{9443}, RootCAs: env.roots, Timeout: 30 * time.Second,
			Resolve: map[string]string{"a.localhost": httpsAddr, "b.localhost": httpsAddr},
		}),
	}
}

// waitTLS waits until host completes a handshake after a reload.
func waitTLS(t *testing.T, host string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client(0).Get("https://" + host + ":9443/healthz")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never served TLS after the reload: %v", host, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loadWithSite loads the shared configuration plus site, a site block for
// host on :9443, waits until host serves TLS, and restores the shared
// configuration when the test ends.
func loadWithSite(t *testing.T, host, site string) {
	t.Helper()
	loadConfig(t, baseConfig()+site, host)
}

// loadConfig loads cfg, a variant of the shared configuration, waits until
// each of hosts serves TLS, and restores the shared configuration when the
// test ends.
func loadConfig(t *testing.T, cfg string, hosts ...string) {
	t.Helper()
	base := baseConfig()
	env.tester.InitServer(cfg, "caddyfile")
	t.Cleanup(func() { env.tester.InitServer(base, "caddyfile") })
	if t.Failed() {
		t.FailNow()
	}
	for _, h := range hosts {
		waitTLS(t, h)
	}
}
