package mls

import (
	"bytes"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

func TestTranscriptHashesVectors(t *testing.T) {
	var cases []struct {
		suiteField
		ConfirmationKey              hexb `json:"confirmation_key"`
		AuthenticatedContent         hexb `json:"authenticated_content"`
		InterimTranscriptHashBefore  hexb `json:"interim_transcript_hash_before"`
		ConfirmedTranscriptHashAfter hexb `json:"confirmed_transcript_hash_after"`
		InterimTranscriptHashAfter   hexb `json:"interim_transcript_hash_after"`
	}
	if err := vectors.Load("transcript-hashes.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range supportedCases(&c, cases) {
		cs := tc.CipherSuite
		var ac AuthenticatedContent
		roundTrip(t, "authenticated_content", tc.AuthenticatedContent, &ac)
		if err := wire.Unmarshal(tc.AuthenticatedContent, &ac, "authenticated content"); err != nil {
			t.Fatal(err)
		}
		confirmed, err := cs.ConfirmedTranscriptHash(tc.InterimTranscriptHashBefore, &ac)
		if err != nil || !bytes.Equal(confirmed, tc.ConfirmedTranscriptHashAfter) {
			t.Errorf("case %d: confirmed %x, %v", i, confirmed, err)
		}
		tag, err := cs.ConfirmationTag(tc.ConfirmationKey, confirmed)
		if err != nil || !bytes.Equal(tag, ac.Auth.ConfirmationTag) {
			t.Errorf("case %d: confirmation tag %x, want %x", i, tag, ac.Auth.ConfirmationTag)
		}
		interim, err := cs.InterimTranscriptHash(confirmed, ac.Auth.ConfirmationTag)
		if err != nil || !bytes.Equal(interim, tc.InterimTranscriptHashAfter) {
			t.Errorf("case %d: interim %x, %v", i, interim, err)
		}
	}
	c.Report(t, "transcript-hashes.json")
}
