package service

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

const day = 24 * time.Hour

// open opens a service on dir with opts (DataDir and Logger filled in)
// and closes it when the test ends.
func open(t *testing.T, dir string, opts Options) *Service {
	t.Helper()
	opts.DataDir = dir
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t)
	}
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// settle waits up to 30 s for count to fall to at most limit and returns
// its last value.
func settle(limit int, count func() int) int {
	deadline := time.Now().Add(30 * time.Second)
	n := count()
	for n > limit && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		n = count()
	}
	return n
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// TestApplyRepeatedly applies 20 option sets in turn and checks that each
// takes effect and that nothing (goroutines, files) is left behind.
func TestApplyRepeatedly(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts descriptors in /proc/self/fd")
	}
	dir := t.TempDir()
	s := open(t, dir, Options{Logger: zap.NewNop()})
	pool := x509.NewCertPool()
	type row struct {
		scheme   moh.SignatureScheme
		rotate   time.Duration
		overlap  time.Duration
		fetch    provider.FetchPolicy
		newFetch bool // the policy differs from the previous row's
	}
	fetches := []provider.FetchPolicy{
		{}, // the Open policy
		{Timeout: 2 * time.Second},
		{Timeout: 2 * time.Second}, // unchanged
		{AllowPrivate: true, AllowedPorts: []int{8443}},
		{AllowPrivate: true, AllowedPorts: []int{8443}, Resolve: map[string]string{"b.example": "127.0.0.1:8443"}},
		{RootCAs: pool},
		{RootCAs: x509.NewCertPool()}, // equal content: unchanged
	}
	schemes := []moh.SignatureScheme{moh.SchemeEd25519, moh.SchemeECDSAP256SHA256}
	var rows []row
	wantKeys := 1
	for i := range 20 {
		r := row{
			scheme:  schemes[(i/2)%2],
			rotate:  time.Duration(10+i%3) * day,
			overlap: time.Duration(2+i%2) * day,
			fetch:   fetches[(i+1)%len(fetches)],
		}
		prev := fetches[i%len(fetches)]
		r.newFetch = !samePolicy(prev, r.fetch)
		if i > 0 && r.scheme != rows[i-1].scheme {
			wantKeys++
		}
		rows = append(rows, r)
	}

	runtime.GC()
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	for i, r := range rows {
		before := s.Fetcher()
		prevKey, _ := s.Keys().Current(time.Now())
		err := s.Apply(Options{
			DataDir: dir, Logger: zap.NewNop(), SweepEvery: time.Duration(1+i%2) * time.Minute,
			Keys:  provider.KeyRingOptions{Scheme: r.scheme, RotateEvery: r.rotate, Overlap: r.overlap},
			Fetch: r.fetch,
		})
		if err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
		now := time.Now()
		cur, err := s.Keys().Current(now)
		if err != nil || cur.Scheme != r.scheme {
			t.Fatalf("apply %d: signing key %v, %v; want scheme %v", i, cur, err, r.scheme)
		}
		if changed := prevKey.Scheme != r.scheme; changed == bytes.Equal(cur.ID, prevKey.ID) {
			t.Fatalf("apply %d: scheme changed %v, but new key %v", i, changed, !bytes.Equal(cur.ID, prevKey.ID))
		}
		o := s.Keys().Options()
		if o.RotateEvery != r.rotate || o.Overlap != r.overlap {
			t.Fatalf("apply %d: key options %+v, want rotation %s overlap %s", i, o, r.rotate, r.overlap)
		}
		if swapped := s.Fetcher() != before; swapped != r.newFetch {
			t.Fatalf("apply %d: fetcher replaced %v, want %v", i, swapped, r.newFetch)
		}
		if got := s.Options().SweepEvery; got != time.Duration(1+i%2)*time.Minute {
			t.Fatalf("apply %d: sweep interval %s", i, got)
		}
	}
	runtime.GC()
	gotG := settle(goroutines+2, runtime.NumGoroutine)
	gotFD := settle(fds, func() int { return openFDs(t) })
	t.Logf("after 20 applies: goroutines %d -> %d, open files %d -> %d", goroutines, gotG, fds, gotFD)
	if gotG > goroutines+2 {
		t.Errorf("goroutines grew from %d to %d", goroutines, gotG)
	}
	if gotFD > fds {
		t.Errorf("open files grew from %d to %d", fds, gotFD)
	}
	// The first key and one per scheme change, none expired yet.
	if n := len(s.Keys().Published(time.Now())); n != wantKeys {
		t.Errorf("published %d keys, want %d", n, wantKeys)
	}
}

