package main

import (
	"crypto/rand"
	"fmt"
	"path/filepath"
	"runtime"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/provider"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// signed is one prepared connection_request from a.localhost to
// b.localhost.
type signed struct {
	id        []byte
	timestamp uint64
	raw       []byte
}

// signer signs provider requests from sender to recipient with the key
// ring Caddy created in the sender's data directory (a.localhost's,
// D/a/keys, to b.localhost by default).
type signer struct {
	ring              *provider.KeyRing
	sender, recipient string
}

// newSigner loads the key ring in keysDir, the sender's.
func newSigner(keysDir, sender, recipient string) (*signer, error) {
	ring, err := provider.LoadKeyRing(keysDir)
	if err != nil {
		return nil, fmt.Errorf("loading %s's keys: %w", sender, err)
	}
	return &signer{ring: ring, sender: sender, recipient: recipient}, nil
}

// defaultSigner signs as a.localhost, with the keys in dir/a/keys, to
// b.localhost: the providers of writepath.sh and crash.sh.
func defaultSigner(dir string) (*signer, error) {
	return newSigner(filepath.Join(dir, "a", "keys"), "a.localhost", "b.localhost")
}

// payload returns a valid ConnectionRequest payload (a Welcome); variant
// changes the group id so that two variants of one request differ in
// their bytes. Its user_id names a provider b does not serve, so b
// answers 404 not_found after every check of the envelope and the
// payload's decoding, without reading its store, and records that answer:
// the mode measures exactly the envelope checks and the replay write.
func payload(variant int) ([]byte, error) {
	welcome := mls.MLSMessage{Version: mls.MLS10, WireFormat: mls.WireFormatWelcome, Welcome: &mls.Welcome{
		CipherSuite: mls.X25519AES128GCMSHA256Ed25519,
		Secrets: []mls.EncryptedGroupSecrets{{NewMember: make([]byte, 32),
			EncryptedGroupSecrets: mls.HPKECiphertext{KEMOutput: make([]byte, 32), Ciphertext: make([]byte, 64)}}},
		EncryptedGroupInfo: make([]byte, 128)}}
	return wire.Marshal(&moh.ConnectionRequestPayload{
		UserID:  []byte(moh.UserURI("elsewhere.localhost", "bob")),
		GroupID: []byte(fmt.Sprintf("load group %d", variant)),
		Welcome: welcome,
	})
}

// sign builds and signs a request with the given id and timestamp.
func (s *signer) sign(id []byte, ts uint64, variant int) ([]byte, error) {
	key, err := s.ring.Current(time.Unix(int64(ts), 0))
	if err != nil {
		return nil, err
	}
	p, err := payload(variant)
	if err != nil {
		return nil, err
	}
	return provider.SignRequest(&moh.ProviderRequest{
		RequestType: moh.ConnectionRequest,
		Sender:      []byte(s.sender),
		Recipient:   []byte(s.recipient),
		Timestamp:   ts,
		RequestID:   id,
		Payload:     p,
	}, key)
}

// fresh signs one request with a new random request_id, stamped now.
func (s *signer) fresh() (signed, error) {
	id := make([]byte, 16)
	rand.Read(id)
	ts := uint64(time.Now().Unix())
	raw, err := s.sign(id, ts, 0)
	return signed{id: id, timestamp: ts, raw: raw}, err
}

// pool signs n distinct requests on every CPU, before any is sent.
func (s *signer) pool(n int) ([]signed, error) {
	out := make([]signed, n)
	errs := make([]error, n)
	parallel(n, runtime.GOMAXPROCS(0), func(i int) { out[i], errs[i] = s.fresh() })
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("signing: %w", err)
		}
	}
	return out, nil
}

// decodeAnswer decodes a DSResponse; ok is false for anything else.
func decodeAnswer(body []byte) (moh.DSResponse, bool) {
	var r moh.DSResponse
	err := wire.Unmarshal(body, &r, "DSResponse")
	return r, err == nil
}
