package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// TestReloadAppliesOptions reloads the configuration 20 times through the
// admin API's /load, each time with another key scheme, rotation and
// overlap for a.localhost. After each reload a key of the new scheme and
// the new lifetime (rotation + overlap) is published at once, without a
// restart; after all of them the process holds no more goroutines or open
// files than after the second, and (on SQLite) a.localhost's database is
// open by one service only.
func TestReloadAppliesOptions(t *testing.T) {
	startCaddy(t)
	base := baseConfig()
	const aBlock = "\t\tds_domain a.localhost:9443\n\t\tdata_dir " // the line the options go after
	if !strings.Contains(base, aBlock) {
		t.Fatal("the test configuration changed: a.localhost's block not found")
	}
	reload := func(i int) string {
		// The shared configuration signs with ed25519: every reload
		// changes the scheme.
		scheme := []string{"ecdsa_secp256r1_sha256", "ed25519"}[i%2]
		opts := fmt.Sprintf("\t\tkey_scheme %s\n\t\tkey_rotation %dh\n\t\tkey_overlap %dh\n", scheme, 48+i, 49+i)
		cfg := strings.Replace(base, aBlock, opts+aBlock, 1)
		env.tester.InitServer(cfg, "caddyfile") // POST /load
		return scheme
	}
	// Restore the shared configuration for the tests that follow.
	defer env.tester.InitServer(base, "caddyfile")

	c := client(0) // one client, so its connections are not counted as growth
	var goroutines, files int
	for i := 0; i < 20; i++ {
		scheme := reload(i)
		if t.Failed() {
			t.FailNow()
		}
		// The reload's options made a key: of its scheme, living its
		// key_rotation + key_overlap.
		want := map[string]moh.SignatureScheme{"ed25519": moh.SchemeEd25519, "ecdsa_secp256r1_sha256": moh.SchemeECDSAP256SHA256}[scheme]
		k := keyMadeWith(t, c, time.Duration(48+i+49+i)*time.Hour)
		if k == nil || k.Scheme != want {
			t.Fatalf("reload %d: no published key of scheme %s living %dh: %+v", i, scheme, 48+i+49+i, k)
		}
		if i == 1 {
			c.CloseIdleConnections()
			time.Sleep(500 * time.Millisecond) // let the old config's goroutines end
			goroutines, files = runtime.NumGoroutine(), len(openFiles(t))
		}
	}
	c.CloseIdleConnections()
	if g := settledGoroutines(goroutines + 10); g > goroutines+10 {
		t.Errorf("goroutines grew from %d to %d over 18 reloads", goroutines, g)
	}
	// The old configs' files close in the background too.
	f := len(openFiles(t))
	for deadline := time.Now().Add(30 * time.Second); f > files+2 && time.Now().Before(deadline); f = len(openFiles(t)) {
		time.Sleep(50 * time.Millisecond)
	}
	if f > files+2 {
		t.Errorf("open files grew from %d to %d over 18 reloads", files, f)
	}
	if !backend.postgres {
		// SQLite only: these count the open files of a.localhost's
		// database file. On PostgreSQL a leaked service's pool shows in
		// the open files' growth above (its connections are sockets).
		checkOneSQLiteService(t)
	}
	t.Logf("after 20 reloads: %d goroutines (%d after the second), %d open files (%d)",
		runtime.NumGoroutine(), goroutines, len(openFiles(t)), files)
}

// checkOneSQLiteService checks that one service holds a.localhost's
// SQLite database.
func checkOneSQLiteService(t *testing.T) {
	t.Helper()
	db := filepath.Join(env.dir, "a", "mimi.db")
	// One service holds the database: its store keeps the lock file
	// open (flock) for as long as it lives, so a service leaked by a
	// reload would show as a second open lock file. The service's
	// writer, checkpointer and up to sqlitestore.DefaultReaders readers
	// each have the database and its WAL open, besides the
	// shared-memory file and the lock: at most 2*(2+4)+2 files.
	open := openFiles(t)
	if n := countPrefix(open, db+".lock"); n != 1 {
		t.Errorf("a.localhost's database lock is open %d times, want 1: one service holds the database", n)
	}
	if n := countPrefix(open, db); n == 0 || n > 2*(2+sqlitestore.DefaultReaders)+2 {
		t.Errorf("a.localhost's database is open %d times; one service holds a writer, a checkpointer and a small reader pool", n)
	}
}

// keyMadeWith returns the key a.localhost publishes whose lifetime is
// lifetime (key_rotation + key_overlap of one reload), nil when none is.
func keyMadeWith(t *testing.T, c *http.Client, lifetime time.Duration) *moh.VerificationKey {
	t.Helper()
	// The test configuration's grace period is a nanosecond, and for a
	// moment after a reload the old server, which shares the listener,
	// still accepts connections, then resets what it carries. Such a
	// transport error is retried on a new connection.
	const url = "https://a.localhost:9443/verification_key"
	var (
		resp *http.Response
		body []byte
		err  error
	)
	for attempt := 0; attempt < 5; attempt++ {
		c.CloseIdleConnections()
		if resp, err = c.Get(url); err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("verification_key: status %d", resp.StatusCode)
	}
	var r moh.DSResponse
	if err := wire.Unmarshal(body, &r, "DSResponse"); err != nil {
		t.Fatal(err)
	}
	for i := range r.VerificationKeys {
		if k := &r.VerificationKeys[i]; time.Duration(k.NotAfter-k.NotBefore)*time.Second == lifetime {
			return k
		}
	}
	return nil
}

