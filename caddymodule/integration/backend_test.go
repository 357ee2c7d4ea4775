package integration

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/caddy-mimi/caddy-mimi/internal/pgtest"
	"github.com/caddy-mimi/caddy-mimi/internal/s3test"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/pgstore"
)

// The suite runs its gateways on one of two backends, chosen by
// $MIMI_INTEGRATION_BACKEND:
//
//   - sqlite (the default, and what `go test ./...` runs): each provider's
//     state in SQLite in its data directory, its signing keys in files
//     there and its attachments in local files;
//   - postgres (what .ci/run runs as well, in a second `go test` of this
//     package): each provider's state in a database of its own on one
//     throwaway PostgreSQL cluster (internal/pgtest), its signing keys
//     sealed in that database under key_secret, and its attachments in a
//     bucket of its own on one versitygw (internal/s3test), as a cluster
//     gateway runs (issue 12).
//
// A variable rather than a TestMain that runs the suite twice: Caddy's
// state is process-wide (the admin endpoint, the listeners on fixed ports,
// the certificate cache, caddymodule's services held per data directory
// across reloads), so a second m.Run in one process would start from the
// first one's leftovers; and testing.M is meant to run once. Two processes
// give each backend a clean Caddy, keep the default run as fast as it was,
// and let -run, -count and -race work as usual in each.
const backendEnv = "MIMI_INTEGRATION_BACKEND"

// keySecretEnv and the S3 variables hold the secrets the configuration
// names as placeholders, as an operator's does ({env.…}): the key secret
// of every provider of the suite and the S3 server's credentials.
const (
	keySecretEnv   = "MIMI_IT_KEY_SECRET"
	s3AccessKeyEnv = "MIMI_IT_S3_ACCESS_KEY"
	s3SecretKeyEnv = "MIMI_IT_S3_SECRET_KEY"
)

// backend is the suite's backend; its zero value is sqlite.
var backend struct {
	postgres bool
	err      error // why the postgres backend could not be set up
	s3       *s3test.Server
	stopS3   func()
	secret   []byte // the providers' key secret

	mu      sync.Mutex
	sites   map[string]site // by provider name (a.localhost)
	buckets atomic.Int64    // numbers the per-test buckets
}

// site is where a provider of the suite keeps its state with postgres.
type site struct {
	dsn    string // its database
	bucket string // its attachments' bucket
}

// setUpBackend reads $MIMI_INTEGRATION_BACKEND and, for postgres, starts
// versitygw, makes the databases and buckets of the shared configuration's
// providers and sets the secrets' variables. It returns an error for an
// unknown backend only: a postgres backend that cannot be set up is kept
// in backend.err, so that every test fails on it under $CI and skips
// elsewhere (requireBackend), as pgtest and s3test do.
func setUpBackend(dir string) error {
	switch v := os.Getenv(backendEnv); v {
	case "", "sqlite":
		return nil
	case "postgres":
		backend.postgres = true
	default:
		return fmt.Errorf("%s=%q: want sqlite or postgres", backendEnv, v)
	}
	backend.err = startPostgresBackend(dir)
	return nil
}

func startPostgresBackend(dir string) error {
	backend.secret = make([]byte, provider.KeySecretSize)
	if _, err := rand.Read(backend.secret); err != nil {
		return err
	}
	os.Setenv(keySecretEnv, base64.StdEncoding.EncodeToString(backend.secret))
	bin, err := s3test.Binary()
	if err != nil {
		return fmt.Errorf("versitygw is not installed (.ci/run installs it and sets $VERSITYGW): %w", err)
	}
	srv, stop, err := s3test.Run(bin, filepath.Join(dir, "s3"))
	if err != nil {
		return fmt.Errorf("starting versitygw: %w", err)
	}
	backend.s3, backend.stopS3 = srv, stop
	os.Setenv(s3AccessKeyEnv, srv.AccessKey)
	os.Setenv(s3SecretKeyEnv, srv.SecretKey)
	backend.sites = make(map[string]site)
	for _, p := range sharedProviders {
		dsn, err := pgtest.CreateDB()
		if err != nil {
			return err
		}
		bucket := "mimi-" + strings.TrimSuffix(p, ".localhost")
		if err := srv.MakeBucket(context.Background(), bucket); err != nil {
			return err
		}
		backend.sites[p] = site{dsn: dsn, bucket: bucket}
	}
	return nil
}

// stopBackend stops versitygw and PostgreSQL, if they were started.
func stopBackend() error {
	if backend.stopS3 != nil {
		backend.stopS3()
	}
	return pgtest.Stop()
}

// requireBackend ends t when the postgres backend could not be set up:
// it fails under $CI, which installs PostgreSQL and versitygw (.ci/run),
// and skips elsewhere.
func requireBackend(t *testing.T) {
	t.Helper()
	if backend.err == nil {
		return
	}
	if os.Getenv("CI") != "" || !errors.Is(backend.err, pgtest.ErrNotInstalled) && !errors.Is(backend.err, exec.ErrNotFound) {
		t.Fatalf("%s=postgres: %v", backendEnv, backend.err)
	}
	t.Skipf("%s=postgres: %v", backendEnv, backend.err)
}

