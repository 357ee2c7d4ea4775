package privacypass

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/cloudflare/circl/oprf"
)

// rsaModulusBits is the only modulus size token type 0x0002 allows (Nk = 256).
const rsaModulusBits = 2048

// pssSaltLength is the RSASSA-PSS salt length RFC 9578 §6 pins (SHA-384 size).
const pssSaltLength = 48

var (
	oidRSASSAPSS     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 10}
	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidSHA384        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidMGF1          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}
)

// ASN.1 shapes of RFC 4055 / RFC 5756, as RFC 9578 §6.5 encodes them: the hash
// AlgorithmIdentifiers carry no NULL parameters and trailerField is left out.
type pssHashAlg struct {
	Algorithm  asn1.ObjectIdentifier
	Parameters asn1.RawValue `asn1:"optional"`
}

type pssMGFAlg struct {
	Algorithm asn1.ObjectIdentifier
	Params    pssHashAlg
}

type pssParams struct {
	Hash         pssHashAlg `asn1:"explicit,tag:0"`
	MGF          pssMGFAlg  `asn1:"explicit,tag:1"`
	SaltLength   int        `asn1:"explicit,tag:2"`
	TrailerField int        `asn1:"optional,explicit,tag:3,default:1"`
}

type algorithmIdentifier struct {
	Algorithm  asn1.ObjectIdentifier
	Parameters asn1.RawValue `asn1:"optional"`
}

type subjectPublicKeyInfo struct {
	Algorithm algorithmIdentifier
	PublicKey asn1.BitString
}

// MarshalBlindRSATokenKey encodes an RSA public key as the token-key of type
// 0x0002 (RFC 9578 §6.5): a DER SubjectPublicKeyInfo with the id-RSASSA-PSS
// OID and RSASSA-PSS-params (SHA-384, MGF1-SHA-384, salt length 48). For a
// 2048-bit key with e = 65537 that is 342 bytes, byte for byte what RFC 9578
// Appendix A.2 and privacypass-ts produce.
func MarshalBlindRSATokenKey(pk *rsa.PublicKey) ([]byte, error) {
	if pk == nil || pk.N == nil || pk.N.BitLen() != rsaModulusBits {
		return nil, newError(ReasonInvalidConfig, "encoding token key: RSA modulus must be %d bits", rsaModulusBits)
	}
	params, err := asn1.Marshal(pssParams{
		Hash:         pssHashAlg{Algorithm: oidSHA384},
		MGF:          pssMGFAlg{Algorithm: oidMGF1, Params: pssHashAlg{Algorithm: oidSHA384}},
		SaltLength:   pssSaltLength,
		TrailerField: 1, // the DEFAULT, so it is omitted
	})
	if err != nil {
		return nil, wrapError(ReasonInvalidConfig, "encoding rsassa-pss params", err)
	}
	pkcs1 := x509.MarshalPKCS1PublicKey(pk)
	der, err := asn1.Marshal(subjectPublicKeyInfo{
		Algorithm: algorithmIdentifier{Algorithm: oidRSASSAPSS, Parameters: asn1.RawValue{FullBytes: params}},
		PublicKey: asn1.BitString{Bytes: pkcs1, BitLength: 8 * len(pkcs1)},
	})
	if err != nil {
		return nil, wrapError(ReasonInvalidConfig, "encoding token key", err)
	}
	return der, nil
}

