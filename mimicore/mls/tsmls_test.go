package mls

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

type tsmlsScenario struct {
	Format              string      `json:"format"`
	CipherSuite         CipherSuite `json:"cipher_suite"`
	HandshakeWireFormat string      `json:"handshake_wire_format"`
	Extended            bool        `json:"extended"`
	GroupID             hexb        `json:"group_id"`
	Clients             []struct {
		Name          string `json:"name"`
		KeyPackage    hexb   `json:"key_package"`
		KeyPackageRef hexb   `json:"key_package_ref"`
		SignatureKey  hexb   `json:"signature_public_key"`
		LeafIndex     uint32 `json:"leaf_index"`
	} `json:"clients"`
	Messages []struct {
		Seq           int    `json:"seq"`
		Kind          string `json:"kind"`
		From          string `json:"from"`
		WireFormat    string `json:"wire_format"`
		Epoch         *uint64
		EpochAfter    uint64 `json:"epoch_after"`
		HasPath       bool   `json:"has_path"`
		Message       hexb   `json:"message"`
		NewMemberRefs []hexb `json:"new_member_key_package_refs"`
	} `json:"messages"`
	Epochs []struct {
		Epoch                   uint64 `json:"epoch"`
		CausedBySeq             *int   `json:"caused_by_seq"`
		RatchetTree             hexb   `json:"ratchet_tree"`
		TreeHash                hexb   `json:"tree_hash"`
		GroupContext            hexb   `json:"group_context"`
		ConfirmedTranscriptHash hexb   `json:"confirmed_transcript_hash"`
		ConfirmationTag         hexb   `json:"confirmation_tag"`
		InterimTranscriptHash   hexb   `json:"interim_transcript_hash"`
		GroupInfo               hexb   `json:"group_info"`
		SignerLeaf              uint32 `json:"group_info_signer_leaf_index"`
	} `json:"epochs"`
	Exporter struct {
		Epoch          uint64 `json:"epoch"`
		Label          string `json:"label"`
		Context        hexb   `json:"context"`
		Length         uint16 `json:"length"`
		Secret         hexb   `json:"secret"`
		ExporterSecret hexb   `json:"exporter_secret"`
	} `json:"exporter"`
}

// TestTSMLSPeerTranscripts replays the ts-mls transcripts through the
// public group state, epoch by epoch.
func TestTSMLSPeerTranscripts(t *testing.T) {
	files := []string{"scenario-cs1.json", "scenario-cs2.json", "scenario-cs1-extended.json",
		"scenario-cs2-extended.json", "scenario-cs1-private-handshake.json"}
	var c vectors.Counter
	for _, f := range files {
		var sc tsmlsScenario
		if err := vectors.Load(filepath.Join("ts-mls-peer", f), &sc); err != nil {
			t.Fatal(err)
		}
		if sc.Format != "mls-peer-scenario/1" {
			t.Fatalf("%s: format %q", f, sc.Format)
		}
		t.Run(f, func(t *testing.T) { replayScenario(t, &sc) })
		c.Run++
	}
	c.Report(t, "ts-mls-peer transcripts")
}

func decodeGroupInfo(t *testing.T, data []byte) *GroupInfo {
	t.Helper()
	m, err := DecodeMLSMessage(data)
	if err != nil || m.GroupInfo == nil {
		t.Fatalf("group info: %v", err)
	}
	return m.GroupInfo
}

