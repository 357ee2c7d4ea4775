package mls

import (
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// EpochSecrets are the secrets of one epoch (RFC 9420 §8). They never leave
// a client; a Delivery Service has none of them.
type EpochSecrets struct {
	JoinerSecret       []byte
	WelcomeSecret      []byte
	EpochSecret        []byte
	SenderDataSecret   []byte
	EncryptionSecret   []byte
	ExporterSecret     []byte
	EpochAuthenticator []byte
	ExternalSecret     []byte
	ConfirmationKey    []byte
	MembershipKey      []byte
	ResumptionPSK      []byte
	InitSecret         []byte
}

// JoinerSecret derives joiner_secret from the previous epoch's init_secret,
// the commit_secret (nil means the all-zero vector) and the new
// GroupContext (RFC 9420 §8).
func (cs CipherSuite) JoinerSecret(initSecret, commitSecret []byte, gc *GroupContext) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	if commitSecret == nil {
		commitSecret = make([]byte, s.nh)
	}
	prk, err := s.extract(initSecret, commitSecret)
	if err != nil {
		return nil, fmt.Errorf("extracting joiner secret: %w", err)
	}
	ctx, err := marshal(gc)
	if err != nil {
		return nil, fmt.Errorf("encoding group context: %w", err)
	}
	return s.expandWithLabel(prk, "joiner", ctx, s.nh)
}

// EpochSecretsFromJoiner derives every secret of the epoch described by gc
// from joiner_secret and psk_secret (nil means the all-zero vector).
func (cs CipherSuite) EpochSecretsFromJoiner(joinerSecret, pskSecret []byte, gc *GroupContext) (*EpochSecrets, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	if pskSecret == nil {
		pskSecret = make([]byte, s.nh)
	}
	ctx, err := marshal(gc)
	if err != nil {
		return nil, fmt.Errorf("encoding group context: %w", err)
	}
	member, err := s.extract(joinerSecret, pskSecret)
	if err != nil {
		return nil, fmt.Errorf("extracting member secret: %w", err)
	}
	es := &EpochSecrets{JoinerSecret: joinerSecret}
	if es.WelcomeSecret, err = s.deriveSecret(member, "welcome"); err != nil {
		return nil, err
	}
	if es.EpochSecret, err = s.expandWithLabel(member, "epoch", ctx, s.nh); err != nil {
		return nil, err
	}
	for _, d := range []struct {
		label string
		out   *[]byte
	}{
		{"sender data", &es.SenderDataSecret},
		{"encryption", &es.EncryptionSecret},
		{"exporter", &es.ExporterSecret},
		{"authentication", &es.EpochAuthenticator},
		{"external", &es.ExternalSecret},
		{"confirm", &es.ConfirmationKey},
		{"membership", &es.MembershipKey},
		{"resumption", &es.ResumptionPSK},
		{"init", &es.InitSecret},
	} {
		if *d.out, err = s.deriveSecret(es.EpochSecret, d.label); err != nil {
			return nil, err
		}
	}
	return es, nil
}

// DeriveEpochSecrets runs the whole key schedule of RFC 9420 §8 for the
// epoch described by gc.
func (cs CipherSuite) DeriveEpochSecrets(initSecret, commitSecret, pskSecret []byte, gc *GroupContext) (*EpochSecrets, error) {
	joiner, err := cs.JoinerSecret(initSecret, commitSecret, gc)
	if err != nil {
		return nil, err
	}
	return cs.EpochSecretsFromJoiner(joiner, pskSecret, gc)
}

// Export is MLS-Exporter(label, context, length) (RFC 9420 §8.5):
// ExpandWithLabel(DeriveSecret(exporter_secret, label), "exported",
// Hash(context), length).
func (cs CipherSuite) Export(exporterSecret []byte, label string, context []byte, length uint16) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	secret, err := s.deriveSecret(exporterSecret, label)
	if err != nil {
		return nil, err
	}
	return s.expandWithLabel(secret, "exported", s.hash(context), int(length))
}

// ExternalPub returns the external_pub of an epoch, the public half of
// KEM.DeriveKeyPair(external_secret) (RFC 9420 §8.3).
func (cs CipherSuite) ExternalPub(externalSecret []byte) ([]byte, error) {
	_, pub, err := cs.DeriveKeyPair(externalSecret)
	return pub, err
}

// PSKWithSecret is a PreSharedKeyID with the PSK it names.
type PSKWithSecret struct {
	ID  PreSharedKeyID
	PSK []byte
}

// PSKSecret chains PSKs into psk_secret (RFC 9420 §8.4). With no PSKs it
// is the all-zero vector of length Nh.
func (cs CipherSuite) PSKSecret(psks []PSKWithSecret) ([]byte, error) {
	s, err := cs.params()
	if err != nil {
		return nil, err
	}
	if len(psks) > 0xffff {
		return nil, fmt.Errorf("psk secret: %d psks", len(psks))
	}
	secret := make([]byte, s.nh)
	for i, p := range psks {
		extracted, err := s.extract(nil, p.PSK)
		if err != nil {
			return nil, fmt.Errorf("psk secret: %w", err)
		}
		b := cryptobyte.NewBuilder(nil)
		p.ID.MarshalWire(b)
		b.AddUint16(uint16(i))
		b.AddUint16(uint16(len(psks)))
		label, err := b.Bytes()
		if err != nil {
			return nil, fmt.Errorf("psk secret: encoding psk label: %w", err)
		}
		input, err := s.expandWithLabel(extracted, "derived psk", label, s.nh)
		if err != nil {
			return nil, err
		}
		if secret, err = s.extract(input, secret); err != nil {
			return nil, fmt.Errorf("psk secret: %w", err)
		}
	}
	return secret, nil
}
