// Package testca makes X.509 certificate authorities and certificates for
// tests: the root that tests and the load generator give Caddy's internal
// CA (`pki { ca local { root ... } }`), so that they can verify the sites'
// certificates without a trust store, and, for mutual TLS between
// providers, a CA per test provider that issues leaf certificates, so a
// test can tell a peer's CA from an untrusted one.
package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// File names of the root in its directory (WriteRoot).
const (
	CertFile = "root-cert.pem"
	KeyFile  = "root-key.pem"
)

// WriteRoot creates a P-256 root named commonName, valid from an hour ago
// for 30 days (longer than the 7-day intermediates of Caddy's CA), and
// writes it to dir/CertFile and its PKCS#8 key to dir/KeyFile, both 0600.
func WriteRoot(dir, commonName string) (*x509.Certificate, error) {
	ca, err := newCA(commonName, 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("encoding root key: %w", err)
	}
	if _, err := ca.WritePEM(dir, CertFile); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("writing root key: %w", err)
	}
	return ca.Cert, nil
}

// CA is a self-signed root that issues leaf certificates.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA makes a P-256 root named name, valid from an hour ago for a day.
func NewCA(name string) (*CA, error) { return newCA(name, 24*time.Hour) }

// newCA makes a P-256 root named name, valid from an hour ago for
// validity.
func newCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	return &CA{Cert: cert, key: key}, nil
}

// Pool returns a pool holding only the CA's root.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// WritePEM writes the CA's root to dir/name as PEM and returns the path.
func (ca *CA) WritePEM(dir, name string) (string, error) {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o600); err != nil {
		return "", fmt.Errorf("writing CA root: %w", err)
	}
	return path, nil
}

// Leaf describes a certificate to issue. The zero value of a field takes
// the default: valid from an hour ago for an hour, extended key usage
// serverAuth only (as public WebPKI server certificates have it).
type Leaf struct {
	DNSNames  []string
	NotBefore time.Time
	NotAfter  time.Time
	ExtKeyUse []x509.ExtKeyUsage
}

// Issue issues a leaf certificate described by l, signed by the CA.
func (ca *CA) Issue(l Leaf) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating leaf key: %w", err)
	}
	now := time.Now()
	if l.NotBefore.IsZero() {
		l.NotBefore = now.Add(-time.Hour)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = now.Add(time.Hour)
	}
	if l.ExtKeyUse == nil {
		l.ExtKeyUse = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	var cn string
	if len(l.DNSNames) > 0 {
		cn = l.DNSNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn}, DNSNames: l.DNSNames,
		NotBefore: l.NotBefore, NotAfter: l.NotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: l.ExtKeyUse,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("creating leaf certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parsing leaf certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// WriteKeyPair writes cert's chain and key to dir/name.crt and
// dir/name.key as PEM and returns both paths.
func WriteKeyPair(cert tls.Certificate, dir, name string) (certFile, keyFile string, err error) {
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return "", "", fmt.Errorf("encoding key: %w", err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		return "", "", fmt.Errorf("writing certificate: %w", err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", fmt.Errorf("writing key: %w", err)
	}
	return certFile, keyFile, nil
}

// serial returns a random 64-bit serial number.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}
