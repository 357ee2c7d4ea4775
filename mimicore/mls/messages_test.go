package mls

import (
	"bytes"
	"errors"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls/internal/vectors"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// roundTrip decodes data into v strictly and checks that re-encoding gives
// the same bytes.
func roundTrip(t *testing.T, name string, data []byte, v interface {
	wire.Marshaler
	wire.Unmarshaler
}) {
	t.Helper()
	if err := wire.Unmarshal(data, v, name); err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	out, err := wire.Marshal(v)
	if err != nil {
		t.Errorf("%s: re-encoding: %v", name, err)
		return
	}
	if !bytes.Equal(out, data) {
		t.Errorf("%s: re-encoding differs:\n got %x\nwant %x", name, out, data)
	}
	// Any strict prefix must be refused.
	if len(data) > 0 && wire.Unmarshal(data[:len(data)-1], v, name) == nil {
		t.Errorf("%s: truncated input accepted", name)
	}
}

func TestMessagesVectors(t *testing.T) {
	var cases []map[string]hexb
	if err := vectors.Load("messages.json", &cases); err != nil {
		t.Fatal(err)
	}
	var c vectors.Counter
	for i, tc := range cases {
		wantWF := map[string]WireFormat{
			"mls_welcome": WireFormatWelcome, "mls_group_info": WireFormatGroupInfo,
			"mls_key_package": WireFormatKeyPackage, "public_message_application": WireFormatPublicMessage,
			"public_message_proposal": WireFormatPublicMessage, "public_message_commit": WireFormatPublicMessage,
			"private_message": WireFormatPrivateMessage,
		}
		for field, wf := range wantWF {
			var m MLSMessage
			roundTrip(t, field, tc[field], &m)
			if m.WireFormat != wf {
				t.Errorf("case %d %s: wire format %d, want %d", i, field, m.WireFormat, wf)
			}
		}
		roundTrip(t, "ratchet_tree", tc["ratchet_tree"], new(RatchetTree))
		roundTrip(t, "group_secrets", tc["group_secrets"], new(GroupSecrets))
		roundTrip(t, "commit", tc["commit"], new(Commit))
		bodies := map[string]ProposalType{
			"add_proposal": ProposalAdd, "update_proposal": ProposalUpdate, "remove_proposal": ProposalRemove,
			"pre_shared_key_proposal": ProposalPSK, "re_init_proposal": ProposalReInit,
			"external_init_proposal":            ProposalExternalInit,
			"group_context_extensions_proposal": ProposalGroupContextExtensions,
		}
		for field, pt := range bodies {
			roundTrip(t, field, tc[field], ProposalBody{&Proposal{Type: pt}})
		}
		if n := len(wantWF) + 3 + len(bodies); len(tc) != n {
			t.Errorf("case %d has %d fields, the test covers %d", i, len(tc), n)
		}
		// The application PublicMessage is well formed but must be refused
		// by the group state; see TestPublicApplicationRefused.
		c.Run++
		if t.Failed() {
			t.Fatalf("case %d failed", i)
		}
	}
	c.Report(t, "messages.json")
}

// TestDecodeMLSMessageRejects covers the framing errors the vectors lack.
func TestDecodeMLSMessageRejects(t *testing.T) {
	var cases []map[string]hexb
	if err := vectors.Load("messages.json", &cases); err != nil {
		t.Fatal(err)
	}
	good := []byte(cases[0]["mls_key_package"])
	for name, data := range map[string][]byte{
		"empty":           nil,
		"version 2":       append([]byte{0, 2}, good[2:]...),
		"wire format 6":   append([]byte{0, 1, 0, 6}, good[4:]...),
		"wire format 0":   append([]byte{0, 1, 0, 0}, good[4:]...),
		"trailing byte":   append(append([]byte{}, good...), 0),
		"truncated":       good[:len(good)-1],
		"header only":     good[:4],
		"cut in a varint": append(append([]byte{}, good[:8]...), 0x40),
	} {
		if _, err := DecodeMLSMessage(data); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
