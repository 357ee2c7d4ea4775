package mls

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func TestKeyScheduleVectors(t *testing.T) {
	type epoch struct {
		TreeHash                hexb `json:"tree_hash"`
		CommitSecret            hexb `json:"commit_secret"`
		PSKSecret               hexb `json:"psk_secret"`
		ConfirmedTranscriptHash hexb `json:"confirmed_transcript_hash"`
		GroupContext            hexb `json:"group_context"`
		JoinerSecret            hexb `json:"joiner_secret"`
		WelcomeSecret           hexb `json:"welcome_secret"`
		InitSecret              hexb `json:"init_secret"`
		SenderDataSecret        hexb `json:"sender_data_secret"`
		EncryptionSecret        hexb `json:"encryption_secret"`
		ExporterSecret          hexb `json:"exporter_secret"`
		EpochAuthenticator      hexb `json:"epoch_authenticator"`
		ExternalSecret          hexb `json:"external_secret"`
		ConfirmationKey         hexb `json:"confirmation_key"`
		MembershipKey           hexb `json:"membership_key"`
		ResumptionPSK           hexb `json:"resumption_psk"`
		ExternalPub             hexb `json:"external_pub"`
		Exporter                struct {
			Label   string `json:"label"`
			Context hexb   `json:"context"`
			Length  uint16 `json:"length"`
			Secret  hexb   `json:"secret"`
		} `json:"exporter"`
	}
	var cases []struct {
		suiteField
		GroupID           hexb    `json:"group_id"`
		InitialInitSecret hexb    `json:"initial_init_secret"`
		Epochs            []epoch `json:"epochs"`
	}
	if err := vectors.Load("key-schedule.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		cs := tc.CipherSuite
		initSecret := []byte(tc.InitialInitSecret)
		for e, ep := range tc.Epochs {
			gc := &GroupContext{Version: MLS10, CipherSuite: cs, GroupID: tc.GroupID, Epoch: uint64(e),
				TreeHash: ep.TreeHash, ConfirmedTranscriptHash: ep.ConfirmedTranscriptHash}
			enc, err := wire.Marshal(gc)
			if err != nil || !bytes.Equal(enc, ep.GroupContext) {
				t.Fatalf("case %d epoch %d: group context %x, %v", i, e, enc, err)
			}
			es, err := cs.DeriveEpochSecrets(initSecret, ep.CommitSecret, ep.PSKSecret, gc)
			if err != nil {
				t.Fatal(err)
			}
			for name, pair := range map[string][2][]byte{
				"joiner": {es.JoinerSecret, ep.JoinerSecret}, "welcome": {es.WelcomeSecret, ep.WelcomeSecret},
				"init": {es.InitSecret, ep.InitSecret}, "sender_data": {es.SenderDataSecret, ep.SenderDataSecret},
				"encryption": {es.EncryptionSecret, ep.EncryptionSecret}, "exporter": {es.ExporterSecret, ep.ExporterSecret},
				"epoch_authenticator": {es.EpochAuthenticator, ep.EpochAuthenticator},
				"external":            {es.ExternalSecret, ep.ExternalSecret}, "confirmation_key": {es.ConfirmationKey, ep.ConfirmationKey},
				"membership_key": {es.MembershipKey, ep.MembershipKey}, "resumption_psk": {es.ResumptionPSK, ep.ResumptionPSK},
			} {
				if !bytes.Equal(pair[0], pair[1]) {
					t.Errorf("case %d epoch %d: %s %x, want %x", i, e, name, pair[0], pair[1])
				}
			}
			pub, err := cs.ExternalPub(es.ExternalSecret)
			if err != nil || !bytes.Equal(pub, ep.ExternalPub) {
				t.Errorf("case %d epoch %d: external_pub %x, %v", i, e, pub, err)
			}
			// The exporter label is a string used as is, not hex.
			out, err := cs.Export(es.ExporterSecret, ep.Exporter.Label, ep.Exporter.Context, ep.Exporter.Length)
			if err != nil || !bytes.Equal(out, ep.Exporter.Secret) {
				t.Errorf("case %d epoch %d: exporter %x, %v", i, e, out, err)
			}
			initSecret = es.InitSecret
		}
	}
	c.Report(t, "key-schedule.json")
}

func TestPSKSecretVectors(t *testing.T) {
	var cases []struct {
		suiteField
		PSKs []struct {
			PSKID    hexb `json:"psk_id"`
			PSK      hexb `json:"psk"`
			PSKNonce hexb `json:"psk_nonce"`
		} `json:"psks"`
		PSKSecret hexb `json:"psk_secret"`
	}
	if err := vectors.Load("psk_secret.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		cs := tc.CipherSuite
		var psks []PSKWithSecret
		for _, p := range tc.PSKs {
			psks = append(psks, PSKWithSecret{ID: PreSharedKeyID{Type: PSKExternal, PSKID: p.PSKID, Nonce: p.PSKNonce}, PSK: p.PSK})
		}
		got, err := cs.PSKSecret(psks)
		if err != nil || !bytes.Equal(got, tc.PSKSecret) {
			t.Errorf("case %d (%d psks): %x, %v", i, len(psks), got, err)
		}
	}
	c.Report(t, "psk_secret.json")
}
