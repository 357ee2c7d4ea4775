package mls

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// FuzzMemberInput feeds arbitrary MLS messages to what a client does with
// the messages of its group's other members, which may be another
// provider's clients: a member opens private messages, verifies
// proposals and applies commits, and a joiner processes Welcomes. No
// panic; the receiving member's public state never changes; whatever
// is accepted encodes. The member is decoded afresh for each input, so
// that the seeds' private message opens every time.
//
//	go test -fuzz=FuzzMemberInput ./mimicore/mls
func FuzzMemberInput(f *testing.F) {
	cs := X25519AES128GCMSHA256Ed25519
	a, b, c := newTestClient(f, cs, "A"), newTestClient(f, cs, "B"), newTestClient(f, cs, "C")
	alice, err := NewGroup(a.groupOptions(cs, "fuzz group"))
	if err != nil {
		f.Fatal(err)
	}
	res, err := alice.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: b.kp}}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	alice, bob := res.Next, b.join(f, res.Welcome)

	msg, err := bob.Protect([]byte("hello"), []byte("ad"))
	if err != nil {
		f.Fatal(err)
	}
	upd, _, err := bob.ProposeUpdate()
	if err != nil {
		f.Fatal(err)
	}
	rm, err := bob.Propose(&Proposal{Type: ProposalRemove, Removed: alice.LeafIndex()})
	if err != nil {
		f.Fatal(err)
	}
	empty, err := bob.Commit(nil, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	addC, err := bob.Commit([]*Proposal{{Type: ProposalAdd, KeyPackage: c.kp}}, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	for _, m := range []*MLSMessage{msg, upd, rm, empty.Commit, addC.Commit, addC.Welcome} {
		enc, err := marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	stored, err := alice.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	joiner := WelcomeOptions{KeyPackage: c.kp, InitKey: c.initPriv, LeafKey: c.leafPriv, Signer: c.signer}

	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMLSMessage(data)
		if err != nil {
			return
		}
		if m.Welcome != nil {
			if j, err := JoinFromWelcome(m.Welcome, joiner); err == nil {
				if _, err := j.MarshalBinary(); err != nil {
					t.Fatalf("joined member does not encode: %v", err)
				}
			}
			return
		}
		r, err := DecodeMember(stored, MemberOptions{})
		if err != nil {
			t.Fatal(err)
		}
		before, err := r.State().MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		_, _, _ = r.Unprotect(m)
		_, _, _ = r.VerifyProposal(m)
		if next, err := r.ApplyCommit(m, nil); err == nil {
			if _, err := next.MarshalBinary(); err != nil {
				t.Fatalf("next member does not encode: %v", err)
			}
		}
		after, err := r.State().MarshalBinary()
		if err != nil || !bytes.Equal(after, before) {
			t.Fatal("processing a message changed the member's public state")
		}
	})
}

// FuzzGroupSecrets decodes arbitrary bytes as the GroupSecrets a Welcome
// carries, which a joiner decodes once HPKE opened it: the committer, a
// member of another provider, chose them. Whatever decodes re-encodes to
// the same bytes (the decoder is strict).
//
//	go test -fuzz=FuzzGroupSecrets ./mimicore/mls
func FuzzGroupSecrets(f *testing.F) {
	addMessageSeeds(f, "group_secrets")
	f.Fuzz(func(t *testing.T, data []byte) {
		var gs GroupSecrets
		if wire.Unmarshal(data, &gs, "group secrets") != nil {
			return
		}
		out, err := wire.Marshal(&gs)
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("%x decodes, and encodes as %x (%v)", data, out, err)
		}
	})
}
