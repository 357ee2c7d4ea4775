// Package redistest runs a throwaway redis-server for a test, on a free
// port of 127.0.0.1, in a temporary directory, with persistence off
// (--save ” --appendonly no), and stops it when the test ends.
//
// The binary is redis-server on PATH (Debian's redis-server package puts
// it in /usr/bin), or $REDIS_SERVER. When it is missing, New skips the
// test, or fails it when $CI is set: CI installs redis-server (.ci/run), so
// a missing server there is a broken setup, not a reason to pass.
//
// On Linux the server gets SIGKILL when the test binary dies, so a test
// binary killed by a timeout or a panic does not leave it running.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long the server may take to answer PING.
const startTimeout = 20 * time.Second

// Server is a redis-server of one test's own. Its methods are safe for
// concurrent use.
type Server struct {
	mu     sync.Mutex
	binary string
	dir    string
	port   int
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process exited
}

// New starts a server for t and stops it when t ends. It skips t when
// redis-server is not installed, or fails it when $CI is set.
func New(t testing.TB) *Server {
	t.Helper()
	bin, why := findBinary()
	if why != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("redistest: %s; CI must install redis-server (.ci/run installs Debian's redis-server)", why)
		}
		t.Skipf("redistest: %s; install redis-server (Debian: apt-get install redis-server) to run this test", why)
	}
	s := &Server{binary: bin, dir: t.TempDir()}
	var errs []error
	// A port taken between choosing it and the server binding it makes
	// the server exit; try another.
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("redistest: %v", err)
		}
		if err = s.run(port); err == nil {
			break
		}
		errs = append(errs, err)
	}
	if s.cmd == nil {
		t.Fatalf("redistest: %v", errors.Join(errs...))
	}
	t.Cleanup(s.stop)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Stop kills the server (SIGKILL, as a crash). Connections fail until
// Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop()
}

// Restart starts the server again on its port, empty, after Stop.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	port := s.port
	s.mu.Unlock()
	if err := s.run(port); err != nil {
		t.Fatalf("redistest: restarting: %v", err)
	}
}

func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// run starts redis-server on port and waits until it answers PING.
func (s *Server) run(port int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	logPath := filepath.Join(s.dir, "redis.log")
	cmd := exec.Command(s.binary,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", logPath,
		"--daemonize", "no",
		"--protected-mode", "yes")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.binary, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(startTimeout)
	for {
		err := ping(port)
		if err == nil {
			s.port, s.cmd, s.done = port, cmd, done
			return nil
		}
		select {
		case <-done:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("redis-server exited on port %d: %s", port, strings.TrimSpace(string(log)))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("redis-server did not answer within %s: %w", startTimeout, err)
		}
	}
}

// ping sends PING in the inline protocol and expects +PONG.
func ping(port int) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// findBinary returns the path of redis-server, or why it was not found.
func findBinary() (string, string) {
	if p := os.Getenv("REDIS_SERVER"); p != "" {
		return p, ""
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, ""
	}
	return "", "redis-server is not on PATH (nor named by $REDIS_SERVER)"
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
