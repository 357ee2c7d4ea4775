// Package attachment is the client side of MIMI attachments
// (draft-robert-mimi-attachments, docs/protocol.md §6.1): the encryption of
// a file with a key derived from the MLS group's exporter, and the
// message/external-body reference that carries what the other members need
// to fetch and decrypt it. The Delivery Service never sees a key: it
// stores ciphertext only.
//
// The derivation, for a group of cipher suite cs, in the epoch of the
// message that carries the reference:
//
//	attachment_hash            = Hash(plaintext)
//	context                    = AttachmentContext{attachment_hash, sender_index}
//	                             struct { opaque attachment_hash<V>; uint64 sender_index; }
//	attachment_exporter_secret = MLS-Exporter("MIMI attachment", context, KDF.Nh)
//	nonce                      = KDF.Nh random bytes
//	attachment_secret          = KDF.Extract(salt = attachment_exporter_secret, ikm = nonce)
//	key                        = ExpandWithLabel(attachment_secret, "key", "", AEAD.Nk)
//	aead_nonce                 = ExpandWithLabel(attachment_secret, "nonce", "", AEAD.Nn)
//	ciphertext                 = AEAD.Seal(key, aead_nonce, aad = "", plaintext)
//
// A copy of an attachment in another group (attachment_copy) is referenced
// with the attachment_secret itself (Reference.Key, OpenWithSecret): the
// members of that group derive the key and nonce from it, since their
// exporter is not the one it came from.
//
// The whole file is one AEAD message, as the draft defines it, so it is
// held in memory by the sealing and the opening client (the gateway
// streams it).
package attachment

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// ExporterLabel is the MLS-Exporter label of attachment keys.
const ExporterLabel = "MIMI attachment"

// Exporter is MLS-Exporter(label, context, length) of the epoch that
// carries the reference; *mls.Member implements it.
type Exporter interface {
	Export(label string, context []byte, length uint16) ([]byte, error)
}

var _ Exporter = (*mls.Member)(nil) // interface guard

// ErrHash reports a decrypted attachment whose hash is not the one its
// reference committed to.
var ErrHash = errors.New("attachment: the plaintext does not match the reference's hash")

// Keys are the AEAD key and nonce of one attachment.
type Keys struct {
	Key, Nonce []byte
}

// Context encodes AttachmentContext{attachment_hash, sender_index}.
func Context(attachmentHash []byte, senderIndex uint32) ([]byte, error) {
	var b cryptobyte.Builder
	wire.AddOpaque(&b, attachmentHash)
	b.AddUint64(uint64(senderIndex))
	return b.Bytes()
}

// DeriveFromExporterSecret derives the keys from an attachment exporter
// secret (the output of MLS-Exporter) and the reference's nonce: the part
// of the derivation that test vectors pin without an MLS group.
func DeriveFromExporterSecret(cs mls.CipherSuite, exporterSecret, nonce []byte) (Keys, error) {
	secret, err := Secret(cs, exporterSecret, nonce)
	if err != nil {
		return Keys{}, err
	}
	return DeriveFromSecret(cs, secret)
}

// Secret returns the attachment_secret,
// KDF.Extract(salt = attachment_exporter_secret, ikm = nonce): what a
// reference's key parameter carries (Reference.Key), so that members of
// another group, who cannot derive it, open a copy of the attachment.
func Secret(cs mls.CipherSuite, exporterSecret, nonce []byte) ([]byte, error) {
	secret, err := cs.Extract(exporterSecret, nonce)
	if err != nil {
		return nil, fmt.Errorf("attachment: extracting: %w", err)
	}
	return secret, nil
}

// DeriveFromSecret derives the keys from an attachment_secret (Secret, or
// the key parameter of a reference). A secret that is not KDF.Nh bytes of
// cs is refused.
func DeriveFromSecret(cs mls.CipherSuite, secret []byte) (Keys, error) {
	if len(secret) != cs.HashSize() {
		return Keys{}, fmt.Errorf("attachment: the attachment secret is %d bytes, not the %d of cipher suite %d", len(secret), cs.HashSize(), uint16(cs))
	}
	key, err := cs.ExpandWithLabel(secret, "key", nil, uint16(cs.AEADKeySize()))
	if err != nil {
		return Keys{}, fmt.Errorf("attachment: deriving the key: %w", err)
	}
	n, err := cs.ExpandWithLabel(secret, "nonce", nil, uint16(cs.AEADNonceSize()))
	if err != nil {
		return Keys{}, fmt.Errorf("attachment: deriving the nonce: %w", err)
	}
	return Keys{Key: key, Nonce: n}, nil
}

