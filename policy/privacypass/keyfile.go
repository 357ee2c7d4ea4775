package privacypass

import (
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

// KeyFile is the issuer key file shared with the pp-peer test peer
// (testdata/peers/privacypass/README.md):
//
//	{ "token_type": 2,
//	  "private_key": "-----BEGIN PRIVATE KEY-----\n...",  // type 2: PKCS#8 PEM; type 1: hex 48-byte scalar
//	  "token_key": "MIIBUjA9...",                         // base64url with padding: the token-key encoding
//	  "token_key_id": "7170f811..." }                     // hex SHA-256(token_key bytes)
//
// private_key may be absent (public-only file); token_key_id is optional on
// input and checked when present.
type KeyFile struct {
	TokenType  TokenType `json:"token_type"`
	PrivateKey string    `json:"private_key,omitempty"`
	TokenKey   string    `json:"token_key"`
	TokenKeyID string    `json:"token_key_id,omitempty"`
}

// ParseKeyFile decodes a key file. The published token_key bytes are kept as
// they are (they define the key id); a private key must match them.
func ParseKeyFile(data []byte) (*Key, error) {
	var kf KeyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		return nil, wrapError(ReasonMalformed, "parsing key file", err)
	}
	if !kf.TokenType.Supported() {
		return nil, newError(ReasonUnsupportedType, "parsing key file: token type %s", kf.TokenType)
	}
	var priv *Key
	if kf.PrivateKey != "" {
		var err error
		if priv, err = parsePrivateKey(kf.TokenType, kf.PrivateKey); err != nil {
			return nil, err
		}
	}
	var k *Key
	switch {
	case kf.TokenKey != "":
		b, err := decodeB64(kf.TokenKey)
		if err != nil {
			return nil, wrapError(ReasonMalformed, "decoding key file token_key", err)
		}
		if k, err = ParseTokenKey(kf.TokenType, b); err != nil {
			return nil, fmt.Errorf("parsing key file token_key: %w", err)
		}
		if priv != nil {
			if k, err = k.withPrivate(priv); err != nil {
				return nil, err
			}
		}
	case priv != nil:
		k = priv
	default:
		return nil, newError(ReasonMalformed, "parsing key file: neither token_key nor private_key")
	}
	if kf.TokenKeyID != "" {
		id := k.ID()
		if !strings.EqualFold(kf.TokenKeyID, hex.EncodeToString(id[:])) {
			return nil, newError(ReasonMalformed, "parsing key file: token_key_id is not SHA-256(token_key)")
		}
	}
	return k, nil
}

func parsePrivateKey(t TokenType, s string) (*Key, error) {
	switch t {
	case TypeBlindRSA:
		block, _ := pem.Decode([]byte(s))
		if block == nil {
			return nil, newError(ReasonMalformed, "parsing key file private_key: no PEM block")
		}
		var sk *rsa.PrivateKey
		switch block.Type {
		case "PRIVATE KEY":
			parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, wrapError(ReasonMalformed, "parsing key file private_key", err)
			}
			var ok bool
			if sk, ok = parsed.(*rsa.PrivateKey); !ok {
				return nil, newError(ReasonMalformed, "parsing key file private_key: %T is not an RSA key", parsed)
			}
		case "RSA PRIVATE KEY":
			var err error
			if sk, err = x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
				return nil, wrapError(ReasonMalformed, "parsing key file private_key", err)
			}
		default:
			return nil, newError(ReasonMalformed, "parsing key file private_key: PEM type %q", block.Type)
		}
		k, err := NewBlindRSAKey(sk)
		if err != nil {
			return nil, fmt.Errorf("parsing key file private_key: %w", err)
		}
		return k, nil
	case TypeVOPRF:
		b, err := hex.DecodeString(strings.TrimSpace(s))
		if err != nil {
			return nil, wrapError(ReasonMalformed, "decoding key file private_key", err)
		}
		k, err := NewVOPRFKey(b)
		if err != nil {
			return nil, fmt.Errorf("parsing key file private_key: %w", err)
		}
		return k, nil
	}
	return nil, newError(ReasonUnsupportedType, "parsing key file: token type %s", t)
}

// MarshalKeyFile encodes k as a key file, with its private key when k has
// one and includePrivate is set.
func MarshalKeyFile(k *Key, includePrivate bool) ([]byte, error) {
	kf := KeyFile{TokenType: k.typ, TokenKey: encodeB64(k.encoded)}
	id := sha256.Sum256(k.encoded)
	kf.TokenKeyID = hex.EncodeToString(id[:])
	if includePrivate && k.HasPrivate() {
		switch k.typ {
		case TypeBlindRSA:
			der, err := x509.MarshalPKCS8PrivateKey(k.rsaPriv)
			if err != nil {
				return nil, fmt.Errorf("encoding rsa private key: %w", err)
			}
			kf.PrivateKey = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		case TypeVOPRF:
			b, err := k.oprfSK.MarshalBinary()
			if err != nil {
				return nil, fmt.Errorf("encoding voprf private key: %w", err)
			}
			kf.PrivateKey = hex.EncodeToString(b)
		}
	}
	out, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding key file: %w", err)
	}
	return append(out, '\n'), nil
}

// ReadKeyFile reads and parses a key file.
func ReadKeyFile(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading key file: %w", err)
	}
	k, err := ParseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// WriteKeyFile writes k, including its private key, to a new file readable
// by the owner only. It refuses to overwrite an existing file.
func WriteKeyFile(path string, k *Key) error {
	data, err := MarshalKeyFile(k, true)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating key file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing key file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing key file: %w", err)
	}
	return nil
}
