package mls

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
)

func TestSecretTreeVectors(t *testing.T) {
	var cases []struct {
		suiteField
		SenderData struct {
			SenderDataSecret hexb `json:"sender_data_secret"`
			Ciphertext       hexb `json:"ciphertext"`
			Key              hexb `json:"key"`
			Nonce            hexb `json:"nonce"`
		} `json:"sender_data"`
		EncryptionSecret hexb `json:"encryption_secret"`
		Leaves           [][]struct {
			Generation       uint32 `json:"generation"`
			HandshakeKey     hexb   `json:"handshake_key"`
			HandshakeNonce   hexb   `json:"handshake_nonce"`
			ApplicationKey   hexb   `json:"application_key"`
			ApplicationNonce hexb   `json:"application_nonce"`
		} `json:"leaves"`
	}
	if err := vectors.Load("secret-tree.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		cs := tc.CipherSuite
		key, nonce, err := cs.SenderDataKeys(tc.SenderData.SenderDataSecret, tc.SenderData.Ciphertext)
		if err != nil || !bytes.Equal(key, tc.SenderData.Key) || !bytes.Equal(nonce, tc.SenderData.Nonce) {
			t.Errorf("case %d: sender data key %x nonce %x, %v", i, key, nonce, err)
		}
		st, err := cs.NewSecretTree(tc.EncryptionSecret, uint32(len(tc.Leaves)))
		if err != nil {
			t.Fatal(err)
		}
		for leaf, gens := range tc.Leaves {
			for _, g := range gens {
				hs, err := st.Get(uint32(leaf), HandshakeRatchet, g.Generation)
				if err != nil || !bytes.Equal(hs.Key, g.HandshakeKey) || !bytes.Equal(hs.Nonce, g.HandshakeNonce) {
					t.Errorf("case %d leaf %d gen %d: handshake %x/%x, %v", i, leaf, g.Generation, hs.Key, hs.Nonce, err)
				}
				as, err := st.Get(uint32(leaf), ApplicationRatchet, g.Generation)
				if err != nil || !bytes.Equal(as.Key, g.ApplicationKey) || !bytes.Equal(as.Nonce, g.ApplicationNonce) {
					t.Errorf("case %d leaf %d gen %d: application %x/%x, %v", i, leaf, g.Generation, as.Key, as.Nonce, err)
				}
				if _, err := st.Get(uint32(leaf), HandshakeRatchet, g.Generation); err == nil {
					t.Errorf("case %d leaf %d gen %d: key handed out twice", i, leaf, g.Generation)
				}
			}
		}
	}
	c.Report(t, "secret-tree.json")
}