// ParseBlindRSATokenKey decodes a type 0x0002 token key. It accepts the
// id-RSASSA-PSS SubjectPublicKeyInfo of RFC 9578 §6.5 (the params must say
// SHA-384, MGF1 with SHA-384 and salt length 48; NULL hash parameters and an
// explicit trailerField of 1 are tolerated) and, for keys published by older
// issuers, an rsaEncryption SubjectPublicKeyInfo. The modulus must be exactly
// 2048 bits and no byte may follow the structure. Go's x509 package cannot do
// this: it refuses the id-RSASSA-PSS algorithm (golang/go#48314).
func ParseBlindRSATokenKey(der []byte) (*rsa.PublicKey, error) {
	var spki subjectPublicKeyInfo
	rest, err := asn1.Unmarshal(der, &spki)
	if err != nil {
		return nil, wrapError(ReasonMalformed, "parsing token key", err)
	}
	if len(rest) != 0 {
		return nil, newError(ReasonMalformed, "parsing token key: %d trailing bytes", len(rest))
	}
	switch {
	case spki.Algorithm.Algorithm.Equal(oidRSASSAPSS):
		if err := checkPSSParams(spki.Algorithm.Parameters.FullBytes); err != nil {
			return nil, err
		}
	case spki.Algorithm.Algorithm.Equal(oidRSAEncryption):
		// Legacy encoding: parameters must be absent or NULL.
		p := spki.Algorithm.Parameters.FullBytes
		if len(p) != 0 && !bytes.Equal(p, asn1.NullBytes) {
			return nil, newError(ReasonMalformed, "parsing token key: rsaEncryption parameters are not NULL")
		}
	default:
		return nil, newError(ReasonMalformed, "parsing token key: algorithm %v is not id-RSASSA-PSS", spki.Algorithm.Algorithm)
	}
	if spki.PublicKey.BitLength%8 != 0 {
		return nil, newError(ReasonMalformed, "parsing token key: public key bit string is not byte aligned")
	}
	pk, err := x509.ParsePKCS1PublicKey(spki.PublicKey.Bytes)
	if err != nil {
		return nil, wrapError(ReasonMalformed, "parsing token key", err)
	}
	if pk.N.BitLen() != rsaModulusBits {
		return nil, newError(ReasonMalformed, "parsing token key: RSA modulus is %d bits, want %d", pk.N.BitLen(), rsaModulusBits)
	}
	return pk, nil
}

func checkPSSParams(der []byte) error {
	if len(der) == 0 {
		return newError(ReasonMalformed, "parsing token key: rsassa-pss params missing")
	}
	var p pssParams
	rest, err := asn1.Unmarshal(der, &p)
	if err != nil {
		return wrapError(ReasonMalformed, "parsing rsassa-pss params", err)
	}
	if len(rest) != 0 {
		return newError(ReasonMalformed, "parsing rsassa-pss params: trailing bytes")
	}
	hashOK := func(h pssHashAlg) bool {
		return h.Algorithm.Equal(oidSHA384) &&
			(len(h.Parameters.FullBytes) == 0 || bytes.Equal(h.Parameters.FullBytes, asn1.NullBytes))
	}
	if !hashOK(p.Hash) || !p.MGF.Algorithm.Equal(oidMGF1) || !hashOK(p.MGF.Params) {
		return newError(ReasonMalformed, "parsing rsassa-pss params: hash must be sha-384 with mgf1-sha-384")
	}
	if p.SaltLength != pssSaltLength {
		return newError(ReasonMalformed, "parsing rsassa-pss params: salt length %d, want %d", p.SaltLength, pssSaltLength)
	}
	if p.TrailerField != 1 {
		return newError(ReasonMalformed, "parsing rsassa-pss params: trailer field %d, want 1", p.TrailerField)
	}
	return nil
}

// Key is an issuer key for one token type: always the public token key as
// published (whose SHA-256 is the token_key_id), and optionally the private
// key. An Origin needs the private key only for type 0x0001; an Issuer always
// needs it. A Key is immutable and safe for concurrent use.
type Key struct {
	typ       TokenType
	encoded   []byte
	id        [KeyIDSize]byte
	notBefore time.Time // zero: usable now

	rsaPub  *rsa.PublicKey
	rsaPriv *rsa.PrivateKey
	oprfPub *oprf.PublicKey
	oprfSK  *oprf.PrivateKey
	server  oprf.VerifiableServer
}

// Type returns the token type of the key.
func (k *Key) Type() TokenType { return k.typ }

// TokenKey returns the token-key encoding exactly as published (a copy).
func (k *Key) TokenKey() []byte { return append([]byte(nil), k.encoded...) }