// settledGoroutines waits up to 30 s for the goroutine count to fall to at
// most target (the old configs' servers and loops wind down in the
// background), and returns the count then.
func settledGoroutines(target int) int {
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= target || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openFiles lists the targets of the process's open file descriptors.
func openFiles(t *testing.T) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	var out []string
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil {
			out = append(out, target)
		}
	}
	return out
}

func countPrefix(list []string, prefix string) int {
	n := 0
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

// TestRejectedReloadKeepsOptions posts, through the admin API's /load, a
// configuration that raises c.localhost's probe zone from 3 to 100 a
// minute, forbids b.localhost to fetch peers' keys from private addresses,
// and adds a site on a port the test holds: every handler provisions (the
// gateways put their options in force), then the http app cannot listen
// and Caddy rejects the configuration and keeps the running one. The
// running gateways must still limit at 3 a minute and fetch a.localhost's
// keys. The same change without the bad site is accepted and takes
// effect, and loading the base configuration again brings 3 a minute
// back.
func TestRejectedReloadKeepsOptions(t *testing.T) {
	startCaddy(t)
	base := baseConfig()
	const probe = "rate_limit probe {\n\t\t\tkey {http.request.header.X-Test-Client}\n\t\t\trate 3/1m"
	if !strings.Contains(base, probe) {
		t.Fatal("the test configuration changed: c.localhost's probe zone not found")
	}
	raised := strings.Replace(base, probe, strings.Replace(probe, "rate 3/1m", "rate 100/1m", 1), 1)
	// A port the test holds, so that a configuration whose site listens
	// on it fails to start.
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("holding a port: %v", err)
	}
	defer held.Close()
	heldAddr := held.Addr().String()
	// The rejected configuration also forbids b.localhost to fetch keys
	// from private addresses, where a.localhost is.
	const bBlock = "\t\tmax_body 64KiB\n\t\tfederation {\n\t\t\tallow_private_addresses\n"
	if !strings.Contains(raised, bBlock) {
		t.Fatal("the test configuration changed: b.localhost's federation block not found")
	}
	rejected := strings.Replace(raised, bBlock, "\t\tmax_body 64KiB\n\t\tfederation {\n", 1) +
		"\nhttp://" + heldAddr + " {\n\tbind 127.0.0.1\n\trespond \"never served\"\n}\n"
	// fetchesKeys sends b.localhost a request signed by a.localhost, which
	// b answers only if it can fetch a's keys. It detects a rejected
	// fetch policy in force only while b has not cached a's keys: when
	// this test runs first (-run TestRejectedReloadKeepsOptions); the
	// probe zone detects a rejected configuration in any order.
	a := peerClient(t, "a.localhost")
	payload, err := wire.Marshal(&moh.ConnectionKeyPackagesRequest{
		Requester: []byte("mimi://a.localhost/u/alice"), UserID: []byte("mimi://b.localhost/u/bob"),
	})
	if err != nil {
		t.Fatal(err)
	}
	fetchesKeys := func(t *testing.T) {
		t.Helper()
		ans, err := a.Send(context.Background(), "b.localhost", moh.ConnectionKeyPackages, payload)
		if err != nil {
			t.Fatal(err)
		}
		if ans.Status != http.StatusOK {
			t.Errorf("b.localhost answered a.localhost's request %d %v: it cannot fetch a's keys, the rejected configuration's fetch policy is in force",
				ans.Status, ans.Response.Error.Code)
		}
	}

	c := client(tls.VersionTLS13)
	run := fmt.Sprintf("reload-%d", time.Now().UnixNano())
	// statuses sends 4 requests of a new client to c.localhost's /healthz.
	n := 0
	statuses := func(t *testing.T) []int {
		t.Helper()
		n++
		id := fmt.Sprintf("%s-%d", run, n)
		var out []int
		for range 4 {
			req, err := http.NewRequest(http.MethodGet, "https://c.localhost:9443/healthz", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Test-Client", id)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			out = append(out, resp.StatusCode)
		}
		return out
	}
	limited, raisedCodes := []int{200, 200, 200, 429}, []int{200, 200, 200, 200}
	t.Cleanup(func() {
		if err := postLoad(base); err != nil {
			t.Errorf("restoring the base configuration: %v", err)
		}
	})

	for _, tc := range []struct {
		name   string
		config string
		accept bool
		want   []int
	}{
		{"rejected", rejected, false, limited},
		{"accepted", raised, true, raisedCodes},
		{"accepted back", base, true, limited},
		{"rejected after reloads", rejected, false, limited},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := postLoad(tc.config)
			switch {
			case tc.accept && err != nil:
				t.Fatalf("loading the configuration: %v", err)
			case !tc.accept && err == nil:
				t.Fatal("Caddy accepted a configuration that listens on a port in use")
			case !tc.accept && !strings.Contains(err.Error(), heldAddr[strings.LastIndexByte(heldAddr, ':')+1:]):
				t.Fatalf("the configuration was refused for another reason: %v", err)
			}
			c.CloseIdleConnections()
			waitTLS(t, "c.localhost")
			if got := statuses(t); !slices.Equal(got, tc.want) {
				t.Errorf("c.localhost's probe zone answered %v, want %v", got, tc.want)
			}
			fetchesKeys(t)
		})
	}
}

// postLoad posts a Caddyfile to the admin API's /load, and returns the
// error Caddy answers with.
func postLoad(caddyfile string) error {
	req, err := http.NewRequest(http.MethodPost, "http://localhost:2999/load", strings.NewReader(caddyfile))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	c := &http.Client{Timeout: 60 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	return nil
}
