package mls

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// addMessageSeeds adds the given fields of the first cases of messages.json
// to the fuzz corpus.
func addMessageSeeds(f *testing.F, fields ...string) {
	var cases []map[string]hexb
	if err := vectors.Load("messages.json", &cases); err != nil {
		f.Fatal(err)
	}
	for _, tc := range cases[:6] {
		for _, field := range fields {
			f.Add([]byte(tc[field]))
		}
	}
}

// FuzzMLSMessage checks that decoding never panics and that whatever
// decodes re-encodes to the same bytes (the decoder is strict).
func FuzzMLSMessage(f *testing.F) {
	addMessageSeeds(f, "mls_welcome", "mls_group_info", "mls_key_package", "public_message_commit",
		"public_message_proposal", "private_message")
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMLSMessage(data)
		if err != nil {
			return
		}
		out, err := wire.Marshal(m)
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", out, data)
		}
	})
}

// FuzzRatchetTree decodes trees and runs the tree operations a joiner runs
// on them, and checks the parent key index and trimmedWidth.
func FuzzRatchetTree(f *testing.F) {
	addMessageSeeds(f, "ratchet_tree")
	f.Fuzz(func(t *testing.T, data []byte) {
		var rt RatchetTree
		if wire.Unmarshal(data, &rt, "ratchet tree") != nil {
			return
		}
		out, err := wire.Marshal(&rt)
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		tree, err := TreeFromRatchetTree(X25519AES128GCMSHA256Ed25519, rt)
		if err != nil {
			return
		}
		if _, err := tree.TreeHash(); err != nil {
			t.Fatalf("tree hash: %v", err)
		}
		_ = tree.Validate([]byte("group"))
		if w := tree.trimmedWidth(); w != uint32(len(rt)) {
			t.Fatalf("trimmedWidth %d for %d nodes", w, len(rt))
		}
		// Every parent key maps to a node holding it (with duplicates, one
		// of them).
		keys := 0
		for x := uint32(1); x < tree.width(); x += 2 {
			if p := tree.parentNode(x); p != nil {
				y, ok := tree.parentWithKey(p.EncryptionKey)
				if !ok || !bytes.Equal(tree.parentNode(y).EncryptionKey, p.EncryptionKey) {
					t.Fatalf("node %d's key is not indexed", x)
				}
				keys++
			}
		}
		if tree.parentKeys.size > keys {
			t.Fatalf("%d parent keys indexed for %d parent nodes", tree.parentKeys.size, keys)
		}
		for i := range tree.LeafCount() {
			tree.filteredDirectPath(i)
		}
	})
}

// FuzzKeyPackage decodes and verifies KeyPackages.
func FuzzKeyPackage(f *testing.F) {
	addMessageSeeds(f, "mls_key_package")
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMLSMessage(data)
		if err != nil || m.KeyPackage == nil {
			return
		}
		_ = m.KeyPackage.Verify()
		_, _ = m.KeyPackage.Ref()
	})
}

// FuzzApplyCommit feeds arbitrary messages to a valid group's state: no
// panic, and the state never changes.
func FuzzApplyCommit(f *testing.F) {
	tg := buildTestGroup(f, X25519AES128GCMSHA256Ed25519, 5, nil)
	kp, _ := newTestKeyPackage(f, tg.cs, "joiner")
	seeds := []*MLSMessage{
		tg.commit(f, 1, nil, true, nil),
		tg.commit(f, 0, []ProposalOrRef{
			{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalRemove, Removed: 2}},
			{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}},
		}, true, nil),
		tg.commit(f, 3, []ProposalOrRef{{Type: ProposalByValue, Proposal: &Proposal{Type: ProposalAdd, KeyPackage: kp}}}, false, nil),
	}
	for _, m := range seeds {
		enc, err := marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	before, err := tg.g.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMLSMessage(data)
		if err != nil {
			return
		}
		n, _, err := tg.g.ApplyCommit(m, nil)
		if err == nil {
			if _, err := n.MarshalBinary(); err != nil {
				t.Fatalf("new state does not encode: %v", err)
			}
		}
		after, err := tg.g.MarshalBinary()
		if err != nil || !bytes.Equal(after, before) {
			t.Fatal("applying a commit changed the original state")
		}
	})
}
