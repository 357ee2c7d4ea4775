package mls

import (
	"bytes"
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

type passiveCase struct {
	CipherSuite  CipherSuite `json:"cipher_suite"`
	ExternalPSKs []struct {
		PSKID hexb `json:"psk_id"`
		PSK   hexb `json:"psk"`
	} `json:"external_psks"`
	KeyPackage                hexb `json:"key_package"`
	SignaturePriv             hexb `json:"signature_priv"`
	EncryptionPriv            hexb `json:"encryption_priv"`
	InitPriv                  hexb `json:"init_priv"`
	Welcome                   hexb `json:"welcome"`
	RatchetTree               hexb `json:"ratchet_tree"`
	InitialEpochAuthenticator hexb `json:"initial_epoch_authenticator"`
	Epochs                    []struct {
		Proposals          []hexb `json:"proposals"`
		Commit             hexb   `json:"commit"`
		EpochAuthenticator hexb   `json:"epoch_authenticator"`
	} `json:"epochs"`
}

func runPassiveClient(t *testing.T, i int, tc *passiveCase) {
	cs := tc.CipherSuite
	kpMsg, err := DecodeMLSMessage(tc.KeyPackage)
	if err != nil || kpMsg.KeyPackage == nil {
		t.Fatalf("case %d: key package: %v", i, err)
	}
	wMsg, err := DecodeMLSMessage(tc.Welcome)
	if err != nil || wMsg.Welcome == nil {
		t.Fatalf("case %d: welcome: %v", i, err)
	}
	initPriv, err := cs.ParseHPKEPrivateKey(tc.InitPriv)
	if err != nil {
		t.Fatal(err)
	}
	leafPriv, err := cs.ParseHPKEPrivateKey(tc.EncryptionPriv)
	if err != nil {
		t.Fatal(err)
	}
	var rt RatchetTree
	if tc.RatchetTree != nil {
		if err := wire.Unmarshal(tc.RatchetTree, &rt, "ratchet tree"); err != nil {
			t.Fatal(err)
		}
	}
	psks := func(id *PreSharedKeyID) ([]byte, error) {
		for _, p := range tc.ExternalPSKs {
			if id.Type == PSKExternal && bytes.Equal(id.PSKID, p.PSKID) {
				return p.PSK, nil
			}
		}
		return nil, errors.New("unknown psk")
	}
	m, err := JoinFromWelcome(wMsg.Welcome, WelcomeOptions{KeyPackage: kpMsg.KeyPackage, InitKey: initPriv, LeafKey: leafPriv, RatchetTree: rt, PSKs: psks})
	if err != nil {
		t.Fatalf("case %d: %v", i, err)
	}
	if !bytes.Equal(m.EpochAuthenticator(), tc.InitialEpochAuthenticator) {
		t.Fatalf("case %d: initial epoch authenticator differs", i)
	}
	for e, ep := range tc.Epochs {
		stored := make(map[string]*AuthenticatedContent)
		for _, p := range ep.Proposals {
			pm, err := DecodeMLSMessage(p)
			if err != nil {
				t.Fatalf("case %d epoch %d: %v", i, e, err)
			}
			ac, ref, err := m.VerifyProposal(pm)
			if err != nil {
				t.Fatalf("case %d epoch %d: proposal: %v", i, e, err)
			}
			stored[string(ref)] = ac
		}
		cm, err := DecodeMLSMessage(ep.Commit)
		if err != nil {
			t.Fatalf("case %d epoch %d: %v", i, e, err)
		}
		before := m.State()
		m, err = m.ApplyCommit(cm, func(ref []byte) (*AuthenticatedContent, error) {
			if ac, ok := stored[string(ref)]; ok {
				return ac, nil
			}
			return nil, ErrUnknownProposal
		})
		if err != nil {
			t.Fatalf("case %d epoch %d: %v", i, e, err)
		}
		if !bytes.Equal(m.EpochAuthenticator(), ep.EpochAuthenticator) {
			t.Fatalf("case %d epoch %d: epoch authenticator differs", i, e)
		}
		if before.Epoch()+1 != m.State().Epoch() {
			t.Fatalf("case %d epoch %d: epoch did not advance", i, e)
		}
	}
}

func testPassive(t *testing.T, file string) {
	var cases []passiveCase
	if err := vectors.Load(file, &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i := range cases {
		if !cases[i].CipherSuite.Supported() {
			c.Skipped++
			continue
		}
		c.Run++
		runPassiveClient(t, i, &cases[i])
	}
	c.Report(t, file)
}

func TestPassiveClientWelcomeVectors(t *testing.T) { testPassive(t, "passive-client-welcome.json") }
func TestPassiveClientHandlingCommitVectors(t *testing.T) {
	testPassive(t, "passive-client-handling-commit.json")
}
func TestPassiveClientRandomVectors(t *testing.T) { testPassive(t, "passive-client-random.json") }
