package mls

import (
	"bytes"
	"errors"
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

type hexb = vectors.Hex

func TestCryptoBasicsVectors(t *testing.T) {
	var cases []struct {
		CipherSuite CipherSuite `json:"cipher_suite"`
		RefHash     struct {
			Label      string `json:"label"`
			Value, Out hexb
		} `json:"ref_hash"`
		ExpandWithLabel struct {
			Secret  hexb   `json:"secret"`
			Label   string `json:"label"`
			Context hexb   `json:"context"`
			Length  uint16 `json:"length"`
			Out     hexb   `json:"out"`
		} `json:"expand_with_label"`
		DeriveSecret struct {
			Secret hexb   `json:"secret"`
			Label  string `json:"label"`
			Out    hexb   `json:"out"`
		} `json:"derive_secret"`
		DeriveTreeSecret struct {
			Secret     hexb   `json:"secret"`
			Label      string `json:"label"`
			Generation uint32 `json:"generation"`
			Length     uint16 `json:"length"`
			Out        hexb   `json:"out"`
		} `json:"derive_tree_secret"`
		SignWithLabel struct {
			Priv, Pub, Content hexb
			Label              string `json:"label"`
			Signature          hexb   `json:"signature"`
		} `json:"sign_with_label"`
		EncryptWithLabel struct {
			Priv, Pub  hexb
			Label      string `json:"label"`
			Context    hexb   `json:"context"`
			Plaintext  hexb   `json:"plaintext"`
			KEMOutput  hexb   `json:"kem_output"`
			Ciphertext hexb   `json:"ciphertext"`
		} `json:"encrypt_with_label"`
	}
	if err := vectors.Load("crypto-basics.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for _, tc := range cases {
		cs := tc.CipherSuite
		if !cs.Supported() {
			if _, err := cs.RefHash("x", nil); !errors.Is(err, ErrUnsupportedCipherSuite) {
				t.Errorf("suite %d: error %v, want ErrUnsupportedCipherSuite", cs, err)
			}
			c.Skipped++
			continue
		}
		c.Run++
		out, err := cs.RefHash(tc.RefHash.Label, tc.RefHash.Value)
		if err != nil || !bytes.Equal(out, tc.RefHash.Out) {
			t.Errorf("suite %d ref_hash: %x, %v", cs, out, err)
		}
		e := tc.ExpandWithLabel
		out, err = cs.ExpandWithLabel(e.Secret, e.Label, e.Context, e.Length)
		if err != nil || !bytes.Equal(out, e.Out) {
			t.Errorf("suite %d expand_with_label: %x, %v", cs, out, err)
		}
		d := tc.DeriveSecret
		out, err = cs.DeriveSecret(d.Secret, d.Label)
		if err != nil || !bytes.Equal(out, d.Out) {
			t.Errorf("suite %d derive_secret: %x, %v", cs, out, err)
		}
		dt := tc.DeriveTreeSecret
		out, err = cs.DeriveTreeSecret(dt.Secret, dt.Label, dt.Generation, dt.Length)
		if err != nil || !bytes.Equal(out, dt.Out) {
			t.Errorf("suite %d derive_tree_secret: %x, %v", cs, out, err)
		}

		sw := tc.SignWithLabel
		if err := cs.VerifyWithLabel(sw.Pub, sw.Label, sw.Content, sw.Signature); err != nil {
			t.Errorf("suite %d verify_with_label: %v", cs, err)
		}
		if err := cs.VerifyWithLabel(sw.Pub, sw.Label+"x", sw.Content, sw.Signature); !errors.Is(err, ErrInvalidSignature) {
			t.Errorf("suite %d verify_with_label accepted a wrong label: %v", cs, err)
		}
		signer, err := cs.ParseSignaturePrivateKey(sw.Priv)
		if err != nil {
			t.Fatalf("suite %d: %v", cs, err)
		}
		sig, err := cs.SignWithLabel(signer, sw.Label, sw.Content)
		if err != nil {
			t.Fatalf("suite %d sign_with_label: %v", cs, err)
		}
		if err := cs.VerifyWithLabel(sw.Pub, sw.Label, sw.Content, sig); err != nil {
			t.Errorf("suite %d: fresh signature does not verify: %v", cs, err)
		}
		if cs == X25519AES128GCMSHA256Ed25519 && !bytes.Equal(sig, sw.Signature) {
			t.Errorf("suite %d: ed25519 signature %x, want %x", cs, sig, sw.Signature)
		}

		ew := tc.EncryptWithLabel
		priv, err := cs.ParseHPKEPrivateKey(ew.Priv)
		if err != nil {
			t.Fatalf("suite %d: %v", cs, err)
		}
		pt, err := cs.DecryptWithLabel(priv, ew.Label, ew.Context, HPKECiphertext{ew.KEMOutput, ew.Ciphertext})
		if err != nil || !bytes.Equal(pt, ew.Plaintext) {
			t.Errorf("suite %d decrypt_with_label: %x, %v", cs, pt, err)
		}
		ct, err := cs.EncryptWithLabel(ew.Pub, ew.Label, ew.Context, ew.Plaintext)
		if err != nil {
			t.Fatalf("suite %d encrypt_with_label: %v", cs, err)
		}
		pt, err = cs.DecryptWithLabel(priv, ew.Label, ew.Context, ct)
		if err != nil || !bytes.Equal(pt, ew.Plaintext) {
			t.Errorf("suite %d fresh encryption: %x, %v", cs, pt, err)
		}
		if _, err := cs.DecryptWithLabel(priv, ew.Label, append(ew.Context, 0), ct); err == nil {
			t.Errorf("suite %d: decryption with a wrong context succeeded", cs)
		}
	}
	c.Report(t, "crypto-basics.json")
}

func TestDeserializationVectors(t *testing.T) {
	var cases []struct {
		Header hexb   `json:"vlbytes_header"`
		Length uint64 `json:"length"`
	}
	if err := vectors.Load("deserialization.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for _, tc := range cases {
		s := cryptobyte.String(tc.Header)
		var v uint64
		if !wire.ReadVarint(&s, &v) || !s.Empty() || v != tc.Length {
			t.Errorf("header %x: got %d, want %d", []byte(tc.Header), v, tc.Length)
		}
		b := cryptobyte.NewBuilder(nil)
		wire.AddVarint(b, tc.Length)
		if enc, err := b.Bytes(); err != nil || !bytes.Equal(enc, tc.Header) {
			t.Errorf("length %d: encoded %x, want %x", tc.Length, enc, []byte(tc.Header))
		}
		c.Run++
	}
	// Negative cases the file lacks: the reserved 0b11 prefix, non-minimal
	// encodings and truncated headers (RFC 9420 §2.1.2).
	for _, bad := range []string{"c0", "ffffffff", "c000000000000000", "4005", "403f", "80000005", "80003fff", "40", "8000", "800000"} {
		h := mustHex(t, bad)
		s := cryptobyte.String(h)
		var v uint64
		if wire.ReadVarint(&s, &v) {
			t.Errorf("header %s accepted as %d", bad, v)
		}
		c.Run++
	}
	c.Report(t, "deserialization.json")
}
