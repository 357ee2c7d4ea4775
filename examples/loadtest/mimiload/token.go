package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"

	"github.com/caddy-mimi/caddy-mimi/policy/privacypass"
)

// minter issues type 2 tokens locally with b.localhost's issuer key: the
// generator holds the private key file, so issuance needs no round trip.
//
// Two ways give the same tokens. "blind" runs RFC 9578 issuance in
// process: privacypass.NewTokenRequest, Issuer.Issue, Finalize (about 4 ms
// of CPU a token: circl's blind signature does not use the CRT). "direct"
// (the default) signs the token's authenticator input with RSASSA-PSS
// (SHA-384, 48-byte salt) under the issuer's private key: the signature
// that unblinding yields, so the gateway verifies both alike, in a
// fraction of the time, which keeps the pool large enough for a run.
type minter struct {
	key    *privacypass.Key
	issuer *privacypass.Issuer
	priv   *rsa.PrivateKey
	blind  bool
}

func newMinter(dir, how string) (*minter, error) {
	path := filepath.Join(dir, "pp", "k2.json")
	k, err := privacypass.ReadKeyFile(path)
	if err != nil {
		return nil, err
	}
	is, err := privacypass.NewIssuer(privacypass.IssuerKey{Key: k})
	if err != nil {
		return nil, err
	}
	m := &minter{key: k, issuer: is}
	switch how {
	case "blind":
		m.blind = true
	case "direct":
		if m.priv, err = readRSAKey(path); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("-mint %q: want blind or direct", how)
	}
	return m, nil
}

// readRSAKey reads the PKCS#8 private key of a type 2 key file.
func readRSAKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kf privacypass.KeyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	block, _ := pem.Decode([]byte(kf.PrivateKey))
	if block == nil {
		return nil, fmt.Errorf("key file %s: no PEM private key", path)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	priv, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key file %s: not an RSA key", path)
	}
	return priv, nil
}

// mint returns one fresh token for challenge.
func (m *minter) mint(challenge []byte) (*privacypass.Token, error) {
	if m.blind {
		p, err := privacypass.NewTokenRequest(challenge, m.key.Public())
		if err != nil {
			return nil, err
		}
		resp, err := m.issuer.Issue(p.Request)
		if err != nil {
			return nil, err
		}
		return p.Finalize(resp)
	}
	if m.priv == nil {
		return nil, errors.New("no private key")
	}
	t := &privacypass.Token{
		TokenType:       privacypass.TypeBlindRSA,
		ChallengeDigest: privacypass.ChallengeDigest(challenge),
		TokenKeyID:      m.key.ID(),
	}
	rand.Read(t.Nonce[:])
	h := sha512.Sum384(t.AuthenticatorInput())
	sig, err := rsa.SignPSS(rand.Reader, m.priv, crypto.SHA384, h[:], &rsa.PSSOptions{SaltLength: 48, Hash: crypto.SHA384})
	if err != nil {
		return nil, err
	}
	t.Authenticator = sig
	return t, nil
}

// challenge asks b for the challenge of its token-protected endpoint.
func (m *minter) challenge(ctx context.Context, t *target) ([]byte, error) {
	a := t.do(ctx, http.MethodGet, t.url("b.localhost", tokenPath), nil, nil)
	if a.err != nil {
		return nil, a.err
	}
	if a.status != http.StatusUnauthorized {
		return nil, fmt.Errorf("GET %s without a token answered %d, want 401", tokenPath, a.status)
	}
	cs, err := privacypass.ParseWWWAuthenticate(a.header.Get("WWW-Authenticate"))
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		if c.TokenType() == privacypass.TypeBlindRSA {
			return c.TokenChallenge, nil
		}
	}
	return nil, fmt.Errorf("no type 2 challenge in %q", a.header.Get("WWW-Authenticate"))
}

// tokens mints n tokens for challenge on every CPU and returns their
// Authorization values.
func (m *minter) tokens(challenge []byte, n int) ([]string, error) {
	out := make([]string, n)
	errs := make([]error, n)
	parallel(n, runtime.GOMAXPROCS(0), func(i int) {
		tok, err := m.mint(challenge)
		if err != nil {
			errs[i] = err
			return
		}
		out[i] = privacypass.FormatAuthorization(tok)
	})
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("minting tokens: %w", err)
		}
	}
	return out, nil
}

// tokenPath is b.localhost's endpoint that requires a token (privacy_pass
// require verification_key): with a token, a bodiless GET answers 200 with
// b's verification keys.
const tokenPath = "/verification_key"
