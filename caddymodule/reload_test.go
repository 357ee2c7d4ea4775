package caddymodule

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// failedReload provisions, on old's data directory, a config that fails
// late in Provision (an issuer key file that does not exist), and cleans
// it up, as Caddy does with a rejected config; the running config is
// old. The rejected config changes the key scheme, the federation policy
// and the attachments' retention.
func failedReload(t *testing.T, old *Gateway) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	bad := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: old.DataDir,
		KeyScheme:   "ecdsa_secp256r1_sha256",
		Federation:  &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{8443}},
		Attachments: &Attachments{Retention: caddy.Duration(time.Hour)},
		Issuer:      &TokenIssuer{KeyFiles: []string{"/nonexistent/issuer.key"}}}
	if err := bad.Provision(ctx); err == nil {
		bad.Cleanup()
		t.Fatal("the config with a missing issuer key file was accepted")
	}
	if err := bad.Cleanup(); err != nil {
		t.Fatal(err)
	}
}

// TestFailedReloadKeepsServiceOptions checks that a rejected config
// changes nothing of the provider service the running config uses: its
// fetch policy, its key scheme (no key rotated for it) and its logger.
func TestFailedReloadKeepsServiceOptions(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
	old := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir})
	before := old.svc.Options()
	keysBefore := old.svc.Keys().Options()
	published := len(old.svc.Keys().Published(time.Now()))
	failedReload(t, old)
	opts := old.svc.Options()
	if opts.Fetch.AllowPrivate != before.Fetch.AllowPrivate || len(opts.Fetch.AllowedPorts) != len(before.Fetch.AllowedPorts) {
		t.Errorf("the rejected config's fetch policy is in force: allow private %v, ports %v", opts.Fetch.AllowPrivate, opts.Fetch.AllowedPorts)
	}
	if opts.Logger != before.Logger {
		t.Error("the rejected config's logger is in force")
	}
	if got := old.svc.Keys().Options().Scheme; got != keysBefore.Scheme {
		t.Errorf("the rejected config's key scheme %v is in force, was %v", got, keysBefore.Scheme)
	}
	if n := len(old.svc.Keys().Published(time.Now())); n != published {
		t.Errorf("%d keys published after the rejected config, %d before: a key was rotated for it", n, published)
	}
}

// TestFailedReloadKeepsSweeper checks that the attachment sweeper of the
// data directory sweeps with the running config's attachment service
// (its retention and backend), not with that of a config Caddy rejected
// and cleaned up.
func TestFailedReloadKeepsSweeper(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
	old := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir})
	failedReload(t, old)
	var sw *sweeper
	sweeperPool.Range(func(k, v any) bool {
		if k == dir {
			sw = v.(*sweeper)
		}
		return true
	})
	if sw == nil {
		t.Fatal("no sweeper runs for the running config")
	}
	if a := sw.current.Load(); a != old.ds.Attachments {
		t.Errorf("the sweeper sweeps with the rejected config's attachment service (retention %s)", a.Retention)
	}
}

