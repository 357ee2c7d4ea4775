package mls

import (
	"fmt"
	"testing"
)

func BenchmarkKeyPackageDecodeVerify(b *testing.B) {
	for _, cs := range []CipherSuite{X25519AES128GCMSHA256Ed25519, P256AES128GCMSHA256P256} {
		kp, _ := newTestKeyPackage(b, cs, "bench")
		enc, err := marshal(&MLSMessage{Version: MLS10, WireFormat: WireFormatKeyPackage, KeyPackage: kp})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint("suite=", uint16(cs)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m, err := DecodeMLSMessage(enc)
				if err != nil {
					b.Fatal(err)
				}
				if err := m.KeyPackage.Verify(); err != nil {
					b.Fatal(err)
				}
				if _, err := m.KeyPackage.Ref(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkApplyCommitPath decodes and applies a path-only commit (the
// common "update my keys" commit) in groups of growing size. The cost must
// grow with log(members): only the committer's path is rehashed and the
// tree is shared copy-on-write.
func BenchmarkApplyCommitPath(b *testing.B) {
	for _, n := range []uint32{100, 1000, 10000} {
		tg := buildTestGroup(b, X25519AES128GCMSHA256Ed25519, n, nil)
		enc, err := marshal(tg.commit(b, n/2, nil, true, nil))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint("members=", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m, err := DecodeMLSMessage(enc)
				if err != nil {
					b.Fatal(err)
				}
				if _, _, err := tg.g.ApplyCommit(m, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTreeHash hashes a 10,000-leaf tree from cold (no cached hash)
// and after one leaf changed.
func BenchmarkTreeHash(b *testing.B) {
	tg := buildTestGroup(b, X25519AES128GCMSHA256Ed25519, 10000, nil)
	base := tg.g.tree
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			t := newTree(base.s, base.leaves)
			for x := range base.width() {
				if n := base.node(x); n != nil {
					t.set(x, n)
				}
			}
			b.StartTimer()
			if _, err := t.TreeHash(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("after-one-commit", func(b *testing.B) {
		changed := *base.leaf(1234)
		changed.EncryptionKey = randomHPKEPublicKey(b, tg.cs)
		for b.Loop() {
			t := base.clone()
			t.setLeaf(1234, &changed)
			if _, err := t.TreeHash(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
