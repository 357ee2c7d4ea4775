package mls

import (
	"bytes"
	"slices"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

type treeKEMCase struct {
	suiteField
	GroupID                 hexb   `json:"group_id"`
	Epoch                   uint64 `json:"epoch"`
	ConfirmedTranscriptHash hexb   `json:"confirmed_transcript_hash"`
	RatchetTree             hexb   `json:"ratchet_tree"`
	LeavesPrivate           []struct {
		Index          uint32 `json:"index"`
		EncryptionPriv hexb   `json:"encryption_priv"`
		SignaturePriv  hexb   `json:"signature_priv"`
		PathSecrets    []struct {
			Node       uint32 `json:"node"`
			PathSecret hexb   `json:"path_secret"`
		} `json:"path_secrets"`
	} `json:"leaves_private"`
	UpdatePaths []struct {
		Sender        uint32 `json:"sender"`
		UpdatePath    hexb   `json:"update_path"`
		PathSecrets   []hexb `json:"path_secrets"`
		CommitSecret  hexb   `json:"commit_secret"`
		TreeHashAfter hexb   `json:"tree_hash_after"`
	} `json:"update_paths"`
}

// TestTreeKEMVectorsPublic runs the Delivery Service half of treekem.json:
// UpdatePath parent-hash validity, merging and the tree hash after.
func TestTreeKEMVectorsPublic(t *testing.T) {
	var cases []treeKEMCase
	if err := vectors.Load("treekem.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		tree := decodeTree(t, tc.CipherSuite, tc.RatchetTree)
		if err := tree.Validate(tc.GroupID); err != nil {
			t.Errorf("case %d: tree: %v", i, err)
		}
		for j, up := range tc.UpdatePaths {
			var path UpdatePath
			if err := wire.Unmarshal(up.UpdatePath, &path, "update path"); err != nil {
				t.Fatal(err)
			}
			if err := path.LeafNode.VerifySignature(tc.CipherSuite, tc.GroupID, up.Sender); err != nil {
				t.Errorf("case %d path %d: %v", i, j, err)
			}
			after := tree.clone()
			if err := after.mergeUpdatePath(up.Sender, &path, nil, leafKeyIndex(tree)); err != nil {
				t.Errorf("case %d path %d: %v", i, j, err)
				continue
			}
			h, err := after.TreeHash()
			if err != nil || !bytes.Equal(h, up.TreeHashAfter) {
				t.Errorf("case %d path %d: tree hash after %x, %v", i, j, h, err)
			}
			if err := after.verifyParentHashes(); err != nil {
				t.Errorf("case %d path %d: merged tree: %v", i, j, err)
			}
			// A path short of a ciphertext must be refused (RFC 9420 §7.6).
			for k := range path.Nodes {
				if len(path.Nodes[k].EncryptedPathSecrets) == 0 {
					continue
				}
				short := path
				short.Nodes = slices.Clone(path.Nodes)
				short.Nodes[k].EncryptedPathSecrets = short.Nodes[k].EncryptedPathSecrets[1:]
				if err := tree.clone().mergeUpdatePath(up.Sender, &short, nil, leafKeyIndex(tree)); err == nil {
					t.Errorf("case %d path %d: node %d short of a ciphertext accepted", i, j, k)
				}
				break
			}
			// A path whose leaf parent hash is wrong must be refused.
			bad := path
			bad.LeafNode.ParentHash = append([]byte{1}, path.LeafNode.ParentHash...)
			if err := tree.clone().mergeUpdatePath(up.Sender, &bad, nil, leafKeyIndex(tree)); err == nil {
				t.Errorf("case %d path %d: wrong parent hash accepted", i, j)
			}
		}
	}
	c.Report(t, "treekem.json (public part)")
}

// TestTreeKEMVectorsPrivate runs the client half of treekem.json: each
// leaf decrypts its path secret and derives the commit secret.
func TestTreeKEMVectorsPrivate(t *testing.T) {
	var cases []treeKEMCase
	if err := vectors.Load("treekem.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		cs := tc.CipherSuite
		tree := decodeTree(t, cs, tc.RatchetTree)
		for j, up := range tc.UpdatePaths {
			var path UpdatePath
			if err := wire.Unmarshal(up.UpdatePath, &path, "update path"); err != nil {
				t.Fatal(err)
			}
			after := tree.clone()
			if err := after.mergeUpdatePath(up.Sender, &path, nil, leafKeyIndex(tree)); err != nil {
				t.Fatal(err)
			}
			gc := &GroupContext{Version: MLS10, CipherSuite: cs, GroupID: tc.GroupID, Epoch: tc.Epoch,
				TreeHash: up.TreeHashAfter, ConfirmedTranscriptHash: tc.ConfirmedTranscriptHash}
			ctx, err := wire.Marshal(gc)
			if err != nil {
				t.Fatal(err)
			}
			for _, lp := range tc.LeavesPrivate {
				if lp.Index == up.Sender {
					continue
				}
				keys := pathKeys{}
				priv, err := cs.ParseHPKEPrivateKey(lp.EncryptionPriv)
				if err != nil {
					t.Fatal(err)
				}
				keys[string(tree.leaf(lp.Index).EncryptionKey)] = priv
				for _, ps := range lp.PathSecrets {
					if _, err := tree.derivePathKeys(ps.PathSecret, []uint32{ps.Node}, keys); err != nil {
						t.Fatalf("case %d leaf %d: %v", i, lp.Index, err)
					}
				}
				ps, nodes, err := after.decryptPathSecret(up.Sender, lp.Index, &path, nil, keys, ctx)
				if err != nil {
					t.Errorf("case %d path %d leaf %d: %v", i, j, lp.Index, err)
					continue
				}
				if !bytes.Equal(ps, up.PathSecrets[lp.Index]) {
					t.Errorf("case %d path %d leaf %d: path secret %x", i, j, lp.Index, ps)
				}
				commitSecret, err := after.derivePathKeys(ps, nodes, keys)
				if err != nil || !bytes.Equal(commitSecret, up.CommitSecret) {
					t.Errorf("case %d path %d leaf %d: commit secret %x, %v", i, j, lp.Index, commitSecret, err)
				}
			}
		}
	}
	c.Report(t, "treekem.json (private part)")
}

// leafKeyIndex indexes the encryption keys of tree's leaves as GroupState
// does.
func leafKeyIndex(tree *Tree) pmap {
	var b pmapBuilder
	for i := range tree.leaves {
		if l := tree.leaf(i); l != nil {
			b.set(string(l.EncryptionKey), i)
		}
	}
	return b.build()
}
