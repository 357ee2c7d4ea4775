package mls

import (
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
)

func TestWelcomeVectors(t *testing.T) {
	var cases []struct {
		suiteField
		InitPriv   hexb `json:"init_priv"`
		KeyPackage hexb `json:"key_package"`
		SignerPub  hexb `json:"signer_pub"`
		Welcome    hexb `json:"welcome"`
	}
	if err := vectors.Load("welcome.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		cs := tc.CipherSuite
		kpMsg, err := DecodeMLSMessage(tc.KeyPackage)
		if err != nil || kpMsg.KeyPackage == nil {
			t.Fatalf("case %d: key package: %v", i, err)
		}
		if err := kpMsg.KeyPackage.Verify(); err != nil {
			t.Errorf("case %d: %v", i, err)
		}
		wMsg, err := DecodeMLSMessage(tc.Welcome)
		if err != nil || wMsg.Welcome == nil {
			t.Fatalf("case %d: welcome: %v", i, err)
		}
		priv, err := cs.ParseHPKEPrivateKey(tc.InitPriv)
		if err != nil {
			t.Fatal(err)
		}
		res, err := ProcessWelcome(wMsg.Welcome, kpMsg.KeyPackage, priv, nil)
		if err != nil {
			t.Errorf("case %d: %v", i, err)
			continue
		}
		if err := res.GroupInfo.VerifySignature(tc.SignerPub); err != nil {
			t.Errorf("case %d: %v", i, err)
		}
		// A Welcome for another key package must be told apart.
		other := *wMsg.Welcome
		other.Secrets = nil
		if _, err := ProcessWelcome(&other, kpMsg.KeyPackage, priv, nil); !errors.Is(err, ErrNotForUs) {
			t.Errorf("case %d: welcome without our secrets: %v", i, err)
		}
	}
	c.Report(t, "welcome.json")
}