// TestCleanupWhileInFlight cleans a config up while one of its requests
// still runs, as Caddy does once a reload's grace_period ends: the
// request finishes against the service (still open for the new config,
// or closed) and gets an answer, never a panic.
func TestCleanupWhileInFlight(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stayOpen bool
	}{
		{"service still open", true},
		{"service closed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			dir := t.TempDir()
			os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
			g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir}
			if err := g.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			pr, pw := io.Pipe()
			r := tls13(httptest.NewRequest(http.MethodPost, "/verification_key", pr))
			r.Header.Set("Content-Type", contentType)
			r.ContentLength = -1
			type result struct {
				w     *httptest.ResponseRecorder
				panic any
			}
			done := make(chan result, 1)
			go func() {
				var res result
				defer func() { res.panic = recover(); done <- res }()
				res.w, _ = serve(g, r)
			}()
			pw.Write([]byte{0}) //nolint:errcheck // the request is reading its body now
			if tc.stayOpen {
				// The new config, which keeps the service open.
				provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir})
			}
			if err := g.Cleanup(); err != nil {
				t.Fatal(err)
			}
			pw.Write([]byte{1}) //nolint:errcheck // version 1, no request: answered with the keys
			pw.Close()
			res := <-done
			if res.panic != nil {
				t.Fatalf("the request in flight panicked after Cleanup: %v", res.panic)
			}
			if res.w.Code == 0 || res.w.Header().Get("Content-Type") != contentType {
				t.Errorf("the request in flight got status %d, Content-Type %q, not a MoH answer", res.w.Code, res.w.Header().Get("Content-Type"))
			}
			var resp moh.DSResponse
			if err := wire.Unmarshal(res.w.Body.Bytes(), &resp, "DSResponse"); err != nil {
				t.Errorf("the answer %x is not a DSResponse: %v", res.w.Body.Bytes(), err)
			}
			t.Logf("status %d, response type %v, code %v", res.w.Code, resp.Type, resp.Error.Code)
		})
	}
}

// TestDataDirSpellings provisions gateways and a local API on spellings
// of one data directory: they share one service (and sender, sweeper),
// where a second service on the same files failed ("database in use") or
// ran a second sender and key ring.
func TestDataDirSpellings(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
	a := provisioned(t, &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir})
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, spelling := range []string{dir + "/", dir + "/.", filepath.Join(dir, "x") + "/..", rel} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		b := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: spelling}
		err := b.Provision(ctx)
		if err != nil {
			t.Errorf("%q: %v", spelling, err)
		} else if a.svc != b.svc {
			t.Errorf("%q and %q opened two services on one directory", dir, spelling)
		}
		b.Cleanup()
		cancel()
	}
	if n, _ := servicePool.References(dir); n != 1 {
		t.Errorf("%d holds on the service of %s, want the running config's 1", n, dir)
	}
	// A local API joins the gateway's service at once.
	newLocalServer(t, &LocalAPI{Providers: []string{"example.com"}, DataDir: dir + "/"})
	if n, _ := servicePool.References(dir); n != 2 {
		t.Errorf("a local API on %q did not join the service of %s (%d holds)", dir+"/", dir, n)
	}
}

