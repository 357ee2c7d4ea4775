package main

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/caddy-mimi/caddy-mimi/internal/s3test"
	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/forward/forwardtest"
)

// attachbackend: the storage a benchmark's gateway keeps its attachments
// in, on loopback, until SIGTERM or SIGINT: versitygw for the s3 backend
// (started through internal/s3test, as the S3 storage tests start it), or
// the forward backend's reference legacy backend (forwardtest.Backend,
// plain HTTP). Once it serves, it writes the Caddyfile lines of the
// attachments block's storage option to -out, and its own pid beside
// them, so that the script can write the Caddyfile and sample the
// backend's memory.

// attachBackendCmd runs the storage backend of attachbench.sh.
func attachBackendCmd(args []string) error {
	fs := flag.NewFlagSet("attachbackend", flag.ExitOnError)
	kind := fs.String("kind", "", "s3 (versitygw) or forward (the legacy backend of the forward storage tests)")
	dir := fs.String("dir", "", "directory of the backend's objects (required)")
	out := fs.String("out", "", "file the storage option's Caddyfile lines are written to once the backend serves (required)")
	versitygw := fs.String("versitygw", os.Getenv("VERSITYGW"), "versitygw binary, for -kind s3")
	addr := fs.String("addr", "127.0.0.1:0", "loopback address of the forward backend")
	fs.Parse(args)
	if *dir == "" || *out == "" {
		return errors.New("attachbackend: -dir and -out are required")
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var lines string
	switch *kind {
	case "s3":
		if *versitygw == "" {
			return errors.New("attachbackend: -kind s3 needs -versitygw or $VERSITYGW")
		}
		srv, kill, err := s3test.Run(*versitygw, *dir)
		if err != nil {
			return fmt.Errorf("starting versitygw: %w", err)
		}
		defer kill()
		// The keys go into a file of the temporary directory, read by
		// Caddy through a placeholder.
		keys := filepath.Join(*dir, "s3-secret")
		if err := os.WriteFile(keys, []byte(srv.SecretKey), 0o600); err != nil {
			return err
		}
		lines = fmt.Sprintf("storage s3 {\n\tendpoint %s\n\tbucket %s\n\tregion %s\n\taccess_key %s\n\tsecret_key {file.%s}\n\tinsecure\n\tpath_style\n}\n",
			srv.Endpoint, srv.Bucket, srv.Region, srv.AccessKey, keys)
	case "forward":
		key := make([]byte, 32)
		crand.Read(key)
		keyFile := filepath.Join(*dir, "forward-key")
		if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)), 0o600); err != nil {
			return err
		}
		objects := filepath.Join(*dir, "objects")
		if err := os.MkdirAll(objects, 0o700); err != nil {
			return err
		}
		l, err := net.Listen("tcp", *addr)
		if err != nil {
			return err
		}
		hs := &http.Server{Handler: &forwardtest.Backend{Dir: objects, Key: []byte(hex.EncodeToString(key))}}
		go hs.Serve(l)
		defer hs.Close()
		lines = fmt.Sprintf("storage forward http://%s%s {\n\tkey_file %s\n}\n", l.Addr(), forwardtest.Base, keyFile)
	default:
		return fmt.Errorf("attachbackend: -kind %q: want s3 or forward", *kind)
	}
	tmp := *out + ".tmp"
	if err := os.WriteFile(tmp, []byte(lines), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "attachbackend: %s serving, storage option in %s\n", *kind, *out)
	<-ctx.Done()
	return nil
}
