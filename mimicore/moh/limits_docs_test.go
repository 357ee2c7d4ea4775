package moh

import (
	"fmt"
	"strings"
	"testing"
)

// TestLimitsTableMatchesCode requires the rows of docs/protocol.md §1.2
// that name a decoder's limit to state the constant the decoders use, so
// that a limit changed in the code without the document (or the reverse)
// fails here.
func TestLimitsTableMatchesCode(t *testing.T) {
	doc := readProtocolDoc(t)
	_, table, ok := strings.Cut(doc, "| field | limit |\n|---|---|\n")
	if !ok {
		t.Fatal("docs/protocol.md has no §1.2 table headed | field | limit |")
	}
	table, _, _ = strings.Cut(table, "\n\n")
	rows := map[string]string{}
	for _, line := range strings.Split(table, "\n") {
		field, limit, ok := strings.Cut(strings.Trim(line, "| "), " | ")
		if !ok {
			t.Fatalf("row does not parse: %s", line)
		}
		rows[field] = limit
	}
	for _, tc := range []struct {
		field, limit string // the row's limit starts with limit
	}{
		{"`group_id`", fmt.Sprintf("1-%d bytes", MaxGroupIDLen)},
		{"`request_id`", fmt.Sprintf("1-%d bytes", MaxRequestIDLen)},
		{"`key_id`", fmt.Sprintf("1-%d bytes", MaxKeyIDLen)},
		{"`public_key`", fmt.Sprintf("at most %d bytes", MaxPublicKeyLen)},
		{"`signature`", fmt.Sprintf("1-%d bytes", MaxSignatureLen)},
		{"`key_package_ref`", fmt.Sprintf("1-%d bytes", MaxHashLen)},
		{"`DSError.message`", fmt.Sprintf("at most %d bytes", MaxMessageLen)},
		{"attachment `token`", fmt.Sprintf("1-%d bytes", MaxTokenLen)},
		{"`content_hash`", fmt.Sprintf("32-%d bytes", MaxHashLen)},
		{"`content_length`", "at most " + thousands(MaxAttachmentLen) + " (2^30-9)"},
		{"a `UserURI` or `ClientURI`", fmt.Sprintf("1-%d bytes", MaxURILen)},
		{"client ids in one request", fmt.Sprintf("1-%d", MaxClientIDs)},
		{"`welcome_packages` of `add_users` / `add_clients`", fmt.Sprintf("1-%d", MaxWelcomePackages)},
		{"the `group_id` of an `MLSMessage` in a DS request body (§5.2)", fmt.Sprintf("1-%d bytes", MaxGroupIDLen)},
		{"client URIs in `unknown` or `missing`, KeyPackages in one answer", fmt.Sprintf("at most %d", MaxClientIDs)},
		{"verification keys in one answer", fmt.Sprintf("at most %d", MaxVerifyKeys)},
		{"provider request `payload`", "at most 1 MiB (" + thousands(MaxPayloadLen) + " bytes)"},
	} {
		t.Run(tc.field, func(t *testing.T) {
			got, ok := rows[tc.field]
			if !ok {
				t.Fatalf("the table has no row %s", tc.field)
			}
			if !strings.HasPrefix(got, tc.limit) {
				t.Errorf("the table says %q, the code %q", got, tc.limit)
			}
		})
	}
	if MaxAttachmentLen != 1<<30-9 || MaxPayloadLen != 1<<20 {
		t.Error("the table's 2^30-9 or 1 MiB no longer describes the constant")
	}
}

// thousands writes n in decimal with commas between groups of three
// digits, as the document does.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