// TestApplySchemeChange checks that a new scheme signs at once while the
// previous key stays published.
func TestApplySchemeChange(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	first, err := s.Keys().Current(time.Now())
	if err != nil || first.Scheme != moh.SchemeEd25519 {
		t.Fatalf("first key %v, %v; want ed25519", first, err)
	}
	if err := s.Apply(Options{DataDir: dir, Keys: provider.KeyRingOptions{Scheme: moh.SchemeECDSAP256SHA256}}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cur, err := s.Keys().Current(now)
	if err != nil || cur.Scheme != moh.SchemeECDSAP256SHA256 || bytes.Equal(cur.ID, first.ID) {
		t.Fatalf("signing key %v, %v; want a new P-256 key", cur, err)
	}
	pub := s.Keys().Published(now)
	if len(pub) != 2 || !bytes.Equal(pub[0].KeyID, cur.ID) || !bytes.Equal(pub[1].KeyID, first.ID) {
		t.Fatalf("published %d keys, want the new one and the previous one", len(pub))
	}
	if got := uint64(first.NotAfter.Unix()); pub[1].NotAfter != got {
		t.Fatalf("previous key published until %d, want its not_after %d", pub[1].NotAfter, got)
	}
	// The choice survives a restart: reopening with the new scheme keeps
	// the new key.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir, Options{Keys: provider.KeyRingOptions{Scheme: moh.SchemeECDSAP256SHA256}})
	if again, _ := s2.Keys().Current(time.Now()); !bytes.Equal(again.ID, cur.ID) {
		t.Fatal("reopening created another key")
	}
}

// TestApplyWakesRotation checks that the rotation loop follows a shorter
// interval at once instead of sleeping on the old one.
func TestApplyWakesRotation(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	first, _ := s.Keys().Current(time.Now())
	// The loop now sleeps up to an hour; the new interval is 2 s.
	time.Sleep(50 * time.Millisecond)
	if err := s.Apply(Options{DataDir: dir, Keys: provider.KeyRingOptions{RotateEvery: 2 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	// 30 s only against a loop left on its old interval of an hour.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if cur, _ := s.Keys().Current(time.Now()); !bytes.Equal(cur.ID, first.ID) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no rotation within 30 s of a 2 s interval")
}

func TestApplyRefusesOtherDataDir(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	tests := []struct {
		name    string
		dir     string
		wantErr bool
	}{
		{"another directory", t.TempDir(), true},
		{"a subdirectory", filepath.Join(dir, KeysDir), true},
		{"empty", "", true},
		{"same, unclean", dir + "/./", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Apply(Options{DataDir: tt.dir, Keys: provider.KeyRingOptions{Scheme: moh.SchemeECDSAP256SHA256}})
			if (err != nil) != tt.wantErr {
				t.Fatalf("Apply(%q) = %v, want error %v", tt.dir, err, tt.wantErr)
			}
			if tt.wantErr {
				if cur, _ := s.Keys().Current(time.Now()); cur.Scheme != moh.SchemeEd25519 {
					t.Fatal("a refused Apply changed the scheme")
				}
			}
		})
	}
}

// TestCheck: Check refuses what Apply refuses for good (another data
// directory, key secret or store) and accepts changed key options,
// changing nothing either way.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"same", Options{DataDir: dir}, ""},
		{"another scheme", Options{DataDir: dir, Keys: provider.KeyRingOptions{Scheme: moh.SchemeECDSAP256SHA256}}, ""},
		{"another directory", Options{DataDir: t.TempDir()}, "differs from the open"},
		{"a key secret", Options{DataDir: dir, KeySecret: bytes.Repeat([]byte{7}, 32)}, "key secret"},
		{"another store", Options{DataDir: dir, Store: StoreOptions{Postgres: "postgres://db.invalid/mimi"}, KeySecret: bytes.Repeat([]byte{7}, 32)}, "the store of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Check(tt.opts)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Check = %v, want an error containing %q", err, tt.wantErr)
			}
			if cur, _ := s.Keys().Current(time.Now()); cur.Scheme != moh.SchemeEd25519 {
				t.Fatal("Check changed the scheme")
			}
		})
	}
}

func TestApplyRefusesInvalidOptions(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	keys, sweep := s.Keys().Options(), s.Options().SweepEvery
	fetcher := s.Fetcher()
	for name, opts := range map[string]Options{
		"key lifetime above 90 days": {Keys: provider.KeyRingOptions{RotateEvery: 89 * day, Overlap: 2 * day}},
		"negative sweep interval":    {SweepEvery: -time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			opts.DataDir = dir
			opts.Fetch.Timeout = time.Second // would replace the fetcher
			if err := s.Apply(opts); err == nil {
				t.Fatal("accepted")
			}
			if s.Keys().Options() != keys || s.Options().SweepEvery != sweep || s.Fetcher() != fetcher {
				t.Fatal("a refused Apply changed the options")
			}
		})
	}
}