func replayScenario(t *testing.T, sc *tsmlsScenario) {
	cs := sc.CipherSuite
	private := sc.HandshakeWireFormat == "mls_private_message"
	checkEpoch := func(g *GroupState, k int) {
		t.Helper()
		want := sc.Epochs[k]
		gc := g.GroupContext()
		enc, err := wire.Marshal(&gc)
		if err != nil {
			t.Fatal(err)
		}
		if g.Epoch() != want.Epoch || !bytes.Equal(enc, want.GroupContext) {
			t.Errorf("epoch %d: group context\n got %x\nwant %x", want.Epoch, enc, []byte(want.GroupContext))
		}
		if !bytes.Equal(g.TreeHash(), want.TreeHash) {
			t.Errorf("epoch %d: tree hash %x", want.Epoch, g.TreeHash())
		}
		if !bytes.Equal(g.ConfirmedTranscriptHash(), want.ConfirmedTranscriptHash) ||
			!bytes.Equal(g.InterimTranscriptHash(), want.InterimTranscriptHash) ||
			!bytes.Equal(g.ConfirmationTag(), want.ConfirmationTag) {
			t.Errorf("epoch %d: transcript hashes or confirmation tag differ", want.Epoch)
		}
		if !bytes.Equal(encodeTree(t, g.Tree()), want.RatchetTree) {
			t.Errorf("epoch %d: ratchet tree differs", want.Epoch)
		}
		gi := decodeGroupInfo(t, want.GroupInfo)
		if gi.Signer != want.SignerLeaf {
			t.Errorf("epoch %d: signer %d", want.Epoch, gi.Signer)
		}
		if err := g.VerifyGroupInfo(gi); err != nil {
			t.Errorf("epoch %d: %v", want.Epoch, err)
		}
		// A tampered signature must be refused.
		bad := *gi
		bad.Signature = append([]byte(nil), gi.Signature...)
		bad.Signature[len(bad.Signature)/2] ^= 1
		if err := g.VerifyGroupInfo(&bad); !errors.Is(err, ErrInvalidGroupInfo) {
			t.Errorf("epoch %d: tampered group info: %v", want.Epoch, err)
		}
	}

	g, err := NewGroupState(decodeGroupInfo(t, sc.Epochs[0].GroupInfo), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkEpoch(g, 0)
	kpRefs := make(map[string]bool)
	proposals := make(map[string]*AuthenticatedContent)
	resolve := func(ref []byte) (*AuthenticatedContent, error) {
		if ac, ok := proposals[string(ref)]; ok {
			return ac, nil
		}
		return nil, ErrUnknownProposal
	}
	for _, msg := range sc.Messages {
		m, err := DecodeMLSMessage(msg.Message)
		if err != nil {
			t.Fatalf("seq %d: %v", msg.Seq, err)
		}
		switch msg.Kind {
		case "key_package":
			if err := m.KeyPackage.Verify(); err != nil {
				t.Errorf("seq %d: %v", msg.Seq, err)
			}
			ref, err := m.KeyPackage.Ref()
			if err != nil {
				t.Fatal(err)
			}
			for _, cl := range sc.Clients {
				if cl.Name == msg.From && !bytes.Equal(cl.KeyPackageRef, ref) {
					t.Errorf("seq %d: key package ref %x, want %x", msg.Seq, ref, []byte(cl.KeyPackageRef))
				}
			}
			kpRefs[string(ref)] = true
		case "welcome":
			got := m.Welcome.NewMembers()
			if len(got) != len(msg.NewMemberRefs) {
				t.Fatalf("seq %d: %d new members", msg.Seq, len(got))
			}
			for i := range got {
				if !bytes.Equal(got[i], msg.NewMemberRefs[i]) || !kpRefs[string(got[i])] {
					t.Errorf("seq %d: new member ref %x", msg.Seq, got[i])
				}
			}
		case "application":
			if err := g.CheckMessage(m); err != nil {
				t.Errorf("seq %d: %v", msg.Seq, err)
			}
		case "proposal":
			if private {
				if _, _, err := g.VerifyProposal(m); !errors.Is(err, ErrPrivateHandshake) {
					t.Errorf("seq %d: private proposal: %v", msg.Seq, err)
				}
				continue
			}
			ac, ref, err := g.VerifyProposal(m)
			if err != nil {
				t.Fatalf("seq %d: %v", msg.Seq, err)
			}
			proposals[string(ref)] = ac
		case "commit":
			k := -1
			for i, e := range sc.Epochs {
				if e.CausedBySeq != nil && *e.CausedBySeq == msg.Seq {
					k = i
				}
			}
			if k < 0 {
				t.Fatalf("seq %d: no epoch caused by this commit", msg.Seq)
			}
			if private {
				if _, _, err := g.ApplyCommit(m, resolve); !errors.Is(err, ErrPrivateHandshake) {
					t.Errorf("seq %d: private commit: %v", msg.Seq, err)
				}
				// The DS can only follow through the published GroupInfo.
				g, err = NewGroupState(decodeGroupInfo(t, sc.Epochs[k].GroupInfo), nil)
				if err != nil {
					t.Fatalf("seq %d: %v", msg.Seq, err)
				}
				checkEpoch(g, k)
				continue
			}
			n, info, err := g.ApplyCommit(m, resolve)
			if err != nil {
				t.Fatalf("seq %d: %v", msg.Seq, err)
			}
			if (info.Path != nil) != msg.HasPath || n.Epoch() != msg.EpochAfter {
				t.Errorf("seq %d: path %v epoch %d", msg.Seq, info.Path != nil, n.Epoch())
			}
			// Replaying the commit on the new state is a stale handshake.
			if _, _, err := n.ApplyCommit(m, resolve); !errors.Is(err, ErrStaleEpoch) {
				t.Errorf("seq %d: replayed commit: %v", msg.Seq, err)
			}
			checkEpoch(n, k)
			// The old state is untouched.
			checkEpoch(g, k-1)
			g = n
			proposals = make(map[string]*AuthenticatedContent)
			// A state rebuilt from the published GroupInfo is the same.
			r, err := NewGroupState(decodeGroupInfo(t, sc.Epochs[k].GroupInfo), nil)
			if err != nil {
				t.Fatalf("seq %d: %v", msg.Seq, err)
			}
			checkEpoch(r, k)
		}
	}
	ex := sc.Exporter
	out, err := cs.Export(ex.ExporterSecret, ex.Label, ex.Context, ex.Length)
	if err != nil || !bytes.Equal(out, ex.Secret) {
		t.Errorf("exporter %x, %v", out, err)
	}
}

// TestGroupStateEncoding round-trips every state of a ts-mls transcript
// through the storage encoding.
func TestGroupStateEncoding(t *testing.T) {
	var sc tsmlsScenario
	if err := vectors.Load(filepath.Join("ts-mls-peer", "scenario-cs2-extended.json"), &sc); err != nil {
		t.Fatal(err)
	}
	for k, e := range sc.Epochs {
		g, err := NewGroupState(decodeGroupInfo(t, e.GroupInfo), nil)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := g.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		d, err := DecodeGroupState(enc)
		if err != nil {
			t.Fatalf("epoch %d: %v", k, err)
		}
		again, err := d.MarshalBinary()
		if err != nil || !bytes.Equal(enc, again) {
			t.Fatalf("epoch %d: encoding is not stable", k)
		}
		if d.MemberCount() != g.MemberCount() || !bytes.Equal(d.InterimTranscriptHash(), e.InterimTranscriptHash) {
			t.Fatalf("epoch %d: decoded state differs", k)
		}
		// Flipping a byte anywhere is refused or yields another valid
		// encoding, never a panic; flipping the tree hash is refused.
		for i := range enc {
			bad := append([]byte(nil), enc...)
			bad[i] ^= 0x40
			_, _ = DecodeGroupState(bad)
		}
		gc := g.GroupContext()
		gc.TreeHash = append([]byte(nil), gc.TreeHash...)
		gc.TreeHash[0] ^= 1
		tampered := *g
		tampered.ctx = gc
		enc2, err := tampered.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeGroupState(enc2); !errors.Is(err, ErrStateEncoding) {
			t.Fatalf("epoch %d: wrong tree hash accepted: %v", k, err)
		}
	}
}
