package mls

import (
	"errors"
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

// BenchmarkExternalCommitManyAdds applies an unauthenticated external
// commit of about 1 MiB of Adds (valid KeyPackages) besides its
// ExternalInit, which RFC 9420 §12.4.3.2 forbids: its refusal must not
// cost a signature check per Add.
func BenchmarkExternalCommitManyAdds(b *testing.B) {
	for _, cs := range []CipherSuite{X25519AES128GCMSHA256Ed25519, P256AES128GCMSHA256P256} {
		tg := buildTestGroup(b, cs, 4, nil)
		kp, _ := newTestKeyPackage(b, cs, "someone")
		kpEnc, err := marshal(kp)
		if err != nil {
			b.Fatal(err)
		}
		props := make([]ProposalOrRef, (1<<20)/(len(kpEnc)+3))
		for i := range props {
			props[i] = ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}
		}
		props = append(props, ProposalOrRef{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalExternalInit, KEMOutput: []byte{1}}})
		m := externalCommit(b, tg, props)
		b.Run(fmt.Sprintf("suite=%d/adds=%d", uint16(cs), len(props)-1), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := tg.g.ApplyCommit(m, nil); !errors.Is(err, ErrInvalidCommit) {
					b.Fatalf("want a refusal by the type rule, got %v", err)
				}
			}
		})
	}
}

// BenchmarkCommitManyPSKs applies a commit covering many distinct PSK
// proposals: the duplicate check must stay linear in their number.
func BenchmarkCommitManyPSKs(b *testing.B) {
	tg := buildTestGroup(b, X25519AES128GCMSHA256Ed25519, 4, nil)
	for _, n := range []int{1000, 10000, 27000} {
		props := make([]ProposalOrRef, n)
		for i := range props {
			props[i] = pskProposal([]byte{byte(i >> 16), byte(i >> 8), byte(i)}, tg.g.s.nh)
		}
		m := reencode(b, tg.frame(b, Sender{Type: SenderMember, Index: 1}, tg.signers[1], &Commit{Proposals: props}))
		b.Run(fmt.Sprint("psks=", n), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := tg.g.ApplyCommit(m, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
