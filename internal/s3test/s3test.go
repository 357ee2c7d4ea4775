// Package s3test starts a real S3 server on loopback for tests: the
// versitygw gateway (github.com/versity/versitygw) with its posix backend
// in a temporary directory. Its binary is not a module dependency: .ci/run
// installs it with go install into a temporary GOBIN and exports its path
// as $VERSITYGW. Without it, Start skips the test, except under CI (when
// $CI is set), where a missing S3 server fails the test.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Server is a running S3 server with one bucket.
type Server struct {
	// Endpoint is the server's host:port on loopback (plain HTTP).
	Endpoint string
	// Bucket exists and is empty when Start returns.
	Bucket string
	// AccessKey and SecretKey are the root user's.
	AccessKey, SecretKey string
	// Region is the server's region.
	Region string
	// Dir is the posix backend's directory (the bucket is a directory in it).
	Dir string
}

// Client returns a minio client of the server, for checks behind a
// backend's back.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := s.client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// client is a minio client of the server as its root user.
func (s *Server) client() (*minio.Client, error) {
	return minio.New(s.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region:       s.Region,
		BucketLookup: minio.BucketLookupPath,
	})
}

// MakeBucket creates another bucket on the server, for tests that run
// several stores on one server (one bucket each).
func (s *Server) MakeBucket(ctx context.Context, name string) error {
	c, err := s.client()
	if err != nil {
		return fmt.Errorf("making bucket %s: %w", name, err)
	}
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		return fmt.Errorf("making bucket %s: %w", name, err)
	}
	return nil
}

// Binary returns the versitygw binary: $VERSITYGW, or versitygw on $PATH.
func Binary() (string, error) {
	if p := os.Getenv("VERSITYGW"); p != "" {
		return p, nil
	}
	return exec.LookPath("versitygw")
}

// Start runs versitygw on a free loopback port with its posix backend in
// a t.TempDir, creates a bucket, and stops the server when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := skipWithout(t)
	srv, stop, err := start(bin, t.TempDir())
	if err != nil {
		t.Fatalf("starting versitygw: %v", err)
	}
	t.Cleanup(stop)
	return srv
}

func skipWithout(t testing.TB) string {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		const msg = "versitygw is not installed (.ci/run installs it and sets $VERSITYGW); the S3 tests need a real S3 server"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

func start(bin, dir string) (*Server, func(), error) {
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, nil, err
	}
	srv := &Server{
		Bucket:    "mimi-test",
		AccessKey: "test" + randHex(8),
		SecretKey: randHex(20),
		Region:    "us-east-1",
		Dir:       root,
	}
	for attempt := 0; ; attempt++ {
		addr, err := freePort()
		if err != nil {
			return nil, nil, err
		}
		srv.Endpoint = addr
		stop, err := run(bin, srv, filepath.Join(dir, "versitygw.log"))
		if err == nil {
			return srv, stop, nil
		}
		if attempt == 2 {
			return nil, nil, err
		}
	}
}

// run starts the process and waits until the bucket is created.
func run(bin string, srv *Server, logFile string) (func(), error) {
	log, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", srv.Endpoint, "--region", srv.Region, "--quiet", "posix", srv.Dir)
	// Secrets through the environment, not the command line.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+srv.AccessKey, "ROOT_SECRET_KEY="+srv.SecretKey)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); log.Close() }()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	c, err := minio.New(srv.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
		Region:       srv.Region,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		stop()
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("versitygw exited (%v): %s", err, bytes.TrimSpace(out))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = c.MakeBucket(ctx, srv.Bucket, minio.MakeBucketOptions{Region: srv.Region})
		cancel()
		if err == nil {
			return stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			out, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("versitygw on %s did not create the bucket: %v: %s", srv.Endpoint, err, bytes.TrimSpace(out))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Run starts versitygw (the binary bin) on a free loopback port with its
// posix backend under dir and creates the bucket, outside a test (the load
// tests' benchmark uses it); stop kills the server.
func Run(bin, dir string) (srv *Server, stop func(), err error) {
	return start(bin, dir)
}
