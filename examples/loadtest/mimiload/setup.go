package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/caddy-mimi/caddy-mimi/internal/testca"
	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// setupCmd writes what Caddy needs before it starts: the root its internal
// CA issues from (so the generator and the federation fetcher can verify
// the sites), the Privacy Pass issuer key of b.localhost and the secret of
// its window contexts.
func setupCmd(args []string) error {
	fs := flag.NewFlagSet("setup", flag.ExitOnError)
	dir := fs.String("dir", "", "directory to write into (required)")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("setup: -dir is required")
	}
	if _, err := testca.WriteRoot(*dir, "caddy-mimi loadtest root"); err != nil {
		return fmt.Errorf("writing root CA: %w", err)
	}
	ppDir := filepath.Join(*dir, "pp")
	if err := os.MkdirAll(ppDir, 0o700); err != nil {
		return err
	}
	k, err := privacypass.GenerateKey(privacypass.TypeBlindRSA)
	if err != nil {
		return fmt.Errorf("generating issuer key: %w", err)
	}
	if err := privacypass.WriteKeyFile(filepath.Join(ppDir, "k2.json"), k); err != nil {
		return err
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	return os.WriteFile(filepath.Join(ppDir, "secret"), []byte(hex.EncodeToString(secret)), 0o600)
}
