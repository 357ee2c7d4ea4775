package mls

import (
	"bytes"
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

type messageProtectionCase struct {
	suiteField
	GroupID                 hexb   `json:"group_id"`
	Epoch                   uint64 `json:"epoch"`
	TreeHash                hexb   `json:"tree_hash"`
	ConfirmedTranscriptHash hexb   `json:"confirmed_transcript_hash"`
	SignaturePriv           hexb   `json:"signature_priv"`
	SignaturePub            hexb   `json:"signature_pub"`
	EncryptionSecret        hexb   `json:"encryption_secret"`
	SenderDataSecret        hexb   `json:"sender_data_secret"`
	MembershipKey           hexb   `json:"membership_key"`
	Proposal                hexb   `json:"proposal"`
	ProposalPub             hexb   `json:"proposal_pub"`
	ProposalPriv            hexb   `json:"proposal_priv"`
	Commit                  hexb   `json:"commit"`
	CommitPub               hexb   `json:"commit_pub"`
	CommitPriv              hexb   `json:"commit_priv"`
	Application             hexb   `json:"application"`
	ApplicationPriv         hexb   `json:"application_priv"`
}

func TestMessageProtectionVectors(t *testing.T) {
	var cases []messageProtectionCase
	if err := vectors.Load("message-protection.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		cs := tc.CipherSuite
		gc := &GroupContext{Version: MLS10, CipherSuite: cs, GroupID: tc.GroupID, Epoch: tc.Epoch,
			TreeHash: tc.TreeHash, ConfirmedTranscriptHash: tc.ConfirmedTranscriptHash}
		signer, err := cs.ParseSignaturePrivateKey(tc.SignaturePriv)
		if err != nil {
			t.Fatal(err)
		}
		// body returns the encoding of the content's proposal, commit or
		// application data.
		body := func(fc *FramedContent) []byte {
			switch fc.ContentType {
			case ContentProposal:
				out, _ := wire.Marshal(fc.Proposal)
				return out
			case ContentCommit:
				out, _ := wire.Marshal(fc.Commit)
				return out
			}
			return fc.ApplicationData
		}
		for _, pub := range []struct {
			name      string
			msg, want []byte
		}{{"proposal_pub", tc.ProposalPub, tc.Proposal}, {"commit_pub", tc.CommitPub, tc.Commit}} {
			m, err := DecodeMLSMessage(pub.msg)
			if err != nil || m.PublicMessage == nil {
				t.Fatalf("case %d %s: %v", i, pub.name, err)
			}
			pm := m.PublicMessage
			if err := cs.VerifyFramedContent(tc.SignaturePub, pm.AuthenticatedContent(), gc); err != nil {
				t.Errorf("case %d %s: %v", i, pub.name, err)
			}
			if err := pm.VerifyMembershipTag(cs, tc.MembershipKey, gc); err != nil {
				t.Errorf("case %d %s: %v", i, pub.name, err)
			}
			if !bytes.Equal(body(&pm.Content), pub.want) {
				t.Errorf("case %d %s: content differs", i, pub.name)
			}
			// Re-protect and check again; a flipped tag must fail.
			again := *pm
			if again.Auth.Signature, err = cs.SignFramedContent(signer, WireFormatPublicMessage, &again.Content, gc); err != nil {
				t.Fatal(err)
			}
			if err := again.SetMembershipTag(cs, tc.MembershipKey, gc); err != nil {
				t.Fatal(err)
			}
			if err := cs.VerifyFramedContent(tc.SignaturePub, again.AuthenticatedContent(), gc); err != nil {
				t.Errorf("case %d %s re-protected: %v", i, pub.name, err)
			}
			if err := again.VerifyMembershipTag(cs, tc.MembershipKey, gc); err != nil {
				t.Errorf("case %d %s re-protected: %v", i, pub.name, err)
			}
			again.MembershipTag = append([]byte(nil), again.MembershipTag...)
			again.MembershipTag[0] ^= 1
			if again.VerifyMembershipTag(cs, tc.MembershipKey, gc) == nil {
				t.Errorf("case %d %s: corrupted membership tag accepted", i, pub.name)
			}
		}

		newTree := func() *SecretTree {
			st, err := cs.NewSecretTree(tc.EncryptionSecret, 2)
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
		for _, priv := range []struct {
			name      string
			msg, want []byte
		}{{"proposal_priv", tc.ProposalPriv, tc.Proposal}, {"commit_priv", tc.CommitPriv, tc.Commit},
			{"application_priv", tc.ApplicationPriv, tc.Application}} {
			m, err := DecodeMLSMessage(priv.msg)
			if err != nil || m.PrivateMessage == nil {
				t.Fatalf("case %d %s: %v", i, priv.name, err)
			}
			// Every vector message is at generation 0 of its ratchet.
			ac, err := cs.DecryptPrivateMessage(newTree(), tc.SenderDataSecret, m.PrivateMessage)
			if err != nil {
				t.Errorf("case %d %s: %v", i, priv.name, err)
				continue
			}
			if ac.Content.Sender != (Sender{SenderMember, 1}) {
				t.Errorf("case %d %s: sender %+v", i, priv.name, ac.Content.Sender)
			}
			if err := cs.VerifyFramedContent(tc.SignaturePub, ac, gc); err != nil {
				t.Errorf("case %d %s: %v", i, priv.name, err)
			}
			if !bytes.Equal(body(&ac.Content), priv.want) {
				t.Errorf("case %d %s: content differs", i, priv.name)
			}
			// Re-protect with the sender's tree and decrypt with the
			// receiver's.
			ac.Auth.Signature, err = cs.SignFramedContent(signer, WireFormatPrivateMessage, &ac.Content, gc)
			if err != nil {
				t.Fatal(err)
			}
			pm, err := cs.EncryptPrivateMessage(newTree(), tc.SenderDataSecret, ac, 7)
			if err != nil {
				t.Fatal(err)
			}
			back, err := cs.DecryptPrivateMessage(newTree(), tc.SenderDataSecret, pm)
			if err != nil {
				t.Errorf("case %d %s re-protected: %v", i, priv.name, err)
				continue
			}
			if err := cs.VerifyFramedContent(tc.SignaturePub, back, gc); err != nil || !bytes.Equal(body(&back.Content), priv.want) {
				t.Errorf("case %d %s re-protected: content or signature differs: %v", i, priv.name, err)
			}
		}
	}
	c.Report(t, "message-protection.json")
}

// TestPrivateMessageTampering flips bytes of the vectors' PrivateMessages:
// decryption must fail cleanly.
func TestPrivateMessageTampering(t *testing.T) {
	var cases []messageProtectionCase
	if err := vectors.Load("message-protection.json", &cases); err != nil {
		t.Fatal(err)
	}
	tc := cases[0]
	cs := tc.CipherSuite
	m, err := DecodeMLSMessage(tc.ApplicationPriv)
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]*[]byte{
		"ciphertext":  &m.PrivateMessage.Ciphertext,
		"sender data": &m.PrivateMessage.EncryptedSenderData,
		"aad":         &m.PrivateMessage.AuthenticatedData,
		"group id":    &m.PrivateMessage.GroupID,
	}
	for name, f := range fields {
		orig := *f
		*f = append([]byte{0x55}, orig...)
		st, err := cs.NewSecretTree(tc.EncryptionSecret, 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.DecryptPrivateMessage(st, tc.SenderDataSecret, m.PrivateMessage); err == nil {
			t.Errorf("%s tampered: decrypted", name)
		}
		*f = orig
	}
	// A generation far ahead is refused before any work is done.
	st, err := cs.NewSecretTree(tc.EncryptionSecret, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(1, ApplicationRatchet, maxForwardRatchet+1); !errors.Is(err, ErrSecretTree) {
		t.Errorf("far generation: %v", err)
	}
	if _, err := st.Get(2, ApplicationRatchet, 0); !errors.Is(err, ErrSecretTree) {
		t.Errorf("leaf out of range: %v", err)
	}
}