// ID returns the token_key_id: SHA-256 of the token key bytes as published.
func (k *Key) ID() [KeyIDSize]byte { return k.id }

// TruncatedID returns the last byte of the token_key_id, which TokenRequests
// carry instead of the full id.
func (k *Key) TruncatedID() byte { return k.id[KeyIDSize-1] }

// HasPrivate reports whether the key holds the issuer private key.
func (k *Key) HasPrivate() bool { return k.rsaPriv != nil || k.oprfSK != nil }

// Public returns the key without its private part.
func (k *Key) Public() *Key {
	return &Key{typ: k.typ, encoded: k.encoded, id: k.id, notBefore: k.notBefore, rsaPub: k.rsaPub, oprfPub: k.oprfPub}
}

// NotBefore returns the time before which clients should not use the key
// (the issuer directory's "not-before", RFC 9578 §4), or the zero time when
// the key carries none.
func (k *Key) NotBefore() time.Time { return k.notBefore }

// WithNotBefore returns a copy of the key carrying t (the zero time: none) as
// its NotBefore. The token key and its id are unchanged.
func (k *Key) WithNotBefore(t time.Time) *Key {
	out := *k
	out.notBefore = t
	return &out
}

// usableAt reports whether clients may use the key at now: it has no
// not-before, or that time has come.
func (k *Key) usableAt(now time.Time) bool {
	return k.notBefore.IsZero() || !now.Before(k.notBefore)
}

// RSAPublicKey returns the RSA public key of a type 0x0002 key, or nil.
func (k *Key) RSAPublicKey() *rsa.PublicKey { return k.rsaPub }

// ParseTokenKey builds a public Key from a token-key encoding as published in
// a WWW-Authenticate challenge, an issuer directory or configuration. The id
// is computed over exactly these bytes, never a re-encoding. For type 0x0001
// the encoding must be a 49-byte compressed P-384 point.
func ParseTokenKey(t TokenType, encoded []byte) (*Key, error) {
	k := &Key{typ: t, encoded: append([]byte(nil), encoded...), id: sha256.Sum256(encoded)}
	switch t {
	case TypeBlindRSA:
		pk, err := ParseBlindRSATokenKey(encoded)
		if err != nil {
			return nil, err
		}
		k.rsaPub = pk
	case TypeVOPRF:
		if len(encoded) != voprfElementSize || (encoded[0] != 2 && encoded[0] != 3) {
			return nil, newError(ReasonMalformed, "parsing token key: want a 49-byte compressed P-384 point")
		}
		pk := new(oprf.PublicKey)
		if err := pk.UnmarshalBinary(oprf.SuiteP384, encoded); err != nil {
			return nil, wrapError(ReasonMalformed, "parsing token key", err)
		}
		k.oprfPub = pk
	default:
		return nil, newError(ReasonUnsupportedType, "parsing token key: token type %s", t)
	}
	return k, nil
}

// NewBlindRSAKey builds a type 0x0002 Key from an RSA private key of exactly
// 2048 bits, with the token key encoded as MarshalBlindRSATokenKey does.
func NewBlindRSAKey(sk *rsa.PrivateKey) (*Key, error) {
	if sk == nil {
		return nil, newError(ReasonInvalidConfig, "building token key: nil rsa key")
	}
	if err := sk.Validate(); err != nil {
		return nil, wrapError(ReasonInvalidConfig, "validating rsa key", err)
	}
	enc, err := MarshalBlindRSATokenKey(&sk.PublicKey)
	if err != nil {
		return nil, err
	}
	k, err := ParseTokenKey(TypeBlindRSA, enc)
	if err != nil {
		return nil, err
	}
	k.rsaPriv = sk
	return k, nil
}

// NewVOPRFKey builds a type 0x0001 Key from a 48-byte serialized P-384
// scalar (RFC 9497 SerializeScalar).
func NewVOPRFKey(scalar []byte) (*Key, error) {
	sk := new(oprf.PrivateKey)
	if err := sk.UnmarshalBinary(oprf.SuiteP384, scalar); err != nil {
		return nil, wrapError(ReasonInvalidConfig, "parsing voprf private key", err)
	}
	return newVOPRFKey(sk)
}

