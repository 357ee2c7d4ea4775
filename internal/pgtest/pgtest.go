// Package pgtest runs a throwaway PostgreSQL server for the tests of one
// test binary and hands each test a fresh, empty database on it.
//
// The server is started on first use (NewDB) from the binaries of the
// machine: initdb and postgres found on PATH, else in the newest
// /usr/lib/postgresql/<version>/bin (where Debian's postgresql package puts
// them). Its cluster lives in a temporary directory, it listens on a free
// port of 127.0.0.1 only and puts its Unix socket in that directory, and it
// runs with fsync on (the stores under test promise durability), small
// shared buffers and trust authentication for the postgres superuser. A
// test binary that uses it stops it and removes the directory in its
// TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// When the binaries are missing, NewDB skips the test, or fails it when $CI
// is set: CI installs PostgreSQL (.ci/run), so a missing server there is a
// broken setup, not a reason to pass.
//
// PostgreSQL refuses to run as root. When the tests run as root (CI's fresh
// container), initdb and postgres run as the "postgres" user if it exists
// (Debian's package creates it), else as "nobody", and the cluster's
// directory is given to that user. The temporary directory ($TMPDIR) must
// then be reachable by that user, as /tmp is.
//
// On Linux the server gets SIGQUIT when the test binary dies, so a test
// binary killed by a timeout or a panic does not leave it running; its
// directory (/tmp/pgtest-*) is left behind then, since nothing runs to
// remove it.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// superuser is the role initdb creates and the tests connect as.
const superuser = "postgres"

// startTimeout bounds how long the server may take to accept connections.
const startTimeout = 60 * time.Second

var (
	mu      sync.Mutex
	current *server // the running server, nil before the first NewDB
	failure error   // why the server could not start, once it failed
	missing string  // why the binaries were not found, once looked for
	dbSeq   atomic.Int64
)

// server is a PostgreSQL cluster, running unless it crashed.
type server struct {
	dir      string // the temporary directory: data/, the socket, the log
	postgres string // the server binary
	owner    func(*exec.Cmd)
	port     int
	cmd      *exec.Cmd
	done     chan struct{} // closed when the postgres process exited
}

// Main runs the tests of m, then stops the server if a test started it and
// removes its directory. It returns m.Run's exit code, for os.Exit.
func Main(m *testing.M) int {
	code := m.Run()
	if err := Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// ErrNotInstalled is what CreateDB's error wraps when PostgreSQL's
// binaries are not installed.
var ErrNotInstalled = errors.New("PostgreSQL is not installed")

// NewDB creates a new, empty database on the test server (starting the
// server on first use), returns a DSN for it, and drops it when t ends:
// each test gets a database of its own. It skips t when PostgreSQL is not
// installed, or fails it when $CI is set.
func NewDB(t testing.TB) string {
	t.Helper()
	s := require(t)
	name, err := s.createDB()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// FORCE ends the sessions a failed test left open.
		if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return s.dsn(name)
}

// CreateDB creates a new, empty database on the test server (starting the
// server on first use) outside any one test, and returns its DSN: for the
// databases that all the tests of a binary share, created in its TestMain.
// The database lives as long as the server: Stop (called by Main) removes
// it with the cluster. When PostgreSQL is not installed the error wraps
// ErrNotInstalled, and the caller chooses between skipping and failing
// (NewDB fails under $CI).
func CreateDB() (string, error) {
	s, err := running()
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	name, err := s.createDB()
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	return s.dsn(name), nil
}

// createDB creates a database with a new name on s and returns the name.
func (s *server) createDB() (string, error) {
	name := fmt.Sprintf("pgtest_%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"); err != nil {
		return "", fmt.Errorf("creating database %s: %w", name, err)
	}
	return name, nil
}

// running returns the running server, starting it on first use. The error
// wraps ErrNotInstalled when the binaries are missing.
func running() (*server, error) {
	mu.Lock()
	defer mu.Unlock()
	if current == nil && failure == nil && missing == "" {
		initdb, postgres, why := findBinaries()
		if why != "" {
			missing = why
		} else {
			current, failure = start(initdb, postgres)
		}
	}
	switch {
	case missing != "":
		return nil, fmt.Errorf("%w: %s", ErrNotInstalled, missing)
	case failure != nil:
		return nil, failure
	}
	return current, nil
}

// require returns the running server, starting it on first use, or ends
// t: skipped when the binaries are missing (failed under $CI), failed when
// the server does not start.
func require(t testing.TB) *server {
	t.Helper()
	s, err := running()
	switch {
	case errors.Is(err, ErrNotInstalled):
		if os.Getenv("CI") != "" {
			t.Fatalf("pgtest: %v; CI must install PostgreSQL (.ci/run installs Debian's postgresql)", err)
		}
		t.Skipf("pgtest: %v; install PostgreSQL (Debian: apt-get install postgresql) to run this test", err)
	case err != nil:
		t.Fatalf("pgtest: %v", err)
	}
	return s
}

// Stop stops the server, if one was started, and removes its directory.
// NewDB starts a new one afterwards.
func Stop() error {
	mu.Lock()
	defer mu.Unlock()
	s := current
	current, failure = nil, nil
	if s == nil {
		return nil
	}
	return s.stop()
}

// findBinaries returns the paths of initdb and postgres, or why they were
// not found.
func findBinaries() (initdb, postgres, missing string) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
	}
	debian, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// The newest version first: 16 before 15 (not byte order: 9.6 is old).
	sort.Slice(debian, func(i, j int) bool { return version(debian[i]) > version(debian[j]) })
	dirs = append(dirs, debian...)
	for _, d := range dirs {
		i, p := filepath.Join(d, "initdb"), filepath.Join(d, "postgres")
		if executable(i) && executable(p) {
			return i, p, ""
		}
	}
	return "", "", "PostgreSQL's initdb and postgres are not on PATH nor in /usr/lib/postgresql/*/bin"
}