// TestRejectedConfigRestoresOptions provisions configs on one data
// directory and cleans some of them up in the orders Caddy does: a config
// it rejects after its gateways provisioned (another handler's Provision
// or an app's Start failed) is cleaned up while the old one keeps
// running; an accepted config's predecessor is cleaned up once it runs.
// The options in force on the pooled parts (the service's fetch policy,
// the sweeper's attachment service, a rate-limit zone's burst) must be
// those of the newest gateway still running, never those of a rejected
// one.
func TestRejectedConfigRestoresOptions(t *testing.T) {
	// Config "a" allows 2 requests an hour and no private addresses;
	// config "b" allows 100, private addresses and port 8443.
	gateway := func(dir, variant string) *Gateway {
		g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir,
			RateLimits: []*RateLimitZone{{Name: "restore_zone", Key: "remote_ip", Events: 2, Window: caddy.Duration(time.Hour),
				Endpoints: []string{"ds_domain"}}}}
		if variant == "b" {
			g.RateLimits[0].Events = 100
			g.Federation = &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{8443}}
			g.Attachments = &Attachments{Retention: caddy.Duration(time.Hour)}
		}
		return g
	}
	for _, tc := range []struct {
		name     string
		variants []string // the gateways provisioned, in order
		cleanup  []int    // the gateways cleaned up, in order
		want     int      // the gateway whose options must be in force
	}{
		{"rejected reload", []string{"a", "b"}, []int{1}, 0},
		{"rejected reload of two gateways", []string{"a", "b", "b"}, []int{1, 2}, 0},
		{"rejected reload of two gateways, newest first", []string{"a", "b", "b"}, []int{2, 1}, 0},
		{"accepted reload", []string{"a", "b"}, []int{0}, 1},
		{"accepted reload, then rejected", []string{"a", "b", "a"}, []int{0, 2}, 1},
		{"accepted reload and back", []string{"a", "b", "a"}, []int{0, 1}, 2},
		{"config of two gateways, one rejected reload", []string{"b", "a", "b"}, []int{2}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
			var gs []*Gateway
			for _, v := range tc.variants {
				ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
				t.Cleanup(cancel)
				g := gateway(dir, v)
				if err := g.Provision(ctx); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { g.Cleanup() })
				gs = append(gs, g)
			}
			for _, i := range tc.cleanup {
				if err := gs[i].Cleanup(); err != nil {
					t.Fatal(err)
				}
			}
			want := gs[tc.want]
			if got := want.svc.Options().Fetch; got.AllowPrivate != (tc.variants[tc.want] == "b") || len(got.AllowedPorts) != len(want.Federation.fetchPortsOrNil()) {
				t.Errorf("the service's fetch policy is allow private %v, ports %v: not the running config's", got.AllowPrivate, got.AllowedPorts)
			}
			if want.svc.Options().Logger != want.logger {
				t.Error("the service logs to another config's logger")
			}
			var sw *sweeper
			sweeperPool.Range(func(k, v any) bool {
				if k == dir {
					sw = v.(*sweeper)
				}
				return true
			})
			if sw == nil || sw.current.Load() != want.ds.Attachments {
				t.Error("the sweeper sweeps with another config's attachment service")
			}
			wantCodes := []int{200, 200, 429}
			if tc.variants[tc.want] == "b" {
				wantCodes = []int{200, 200, 200}
			}
			var got []int
			for range 3 {
				r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
				r.RemoteAddr = "192.0.2.1:1"
				w, _ := serve(want, r)
				got = append(got, w.Code)
			}
			if !slices.Equal(got, wantCodes) {
				t.Errorf("statuses %v, want %v: another config's rate limit is in force", got, wantCodes)
			}
		})
	}
}

// fetchPortsOrNil is f's allowed ports, nil without a federation block.
func (f *Federation) fetchPortsOrNil() []int {
	if f == nil {
		return nil
	}
	return f.AllowedPorts
}