// Derive derives the keys of the attachment whose plaintext hashes to
// attachmentHash, sent by the member at senderIndex, with the reference's
// nonce, from the epoch's exporter ex.
func Derive(ex Exporter, cs mls.CipherSuite, attachmentHash []byte, senderIndex uint32, nonce []byte) (Keys, error) {
	es, err := ExporterSecret(ex, cs, attachmentHash, senderIndex)
	if err != nil {
		return Keys{}, err
	}
	return DeriveFromExporterSecret(cs, es, nonce)
}

// Sealed is an encrypted attachment and what its reference carries.
type Sealed struct {
	// Ciphertext is what is uploaded.
	Ciphertext []byte
	// Nonce and Hash go into the reference (with the upload's token).
	Nonce, Hash []byte
}

// Seal encrypts plaintext as the member at senderIndex, in the epoch of ex,
// with a fresh nonce from random.
func Seal(ex Exporter, cs mls.CipherSuite, senderIndex uint32, plaintext []byte, random io.Reader) (*Sealed, error) {
	h, err := cs.Hash(plaintext)
	if err != nil {
		return nil, fmt.Errorf("attachment: hashing: %w", err)
	}
	nonce := make([]byte, cs.HashSize())
	if _, err := io.ReadFull(random, nonce); err != nil {
		return nil, fmt.Errorf("attachment: drawing the nonce: %w", err)
	}
	k, err := Derive(ex, cs, h, senderIndex, nonce)
	if err != nil {
		return nil, err
	}
	aead, err := cs.NewAEAD(k.Key)
	if err != nil {
		return nil, err
	}
	return &Sealed{Ciphertext: aead.Seal(nil, k.Nonce, plaintext, nil), Nonce: nonce, Hash: h}, nil
}

// Open decrypts an attachment sent by the member at senderIndex, with the
// nonce and hash of its reference, in the epoch of ex, and checks the
// plaintext against the hash.
func Open(ex Exporter, cs mls.CipherSuite, senderIndex uint32, nonce, hash, ciphertext []byte) ([]byte, error) {
	k, err := Derive(ex, cs, hash, senderIndex, nonce)
	if err != nil {
		return nil, err
	}
	return open(cs, k, hash, ciphertext)
}

// ExporterSecret returns the attachment_exporter_secret of the attachment
// whose plaintext hashes to attachmentHash, sent by the member at
// senderIndex, in the epoch of ex: what a receiver keeps, when it reads a
// reference, to open the attachment after the group has moved on
// (OpenWithExporterSecret). It opens that one attachment only.
func ExporterSecret(ex Exporter, cs mls.CipherSuite, attachmentHash []byte, senderIndex uint32) ([]byte, error) {
	ctx, err := Context(attachmentHash, senderIndex)
	if err != nil {
		return nil, err
	}
	es, err := ex.Export(ExporterLabel, ctx, uint16(cs.HashSize()))
	if err != nil {
		return nil, fmt.Errorf("attachment: exporting: %w", err)
	}
	return es, nil
}

// OpenWithExporterSecret is Open with the attachment_exporter_secret that
// ExporterSecret returned in the epoch of the reference, instead of that
// epoch's exporter.
func OpenWithExporterSecret(cs mls.CipherSuite, exporterSecret, nonce, hash, ciphertext []byte) ([]byte, error) {
	k, err := DeriveFromExporterSecret(cs, exporterSecret, nonce)
	if err != nil {
		return nil, err
	}
	return open(cs, k, hash, ciphertext)
}

// OpenWithSecret is Open with the attachment_secret that a reference's
// key parameter carries (a copy's reference), instead of an exporter: it
// needs neither the sender's leaf nor the epoch. The plaintext is checked
// against hash as by Open.
func OpenWithSecret(cs mls.CipherSuite, secret, hash, ciphertext []byte) ([]byte, error) {
	k, err := DeriveFromSecret(cs, secret)
	if err != nil {
		return nil, err
	}
	return open(cs, k, hash, ciphertext)
}

// open decrypts ciphertext with k and checks the plaintext against hash.
func open(cs mls.CipherSuite, k Keys, hash, ciphertext []byte) ([]byte, error) {
	aead, err := cs.NewAEAD(k.Key)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, k.Nonce, ciphertext, nil)
	if err != nil {
		return nil, fmt.Errorf("attachment: decrypting: %w", err)
	}
	got, err := cs.Hash(plain)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(got, hash) != 1 {
		return nil, ErrHash
	}
	return plain, nil
}