// version is the major version in a /usr/lib/postgresql/<v>/bin path.
func version(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// start creates a cluster in a new temporary directory and starts it.
func start(initdb, postgres string) (*server, error) {
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("creating the cluster directory: %w", err)
	}
	s, err := startIn(dir, initdb, postgres)
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	return s, nil
}

func startIn(dir, initdb, postgres string) (*server, error) {
	owner, err := unprivileged(dir)
	if err != nil {
		return nil, err
	}
	// --no-sync: the cluster is thrown away after a crash anyway; the
	// server itself runs with fsync on.
	cmd := exec.Command(initdb, "-D", filepath.Join(dir, "data"), "-U", superuser, "--auth=trust",
		"--encoding=UTF8", "--no-locale", "--no-sync")
	owner(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("running %s: %w\n%s", initdb, err, out)
	}
	s := &server{dir: dir, postgres: postgres, owner: owner}
	// A port taken between choosing it and the server binding it makes the
	// server exit; try another.
	var errs []error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		if err := s.run(port); err != nil {
			errs = append(errs, err)
			continue
		}
		return s, nil
	}
	return nil, errors.Join(errs...)
}

// run starts postgres on port of 127.0.0.1 and waits until it accepts
// connections.
func (s *server) run(port int) error {
	logPath := filepath.Join(s.dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening the server log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(s.postgres, "-D", filepath.Join(s.dir, "data"),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port="+strconv.Itoa(port),
		"-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=on",
		"-c", "synchronous_commit=on",
		"-c", "shared_buffers=16MB",
		"-c", "max_connections=300",
		"-c", "log_min_messages=warning",
		"-c", "logging_collector=off")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	s.owner(cmd)
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.postgres, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.port, s.cmd, s.done = port, cmd, done
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.exec(ctx, "SELECT 1")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres exited on port %d: %s", port, strings.TrimSpace(string(log)))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill(os.Interrupt)
			return fmt.Errorf("postgres did not accept connections within %s: %w", startTimeout, err)
		}
	}
}

// kill sends sig to the server and waits for it to exit (sending SIGKILL
// after 30 s).
func (s *server) kill(sig os.Signal) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// freePort returns a TCP port of 127.0.0.1 that nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// dsn is the URL of database name on s.
func (s *server) dsn(name string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", superuser, s.port, name)
}

// exec runs sql on the postgres database over a connection of its own.
func (s *server) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.dsn("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// stop shuts the server down (a fast shutdown: SIGINT) and removes its
// directory.
func (s *server) stop() error {
	s.kill(os.Interrupt)
	if err := os.RemoveAll(s.dir); err != nil {
		return fmt.Errorf("removing the cluster directory: %w", err)
	}
	return nil
}