// TestCloseStopsWorkers checks that Close cancels and waits for every
// worker, restarts panicking ones until then, and keeps acknowledged
// writes.
func TestCloseStopsWorkers(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(t.Context(), Options{DataDir: dir, Logger: zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel))})
	if err != nil {
		t.Fatal(err)
	}
	var started, stopped, runs atomic.Int32
	for _, name := range []string{"outbox", "retention", "queue"} {
		s.Go(name, func(ctx context.Context) {
			started.Add(1)
			<-ctx.Done()
			time.Sleep(20 * time.Millisecond) // Close must wait for this
			stopped.Add(1)
		})
	}
	restarted := make(chan struct{})
	s.Go("flaky", func(ctx context.Context) {
		if runs.Add(1) == 1 {
			panic("first run fails")
		}
		close(restarted)
		<-ctx.Done()
		stopped.Add(1)
	})
	s.Go("done", func(context.Context) {}) // returns at once, never restarted
	select {
	case <-restarted:
	case <-time.After(30 * time.Second): // the restart comes after a second
		t.Fatal("the panicking worker was not restarted within 30 s")
	}
	spent := []byte("token-acknowledged-before-close")
	if first, err := s.Store().MarkSpent(t.Context(), spent, time.Now().Add(time.Hour)); err != nil || !first {
		t.Fatalf("MarkSpent = %v, %v", first, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if started.Load() != 3 || stopped.Load() != 4 || runs.Load() != 2 {
		t.Fatalf("after Close: %d started, %d stopped, %d runs of the flaky worker; want 3, 4, 2",
			started.Load(), stopped.Load(), runs.Load())
	}
	s2 := open(t, dir, Options{})
	if first, err := s2.Store().MarkSpent(t.Context(), spent, time.Now().Add(time.Hour)); err != nil || first {
		t.Fatalf("after reopening, MarkSpent = %v, %v; want the token already spent", first, err)
	}
}

// TestCloseTwice checks that Close is idempotent and that the service
// refuses work after it.
func TestCloseTwice(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(t.Context(), Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := s.Close(); err != nil {
			t.Fatalf("Close %d: %v", i+1, err)
		}
	}
	var ran atomic.Bool
	s.Go("late", func(context.Context) { ran.Store(true) })
	tests := []struct {
		name string
		err  error
	}{
		{"Apply", s.Apply(Options{DataDir: dir})},
		{"VerificationKey", func() error {
			_, err := s.VerificationKey(t.Context(), "b.example", []byte{1}, time.Now())
			return err
		}()},
		{"store", func() error {
			_, err := s.Store().MarkSpent(t.Context(), []byte("x"), time.Now().Add(time.Hour))
			return err
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !errors.Is(tt.err, store.ErrClosed) {
				t.Fatalf("after Close: %v, want store.ErrClosed", tt.err)
			}
		})
	}
	if s.workers.Wait(); ran.Load() {
		t.Fatal("Go started a worker after Close")
	}
}

// TestReplacedFetcherInUse checks that Apply does not close a fetcher a
// call is still using, and closes it when the call returns.
func TestReplacedFetcherInUse(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	r, err := s.acquireFetcher()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(Options{DataDir: dir, Fetch: provider.FetchPolicy{Timeout: time.Second}}); err != nil {
		t.Fatal(err)
	}
	if s.fetcher.Load() == r {
		t.Fatal("fetcher not replaced")
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		t.Fatal("the replaced fetcher was closed while in use")
	}
	r.release()
	if !r.closed {
		t.Fatal("the replaced fetcher was not closed after its last use")
	}
	if s.fetcher.Load().closed {
		t.Fatal("the current fetcher is closed")
	}
}

func TestOpenSetsDirectoryPermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permission bits")
	}
	tests := []struct {
		name     string
		dirMode  os.FileMode // 0: the directory does not exist
		keysMode os.FileMode // 0: no keys directory
		logged   int         // info lines about permissions
	}{
		{"missing", 0, 0, 0},
		{"already 0700", 0o700, 0, 0},
		{"world readable", 0o755, 0, 1},
		{"group writable", 0o770, 0, 1},
		{"keys world readable", 0o700, 0o755, 1},
		{"both open", 0o755, 0o750, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "mimi")
			if tt.dirMode != 0 {
				mkdir(t, dir, tt.dirMode)
			}
			if tt.keysMode != 0 {
				mkdir(t, filepath.Join(dir, KeysDir), tt.keysMode)
			}
			core, logs := observer.New(zapcore.InfoLevel)
			open(t, dir, Options{Logger: zap.New(core)})
			for _, d := range []string{dir, filepath.Join(dir, KeysDir)} {
				if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
					t.Fatalf("%s: mode %v, %v; want 0700", d, fi.Mode(), err)
				}
			}
			got := logs.FilterMessage("set directory permissions to owner only").All()
			if len(got) != tt.logged {
				t.Fatalf("%d permission log lines, want %d: %v", len(got), tt.logged, logs.All())
			}
			for _, e := range got {
				if e.Level != zapcore.InfoLevel || e.ContextMap()["old_mode"] == "" {
					t.Fatalf("log line %+v", e)
				}
			}
		})
	}
}