// TestRejectedConfigRestoresLocalOptions runs a config whose only mimi
// module on a data directory is a mimi_local handler with data_dir: it
// opens the provider service with the defaults. A config with a gateway
// on that directory (another key scheme and fetch policy, another
// logger) provisions and is then rejected, or accepted. A rejected
// config's options must not stay in force on the service the running
// config uses; an accepted config's stay once the mimi_local-only
// config is cleaned up.
func TestRejectedConfigRestoresLocalOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		// localInNew adds a mimi_local to the new config, provisioned
		// before its gateway (it joins the running config's service).
		localInNew bool
		accepted   bool
	}{
		{"rejected", false, false},
		{"rejected, with a mimi_local of its own", true, false},
		{"accepted", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
			running := &LocalAPI{Providers: []string{localProvider}, DataDir: dir, User: "{http.request.header.X-Test-User}"}
			runCtx, runCancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			t.Cleanup(runCancel)
			if err := running.Provision(runCtx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { running.Cleanup() })
			// Its first request opens the service with the defaults.
			if w := aliceBinding(t, running); w.Code != http.StatusOK {
				t.Fatalf("the first request answered %d %s", w.Code, w.Body)
			}
			svc := running.svc
			before := svc.Options()
			keysBefore := svc.Keys().Options()

			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			t.Cleanup(cancel)
			var local *LocalAPI
			if tc.localInNew {
				local = &LocalAPI{Providers: []string{localProvider}, DataDir: dir, User: "{http.request.header.X-Test-User}"}
				if err := local.Provision(ctx); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { local.Cleanup() })
			}
			g := &Gateway{Providers: []string{localProvider}, DSDomain: "ds.example.com", DataDir: dir,
				KeyScheme:  "ecdsa_secp256r1_sha256",
				Federation: &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{8443}}}
			if err := g.Provision(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Cleanup() })
			if g.svc != svc {
				t.Fatal("the gateway opened a second service")
			}
			if tc.accepted {
				// Caddy cleans the old config up once the new one runs.
				if err := running.Cleanup(); err != nil {
					t.Fatal(err)
				}
				opts := svc.Options()
				if !opts.Fetch.AllowPrivate || opts.Logger != g.logger || svc.Keys().Options().Scheme == keysBefore.Scheme {
					t.Error("the accepted config's options are not in force")
				}
				return
			}
			if local != nil {
				if err := local.Cleanup(); err != nil {
					t.Fatal(err)
				}
			}
			if err := g.Cleanup(); err != nil {
				t.Fatal(err)
			}
			opts := svc.Options()
			if opts.Fetch.AllowPrivate != before.Fetch.AllowPrivate || len(opts.Fetch.AllowedPorts) != len(before.Fetch.AllowedPorts) {
				t.Errorf("the rejected config's fetch policy is in force: allow private %v, ports %v", opts.Fetch.AllowPrivate, opts.Fetch.AllowedPorts)
			}
			if opts.Logger != before.Logger {
				t.Error("the service logs to the rejected config's logger")
			}
			if got := svc.Keys().Options().Scheme; got != keysBefore.Scheme {
				t.Errorf("the rejected config's key scheme %v is in force, was %v", got, keysBefore.Scheme)
			}
			if w := aliceBinding(t, running); w.Code != http.StatusOK {
				t.Errorf("the running config's request answered %d %s", w.Code, w.Body)
			}
		})
	}
}

// TestAppStopRestoresOptions: when Caddy stops the mimi app of a config
// it rejects after the app started (another app's Start failed), the
// running config's options are in force again from that Stop on, before
// Caddy cleans the rejected config up: the service's fetch policy, the
// sweeper's attachment service, and the rate-limit zone's burst.
func TestAppStopRestoresOptions(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o700) //nolint:errcheck // else the service tightens it and says so
	provision := func(events int, fed *Federation) *Gateway {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		t.Cleanup(cancel)
		g := &Gateway{Providers: []string{"example.com"}, DSDomain: "ds.example.com", DataDir: dir, Federation: fed,
			RateLimits: []*RateLimitZone{{Name: "stop_zone", Key: "remote_ip", Events: events, Window: caddy.Duration(time.Hour),
				Endpoints: []string{"ds_domain"}}}}
		if err := g.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Cleanup() })
		return g
	}
	running := provision(2, nil)
	rejected := provision(100, &Federation{AllowPrivateAddresses: true, AllowedPorts: []int{8443}})
	app := &App{gateways: []*Gateway{rejected}}
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	if err := app.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := running.svc.Options().Fetch; got.AllowPrivate || len(got.AllowedPorts) != 0 {
		t.Errorf("after Stop, the service's fetch policy is allow private %v, ports %v: the rejected config's", got.AllowPrivate, got.AllowedPorts)
	}
	var sw *sweeper
	sweeperPool.Range(func(k, v any) bool {
		if k == dir {
			sw = v.(*sweeper)
		}
		return true
	})
	if sw == nil || sw.current.Load() != running.ds.Attachments {
		t.Error("after Stop, the sweeper sweeps with the rejected config's attachment service")
	}
	var got []int
	for range 3 {
		r := tls13(httptest.NewRequest(http.MethodGet, "/.well-known/mimi/ds-domain", nil))
		r.RemoteAddr = "192.0.2.7:1"
		w, _ := serve(running, r)
		got = append(got, w.Code)
	}
	if want := []int{200, 200, 429}; !slices.Equal(got, want) {
		t.Errorf("after Stop, statuses %v, want %v: the rejected config's rate limit is in force", got, want)
	}
}
