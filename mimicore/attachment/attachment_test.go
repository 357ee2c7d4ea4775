package attachment

import (
	"bytes"
	"crypto"
	"crypto/hpke"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/internal/mlstest"
	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
)

// member is a client with a KeyPackage and its private keys.
type member struct {
	kp      *mls.KeyPackage
	signer  crypto.Signer
	leafKey hpke.PrivateKey
	initKey hpke.PrivateKey
}

func newMember(t *testing.T, cs mls.CipherSuite, name string) *member {
	t.Helper()
	c, err := mlstest.NewClient(cs, name, mlstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &member{kp: c.KeyPackage, signer: c.Signer, leafKey: c.LeafKey, initKey: c.InitKey}
}

// pair returns alice and bob as members of one group in one epoch, and
// alice after one more commit (the next epoch).
func pair(t *testing.T, cs mls.CipherSuite) (alice, bob, aliceNext *mls.Member) {
	t.Helper()
	a, b := newMember(t, cs, "alice"), newMember(t, cs, "bob")
	m, err := mls.NewGroup(mls.GroupOptions{CipherSuite: cs, GroupID: []byte("attachments"), Leaf: &a.kp.LeafNode,
		LeafKey: a.leafKey, Signer: a.signer})
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.Commit([]*mls.Proposal{{Type: mls.ProposalAdd, KeyPackage: b.kp}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	bm, err := mls.JoinFromWelcome(res.Welcome.Welcome, mls.WelcomeOptions{KeyPackage: b.kp, InitKey: b.initKey,
		LeafKey: b.leafKey, Signer: b.signer})
	if err != nil {
		t.Fatal(err)
	}
	next, err := res.Next.Commit(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res.Next, bm, next.Next
}

// TestSealOpen has alice encrypt an attachment in each suite and bob, in
// the same epoch, decrypt it from the reference's fields; every change of
// what the key derives from (sender, nonce, hash, epoch) or of the
// ciphertext makes opening fail.
func TestSealOpen(t *testing.T) {
	for _, cs := range []mls.CipherSuite{mls.X25519AES128GCMSHA256Ed25519, mls.P256AES128GCMSHA256P256,
		mls.X25519ChaCha20Poly1305SHA256Ed25519, mls.P521AES256GCMSHA512P521, mls.P384AES256GCMSHA384P384} {
		t.Run(cs.String(), func(t *testing.T) {
			alice, bob, aliceNext := pair(t, cs)
			plain := bytes.Repeat([]byte("a picture of a cat "), 1000)
			s, err := Seal(alice, cs, alice.LeafIndex(), plain, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Nonce) != cs.HashSize() || len(s.Ciphertext) != len(plain)+16 {
				t.Fatalf("nonce of %d bytes, ciphertext of %d", len(s.Nonce), len(s.Ciphertext))
			}
			got, err := Open(bob, cs, alice.LeafIndex(), s.Nonce, s.Hash, s.Ciphertext)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("bob opens: %v", err)
			}
			flip := func(b []byte) []byte { c := bytes.Clone(b); c[len(c)-1] ^= 1; return c }
			for name, open := range map[string]func() ([]byte, error){
				"another sender":     func() ([]byte, error) { return Open(bob, cs, bob.LeafIndex(), s.Nonce, s.Hash, s.Ciphertext) },
				"another nonce":      func() ([]byte, error) { return Open(bob, cs, alice.LeafIndex(), flip(s.Nonce), s.Hash, s.Ciphertext) },
				"another hash":       func() ([]byte, error) { return Open(bob, cs, alice.LeafIndex(), s.Nonce, flip(s.Hash), s.Ciphertext) },
				"another epoch":      func() ([]byte, error) { return Open(aliceNext, cs, alice.LeafIndex(), s.Nonce, s.Hash, s.Ciphertext) },
				"changed ciphertext": func() ([]byte, error) { return Open(bob, cs, alice.LeafIndex(), s.Nonce, s.Hash, flip(s.Ciphertext)) },
			} {
				if _, err := open(); err == nil {
					t.Errorf("%s: opened", name)
				}
			}
		})
	}
}

// TestOpenChecksHash checks that a ciphertext that decrypts, but to a
// plaintext whose hash is not the reference's, is refused: the hash is a
// commitment, not only a key input.
func TestOpenChecksHash(t *testing.T) {
	cs := mls.X25519AES128GCMSHA256Ed25519
	alice, bob, _ := pair(t, cs)
	// A sender who derives the key from one hash but encrypts another
	// plaintext.
	claimed, err := cs.Hash([]byte("what the reference promises"))
	if err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{7}, cs.HashSize())
	k, err := Derive(alice, cs, claimed, alice.LeafIndex(), nonce)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cs.NewAEAD(k.Key)
	if err != nil {
		t.Fatal(err)
	}
	ct := aead.Seal(nil, k.Nonce, []byte("something else"), nil)
	if _, err := Open(bob, cs, alice.LeafIndex(), nonce, claimed, ct); !errors.Is(err, ErrHash) {
		t.Fatalf("Open = %v, want ErrHash", err)
	}
}

// TestOpenWithSecret: the attachment secret that alice computes in her
// group opens her attachment with no exporter (as a copy's reference
// carries it to another group); another secret, one of another length,
// and a ciphertext that does not match the hash are refused.
func TestOpenWithSecret(t *testing.T) {
	for _, cs := range []mls.CipherSuite{mls.X25519AES128GCMSHA256Ed25519, mls.P521AES256GCMSHA512P521} {
		t.Run(cs.String(), func(t *testing.T) {
			alice, _, _ := pair(t, cs)
			plain := []byte("a copied attachment")
			s, err := Seal(alice, cs, alice.LeafIndex(), plain, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			es, err := ExporterSecret(alice, cs, s.Hash, alice.LeafIndex())
			if err != nil {
				t.Fatal(err)
			}
			secret, err := Secret(cs, es, s.Nonce)
			if err != nil {
				t.Fatal(err)
			}
			if len(secret) != cs.HashSize() {
				t.Fatalf("secret of %d bytes, want KDF.Nh = %d", len(secret), cs.HashSize())
			}
			if got, err := OpenWithSecret(cs, secret, s.Hash, s.Ciphertext); err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("OpenWithSecret = %q, %v", got, err)
			}
			other := bytes.Clone(secret)
			other[0] ^= 1
			otherHash := bytes.Clone(s.Hash)
			otherHash[0] ^= 1
			for _, tc := range []struct {
				name         string
				secret, hash []byte
			}{
				{"another secret", other, s.Hash},
				{"the exporter secret", es, s.Hash},
				{"a shorter secret", secret[:len(secret)-1], s.Hash},
				{"a longer secret", append(bytes.Clone(secret), 0), s.Hash},
				{"another hash", secret, otherHash},
			} {
				t.Run(tc.name, func(t *testing.T) {
					if _, err := OpenWithSecret(cs, tc.secret, tc.hash, s.Ciphertext); err == nil {
						t.Fatal("opened")
					}
				})
			}
		})
	}
}