func newVOPRFKey(sk *oprf.PrivateKey) (*Key, error) {
	enc, err := sk.Public().MarshalBinary()
	if err != nil {
		return nil, wrapError(ReasonInvalidConfig, "encoding voprf public key", err)
	}
	k, err := ParseTokenKey(TypeVOPRF, enc)
	if err != nil {
		return nil, err
	}
	k.oprfSK = sk
	k.server = oprf.NewVerifiableServer(oprf.SuiteP384, sk)
	return k, nil
}

// GenerateKey creates a new issuer key of the given type with crypto/rand:
// a 2048-bit RSA key for 0x0002, a P-384 scalar for 0x0001.
func GenerateKey(t TokenType) (*Key, error) {
	switch t {
	case TypeBlindRSA:
		sk, err := rsa.GenerateKey(rand.Reader, rsaModulusBits)
		if err != nil {
			return nil, fmt.Errorf("generating rsa key: %w", err)
		}
		return NewBlindRSAKey(sk)
	case TypeVOPRF:
		sk, err := oprf.GenerateKey(oprf.SuiteP384, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating voprf key: %w", err)
		}
		return newVOPRFKey(sk)
	}
	return nil, newError(ReasonUnsupportedType, "generating key: token type %s", t)
}

// withPrivate attaches a private key to a public Key after checking that
// they match. The published encoding (and so the id) is kept as is.
func (k *Key) withPrivate(priv *Key) (*Key, error) {
	if priv.typ != k.typ {
		return nil, newError(ReasonInvalidConfig, "private key type %s does not match token key type %s", priv.typ, k.typ)
	}
	out := *k
	switch k.typ {
	case TypeBlindRSA:
		if k.rsaPub.N.Cmp(priv.rsaPriv.N) != 0 || k.rsaPub.E != priv.rsaPriv.E {
			return nil, newError(ReasonInvalidConfig, "private key does not match token key")
		}
		out.rsaPriv = priv.rsaPriv
	case TypeVOPRF:
		if subtle.ConstantTimeCompare(k.encoded, priv.encoded) != 1 {
			return nil, newError(ReasonInvalidConfig, "private key does not match token key")
		}
		out.oprfSK, out.server = priv.oprfSK, priv.server
	}
	return &out, nil
}

// verifyAuthenticator checks the token's authenticator under k; the caller
// has already matched the key id and token type.
func (k *Key) verifyAuthenticator(t *Token, scratch []byte) error {
	input := t.appendAuthenticatorInput(scratch[:0])
	switch k.typ {
	case TypeBlindRSA:
		h := sha512.Sum384(input)
		if err := rsa.VerifyPSS(k.rsaPub, crypto.SHA384, h[:], t.Authenticator,
			&rsa.PSSOptions{SaltLength: pssSaltLength, Hash: crypto.SHA384}); err != nil {
			return wrapError(ReasonAuthenticator, "verifying rsassa-pss authenticator", err)
		}
		return nil
	case TypeVOPRF:
		if k.oprfSK == nil {
			return newError(ReasonInvalidConfig, "verifying token: type 0x0001 needs the issuer private key")
		}
		want, err := k.server.FullEvaluate(input)
		if err != nil {
			return wrapError(ReasonAuthenticator, "evaluating voprf", err)
		}
		if subtle.ConstantTimeCompare(want, t.Authenticator) != 1 {
			return newError(ReasonAuthenticator, "verifying voprf authenticator: mismatch")
		}
		return nil
	}
	return newError(ReasonUnsupportedType, "verifying token: token type %s", k.typ)
}

var errNotLessThanN = errors.New("blinded message is not less than the modulus")

func checkBelowModulus(msg []byte, n *big.Int) error {
	if new(big.Int).SetBytes(msg).Cmp(n) >= 0 {
		return errNotLessThanN
	}
	return nil
}