// sharedProviders are the providers of the shared configuration
// (caddyfile), each with a database and a bucket of its own with postgres.
var sharedProviders = []string{"a.localhost", "b.localhost", "c.localhost"}

// backendLine marks the line of a site's mimi block where withBackend puts
// the store and storage options of provider p.
func backendLine(p string) string {
	return "\t\t{BACKEND " + p + "}\n"
}

// withBackend replaces the backend line (backendLine) of each provider of
// the shared configuration by its options: nothing with sqlite, the
// configuration's defaults; with postgres its database, the key secret and
// its bucket.
func withBackend(cfg string) string {
	backend.mu.Lock()
	defer backend.mu.Unlock()
	for _, p := range sharedProviders {
		cfg = strings.ReplaceAll(cfg, backendLine(p), backend.sites[p].options())
	}
	return cfg
}

// options are the options of a mimi block on s's database and bucket, or
// none with sqlite.
func (s site) options() string {
	if !backend.postgres {
		return ""
	}
	return fmt.Sprintf(`		store postgres %s {
			max_conns 8
		}
		key_secret {env.%s}
		attachments {
			storage s3 {
				endpoint %s
				bucket %s
				region %s
				access_key {env.%s}
				secret_key {env.%s}
				insecure
				path_style
			}
		}
`, s.dsn, keySecretEnv, backend.s3.Endpoint, s.bucket, backend.s3.Region, s3AccessKeyEnv, s3SecretKeyEnv)
}

// siteBackend returns the options of provider p of a site a test adds
// (m.localhost, ts.localhost), which has a data directory of the test's
// own: with postgres a new database and bucket for t, so that the tests'
// clients do not meet there either. The database is dropped when t ends,
// after the shared configuration is restored (loadWithSite's cleanup,
// registered later, runs first).
func siteBackend(t *testing.T, p string) string {
	t.Helper()
	if !backend.postgres {
		return ""
	}
	requireBackend(t)
	s := site{
		dsn:    pgtest.NewDB(t),
		bucket: fmt.Sprintf("mimi-%s-%d", strings.TrimSuffix(p, ".localhost"), backend.buckets.Add(1)),
	}
	if err := backend.s3.MakeBucket(t.Context(), s.bucket); err != nil {
		t.Fatal(err)
	}
	backend.mu.Lock()
	backend.sites[p] = s
	backend.mu.Unlock()
	t.Cleanup(func() {
		backend.mu.Lock()
		delete(backend.sites, p)
		backend.mu.Unlock()
	})
	return s.options()
}

// keyRingOf returns the signing keys of provider p (a.localhost or
// b.localhost), as its gateway signs with them: read from the files in its
// data directory with sqlite, from the keys sealed in its database with
// postgres (a read-only view, which creates and rotates none).
func keyRingOf(t *testing.T, p string) *provider.KeyRing {
	t.Helper()
	if !backend.postgres {
		ring, err := provider.LoadKeyRing(filepath.Join(env.dir, strings.TrimSuffix(p, ".localhost"), "keys"))
		if err != nil {
			t.Fatal(err)
		}
		return ring
	}
	db, err := pgstore.Open(t.Context(), siteOf(t, p).dsn, pgstore.Options{MaxConns: 2})
	if err != nil {
		t.Fatalf("opening %s's database: %v", p, err)
	}
	t.Cleanup(func() { db.Close() })
	sealer, err := provider.NewKeySealer(backend.secret)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := provider.LoadSharedKeyRing(t.Context(), db, sealer)
	if err != nil {
		t.Fatalf("loading %s's signing keys from its database: %v", p, err)
	}
	return ring
}

// siteOf is provider p's database and bucket (postgres only).
func siteOf(t *testing.T, p string) site {
	t.Helper()
	backend.mu.Lock()
	defer backend.mu.Unlock()
	s, ok := backend.sites[p]
	if !ok {
		t.Fatalf("no database and bucket for %s", p)
	}
	return s
}

// assertAttachmentsStored checks that the attachments provider p holds
// are where the suite's backend keeps them: as files under dataDir with
// sqlite; with postgres as objects in p's bucket, and none under dataDir,
// so a test that passes on postgres did run on S3.
func assertAttachmentsStored(t *testing.T, p, dataDir string) {
	t.Helper()
	files := 0
	err := filepath.WalkDir(filepath.Join(dataDir, "attachments"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files++
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	})
	if err != nil {
		t.Fatalf("listing %s's attachment files: %v", p, err)
	}
	if !backend.postgres {
		if files == 0 {
			t.Fatalf("%s holds no attachment file under %s", p, dataDir)
		}
		return
	}
	if files != 0 {
		t.Fatalf("%s wrote %d attachment files under %s, not to S3", p, files, dataDir)
	}
	objects := 0
	for obj := range backend.s3.Client(t).ListObjects(t.Context(), siteOf(t, p).bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			t.Fatalf("listing %s's bucket: %v", p, obj.Err)
		}
		objects++
	}
	if objects == 0 {
		t.Fatalf("%s's bucket %s holds no object", p, siteOf(t, p).bucket)
	}
}
