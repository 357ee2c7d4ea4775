package pgtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is a PostgreSQL cluster of one test's own, for tests that crash
// and restart the server (NewDB's shared server must stay up for the
// others). Its methods are safe for concurrent use.
type Server struct {
	mu sync.Mutex
	s  *server
}

// NewServer starts a cluster for t alone, in a temporary directory, and
// stops and removes it when t ends. It skips t when PostgreSQL is not
// installed, or fails it when $CI is set.
func NewServer(t testing.TB) *Server {
	t.Helper()
	mu.Lock()
	initdb, postgres, why := findBinaries()
	if why != "" && missing == "" {
		missing = why
	}
	mu.Unlock()
	if why != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("pgtest: %s; CI must install PostgreSQL (.ci/run installs Debian's postgresql)", why)
		}
		t.Skipf("pgtest: %s; install PostgreSQL (Debian: apt-get install postgresql) to run this test", why)
	}
	s, err := start(initdb, postgres)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	srv := &Server{s: s}
	t.Cleanup(func() {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if err := srv.s.stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return srv
}

// NewDB creates a new, empty database on the server and returns its DSN.
func (srv *Server) NewDB(t testing.TB) string {
	t.Helper()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	name := fmt.Sprintf("pgtest_%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.s.exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"); err != nil {
		t.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	return srv.s.dsn(name)
}

// Crash stops the server as a crash does: an immediate shutdown
// (SIGQUIT), which writes nothing more to disk, so that the next start
// recovers from the WAL. Connections fail until Restart.
func (srv *Server) Crash(t testing.TB) {
	t.Helper()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	srv.s.kill(syscall.SIGQUIT)
}

// Restart starts the server again on its data directory and port, after
// Crash: the DSNs NewDB returned work again.
func (srv *Server) Restart(t testing.TB) {
	t.Helper()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if err := srv.s.run(srv.s.port); err != nil {
		t.Fatalf("pgtest: restarting: %v", err)
	}
}
