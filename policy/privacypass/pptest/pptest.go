// Package pptest runs pp-peer, the independent Privacy Pass client and issuer
// built on @cloudflare/privacypass-ts (testdata/peers/privacypass), for
// interoperability tests. The peer is copied once per test binary to a
// temporary directory, where npm install runs, so the work tree stays
// untouched.
package pptest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/internal/testdir"
)

var (
	once   sync.Once
	dir    string
	setErr error
)

// Dir returns the directory of an installed pp-peer copy, installing it on
// first use. Without node or npm the test is skipped, or fails when $CI is
// set: CI must run the interop tests.
func Dir(t testing.TB) string {
	t.Helper()
	for _, bin := range []string{"node", "npm"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; the privacypass-ts interop tests need Node >= 20 and npm", bin)
			}
			t.Skipf("%s is not installed; the privacypass-ts interop tests need Node >= 20 and npm", bin)
		}
	}
	once.Do(install)
	if setErr != nil {
		t.Fatalf("setting up pp-peer: %v", setErr)
	}
	return dir
}

// install copies the peer and runs npm install in the copy. npm's cache
// goes inside the copy too, so nothing is written under $HOME, unless
// npm_config_cache is set, which lets CI share a cache on purpose.
func install() {
	src, err := testdir.Path("peers", "privacypass")
	if err != nil {
		setErr = err
		return
	}
	if dir, setErr = os.MkdirTemp("", "pp-peer-"); setErr != nil {
		return
	}
	if setErr = copyTree(src, dir); setErr != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--no-update-notifier", "--loglevel=error")
	cmd.Dir = dir
	if os.Getenv("npm_config_cache") == "" && os.Getenv("NPM_CONFIG_CACHE") == "" {
		cmd.Env = append(os.Environ(), "npm_config_cache="+filepath.Join(dir, ".npm-cache"))
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		setErr = fmt.Errorf("npm install: %w\n%s", err, out)
	}
}

// Remove deletes the peer copy; call it from TestMain after m.Run.
func Remove() {
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// copyTree copies src to dst, leaving out installed modules and outputs.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "node_modules" || d.Name() == "out" {
			return filepath.SkipDir
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644) // the source is read-only
	})
}

// Run runs `node pp-peer.mjs args...` in dir and returns its standard
// output; it fails the test unless the exit status is wantExit.
func Run(t testing.TB, dir string, wantExit int, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"pp-peer.mjs"}, args...)...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("pp-peer %s: %v", args[0], err)
		}
		code = ee.ExitCode()
	}
	if code != wantExit {
		t.Fatalf("pp-peer %s exited %d, want %d\nstdout: %s\nstderr: %s", args[0], code, wantExit, stdout.String(), stderr.String())
	}
	return stdout.String()
}
