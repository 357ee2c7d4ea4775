package mls

import (
	"errors"
	"testing"
)

func TestKeyPackageVerify(t *testing.T) {
	cs := P256AES128GCMSHA256P256
	kp, signer := newTestKeyPackage(t, cs, "kp")
	if err := kp.VerifyAt(1_700_000_000); err != nil {
		t.Fatal(err)
	}
	if err := kp.VerifyAt(1 << 63); err == nil {
		t.Error("expired key package accepted")
	}
	resign := func(k *KeyPackage) *KeyPackage {
		if err := k.Sign(signer); err != nil {
			t.Fatal(err)
		}
		return k
	}
	bad := map[string]*KeyPackage{}
	k := *kp
	k.Signature = append([]byte{}, kp.Signature...)
	k.Signature[10] ^= 1
	bad["signature"] = &k
	k2 := *kp
	k2.InitKey = kp.LeafNode.EncryptionKey
	bad["init key equals encryption key"] = resign(&k2)
	k3 := *kp
	k3.Version = 2
	bad["version"] = resign(&k3)
	k4 := *kp
	k4.CipherSuite = X448AES256GCMSHA512Ed448
	bad["unsupported suite"] = &k4
	k5 := *kp
	k5.Extensions = Extensions{{Type: 9, Data: nil}, {Type: 9, Data: []byte{1}}}
	bad["duplicate extensions"] = resign(&k5)
	k6 := *kp
	k6.LeafNode.Extensions = Extensions{{Type: 0x1234}}
	if err := k6.LeafNode.Sign(cs, signer, nil, 0); err != nil {
		t.Fatal(err)
	}
	bad["leaf extension outside capabilities"] = resign(&k6)
	for name, k := range bad {
		if err := k.Verify(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := bad["unsupported suite"].Verify(); !errors.Is(err, ErrUnsupportedCipherSuite) {
		t.Errorf("unsupported suite: %v", err)
	}
}