func TestOpenRefusesExposedKey(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permission bits")
	}
	dir := t.TempDir()
	s, err := Open(t.Context(), Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := s.Keys().Current(time.Now())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, KeysDir))
	var file string
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("key file %s has mode %04o, want 0600", e.Name(), fi.Mode().Perm())
		}
		file = filepath.Join(dir, KeysDir, e.Name())
	}
	if len(entries) != 1 || !strings.Contains(file, strings.ToLower(hexID(cur.ID))) {
		t.Fatalf("key directory holds %v", entries)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Open(t.Context(), Options{DataDir: dir})
	if err == nil {
		t.Fatal("opened a key ring with a world-readable key")
	}
	for _, want := range []string{file, "0644", "chmod 600"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestOpenRefusesFileAsDataDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), Options{DataDir: file}); err == nil {
		t.Fatal("opened a file as the data directory")
	}
}

func mkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

func hexID(id []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(id))
	for _, b := range id {
		out = append(out, digits[b>>4], digits[b&15])
	}
	return string(out)
}

// TestConcurrentUse runs Apply against key lookups, signing and Go, then
// Close, for the race detector.
func TestConcurrentUse(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(t.Context(), Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	// Peers resolve to a closed local port: fetches fail at once.
	policy := func(i int) provider.FetchPolicy {
		return provider.FetchPolicy{AllowPrivate: true, AllowedPorts: []int{1},
			Resolve: map[string]string{"b.example": "127.0.0.1:1"}, Timeout: time.Duration(1+i%2) * time.Second}
	}
	if err := s.Apply(Options{DataDir: dir, Fetch: policy(0)}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var users sync.WaitGroup
	for range 4 {
		users.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := s.VerificationKey(t.Context(), "b.example", []byte{1}, time.Now())
				if err == nil {
					t.Error("fetched a key from a closed port")
				}
				if k, err := s.Keys().Current(time.Now()); err != nil {
					t.Error(err)
				} else if _, err := k.SignWithLabel("test", []byte("x")); err != nil {
					t.Error(err)
				}
			}
		})
	}
	schemes := []moh.SignatureScheme{moh.SchemeEd25519, moh.SchemeECDSAP256SHA256}
	for i := range 20 {
		s.Go("worker", func(ctx context.Context) { <-ctx.Done() })
		err := s.Apply(Options{DataDir: dir, Fetch: policy(i), Keys: provider.KeyRingOptions{Scheme: schemes[i%2]}})
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	users.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r := s.fetcher.Load(); !r.closed || r.users != 0 {
		t.Fatalf("after Close the fetcher is closed %v with %d users", r.closed, r.users)
	}
}

// TestVerifierAfterClose verifies a provider request through a closed
// service, whose key fetcher is closed: the sender's key cannot be looked
// up now, which is answered backend_unavailable (docs/protocol.md §4, step
// 6), not unknown_key.
func TestVerifierAfterClose(t *testing.T) {
	s, err := Open(t.Context(), Options{DataDir: t.TempDir(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	key, err := provider.GenerateKey(moh.SchemeEd25519, now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := provider.SignRequest(&moh.ProviderRequest{RequestType: moh.GroupKeyPackages, Sender: []byte("b.example"),
		Recipient: []byte("a.example"), Timestamp: uint64(now.Unix()), RequestID: make([]byte, 16), Payload: []byte{0}}, key)
	if err != nil {
		t.Fatal(err)
	}
	v := &provider.Verifier{Domains: []string{"a.example"}, Keys: s}
	for _, tc := range []struct {
		name string
		opts provider.VerifyOptions
	}{
		{"without source", provider.VerifyOptions{}},
		{"with source", provider.VerifyOptions{Source: netip.MustParseAddr("192.0.2.1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := v.VerifyWith(t.Context(), raw, moh.GroupKeyPackages, tc.opts)
			if code := moh.DSErrorOf(err).Code; code != moh.CodeBackendUnavailable {
				t.Fatalf("VerifyWith after Close: %v (code %v), want backend_unavailable", err, code)
			}
		})
	}
}
