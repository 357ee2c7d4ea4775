package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

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
	if err := writeRoot(*dir); err != nil {
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

func writeRoot(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "caddy-mimi loadtest root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "root-cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "root-key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}
